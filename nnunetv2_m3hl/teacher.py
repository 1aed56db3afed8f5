"""EMA teacher, pseudo-labels and the largest-connected-component cleanup (torch on any device; the
connected components of CPU tensors use scipy, which is faster there)."""
import copy
from concurrent.futures import Executor
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """The teacher starts as an exact copy of the student and never receives gradients."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    teacher.eval()
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``teacher = decay * teacher + (1 - decay) * student`` over parameters and floating buffers;
    integer buffers (e.g. batch counters) are copied."""
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    # t + (1 - decay) (s - t): one pass over the weights instead of a product and a sum
    torch._foreach_lerp_(t_params, s_params, 1.0 - decay)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        if t_buf.dtype.is_floating_point:
            t_buf.mul_(decay).add_(s_buf.detach(), alpha=1.0 - decay)
        else:
            t_buf.copy_(s_buf)


def broadcast_teacher(teacher: nn.Module, src: int = 0) -> None:
    """Make every rank's teacher identical to rank ``src``'s (DDP keeps students in sync, not teachers)."""
    for t in list(teacher.parameters()) + list(teacher.buffers()):
        dist.broadcast(t.data, src=src)


def _max_pool_same(x: torch.Tensor, separable: bool = False) -> torch.Tensor:
    """3-wide max over the full neighbourhood (8 in 2D, 26 in 3D), output the size of the input.

    ``separable`` takes a 3D cube's maximum one axis at a time (the same values, 9 instead of 27 reads per
    voxel, three launches instead of one). On an H200 that was 5-12% slower than the single 3x3x3 pooling
    (benchmarks/cost/lcc_cost.py), so it is off; it stays for that comparison.
    """
    if x.ndim == 4:
        return F.max_pool2d(x, 3, stride=1, padding=1)
    if not separable:
        return F.max_pool3d(x, 3, stride=1, padding=1)
    x = F.max_pool3d(x, (3, 1, 1), stride=1, padding=(1, 0, 0))
    x = F.max_pool3d(x, (1, 3, 1), stride=1, padding=(0, 1, 0))
    return F.max_pool3d(x, (1, 1, 3), stride=1, padding=(0, 0, 1))


def _propagation_dtype(n_vox: int) -> torch.dtype:
    # float32 represents the voxel indices exactly only up to 2**24
    return torch.float32 if n_vox < 2 ** 24 else torch.float64


def _propagate_max_index(fg: torch.Tensor, first_check: int = 8, check_every: int = 2, pointer_jumping: bool = True,
                         separable: bool = False, hooking: bool = True) -> Tuple[torch.Tensor, int]:
    """Label propagation on ``fg`` ``(N, C, *spatial)``, every (sample, channel) on its own: each
    foreground voxel ends with the largest 1-based voxel index of its component (0 on background).

    A voxel's label is always the index of a voxel of its own component, at least its own index, and only
    grows. Three moves, each of which keeps that true, share one fixed point (every voxel holds its
    component's largest index):

    - max-pooling: a voxel takes the largest label among its neighbours, one voxel per iteration;
    - pointer jumping: a voxel takes the label that the voxel its label names holds by now;
    - hooking: the voxel a label names takes the largest label any voxel naming it has just seen, so that
      a label found anywhere in a region reaches, through one voxel, everything that points there (the
      hooking step of Shiloach and Vishkin's parallel connectivity algorithm, J. Algorithms 1982, with the
      larger label winning).

    Pooling alone needs as many iterations as the longest path in a component; jumping cuts that on long
    components; hooking on ragged ones too (an untrained teacher's argmax): on the maps of
    ``benchmarks/cost/lcc_cost.py`` (2d 256x224, 3d 64^3) the fixed point is reached after 5 to 8 iterations, where
    jumping alone needs 8 to 132. So the first check comes after ``first_check`` iterations, later ones every
    ``check_every``. Returns the labels and the number of iterations run (the last one changed nothing).
    """
    n, c = fg.shape[:2]
    spatial = fg.shape[2:]
    n_vox = fg[0, 0].numel()
    dtype = _propagation_dtype(n_vox)
    # 0-based inside the loop, so that a label is directly the flat index of the voxel it names; background
    # holds 0 and so names voxel 0, where it only ever offers or takes a 0, which changes nothing
    zero = torch.zeros((), device=fg.device, dtype=dtype)
    ids = torch.where(fg, torch.arange(n_vox, device=fg.device, dtype=dtype).view(1, 1, *spatial), zero)
    flat_shape = (n * c, n_vox)
    iterations, block = 0, first_check
    while True:
        for _ in range(block):
            previous = ids
            pooled = torch.where(fg, _max_pool_same(ids, separable), ids)
            if hooking:
                pooled = pooled.view(flat_shape).scatter_reduce(1, ids.view(flat_shape).long(),
                                                                pooled.view(flat_shape), 'amax').view_as(ids)
            ids = pooled
            if pointer_jumping:
                named = ids.view(flat_shape).long()
                ids = torch.where(fg, ids.view(flat_shape).gather(1, named).view_as(ids), ids)
        iterations += block
        # every move only raises labels, so an iteration that changes nothing is at the fixed point: the last
        # iteration of each block is checked (the only host synchronisation of the loop)
        if torch.equal(ids, previous):
            return torch.where(fg, ids + 1, zero), iterations
        block = check_every


def _keep_largest_torch(labels: torch.Tensor, classes: List[int], max_elements: int = 2 ** 25,
                        pointer_jumping: bool = True, separable: bool = False, hooking: bool = True
                        ) -> Tuple[torch.Tensor, int]:
    """Largest component of every listed class in one propagation (one channel per class); classes are
    taken in chunks so that the channels fit ``max_elements``. Returns the mask of kept voxels and the
    number of propagation iterations run."""
    n, n_vox = labels.shape[0], labels[0].numel()
    keep = torch.zeros_like(labels, dtype=torch.bool)
    chunk = max(1, max_elements // (n * n_vox))
    iterations = 0
    for first in range(0, len(classes), chunk):
        cls = torch.tensor(classes[first:first + chunk], device=labels.device)
        fg = labels.unsqueeze(1) == cls.view(1, -1, *([1] * (labels.ndim - 1)))  # (N, C, *spatial)
        ids, its = _propagate_max_index(fg, pointer_jumping=pointer_jumping, separable=separable, hooking=hooking)
        iterations += its
        ids = ids.long().view(-1, n_vox)                                          # (N * C, n_vox)
        groups = ids.shape[0]
        key = ids + torch.arange(groups, device=labels.device).view(-1, 1) * (n_vox + 1)
        sizes = torch.bincount(key.flatten(), minlength=groups * (n_vox + 1)).view(groups, n_vox + 1)
        sizes[:, 0] = 0
        # one winner per (sample, class): the largest component, the one with the larger id among equals
        # (argmax returns the first maximum, so search the reversed sizes)
        winner = n_vox - sizes.flip(1).argmax(dim=1, keepdim=True)
        kept = (ids == winner) & (ids > 0)
        keep |= kept.view(n, -1, n_vox).any(dim=1).view_as(labels)
    return keep, iterations


def _largest_component_of_sample(sample: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Mask of the voxels kept in one sample (2D or 3D): per class its largest component (scipy, which
    releases the GIL while it labels). Among components of equal size the one whose last voxel (in C order)
    comes later wins, exactly as in the torch propagation, where a component is named by its largest index."""
    from scipy import ndimage
    structure = np.ones((3,) * sample.ndim, dtype=bool)
    keep = np.zeros(sample.shape, dtype=bool)
    for c in classes:
        ids, n = ndimage.label(sample == c, structure=structure)
        if n == 0:
            continue
        flat = ids.ravel()
        sizes = np.bincount(flat, minlength=n + 1)
        sizes[0] = 0
        largest = np.flatnonzero(sizes == sizes.max())
        winner = largest[0]
        if len(largest) > 1:
            is_candidate = np.zeros(n + 1, dtype=bool)
            is_candidate[largest] = True
            where = np.flatnonzero(is_candidate[flat])  # ascending positions of the tied components' voxels
            names, first_from_end = np.unique(flat[where][::-1], return_index=True)
            winner = names[np.argmax(where[len(where) - 1 - first_from_end])]
        keep |= ids == winner
    return keep


def largest_component_per_class_numpy(labels: np.ndarray, num_classes: int,
                                      executor: Optional[Executor] = None) -> np.ndarray:
    """``largest_component_per_class`` on a host array ``(N, *spatial)``, the samples labelled one by one
    (in parallel on ``executor``'s threads when given). Keeps the same voxels as the torch path."""
    voxels_per_class = np.bincount(labels.ravel(), minlength=num_classes)
    present = [int(c) for c in np.flatnonzero(voxels_per_class[1:num_classes]) + 1]
    jobs = [(labels[i], present) for i in range(labels.shape[0])]
    if executor is None:
        keeps = [_largest_component_of_sample(*job) for job in jobs]
    else:
        keeps = list(executor.map(lambda job: _largest_component_of_sample(*job), jobs))
    return np.where(np.stack(keeps), labels, np.zeros((), dtype=labels.dtype))


@torch.no_grad()
def largest_component_per_class(labels: torch.Tensor, num_classes: int, backend: str = 'auto') -> torch.Tensor:
    """Keep, for every foreground class of every sample, only its largest connected component;
    voxels of the other components become background (0).

    ``labels``: ``(N, *spatial)`` integer map; each entry of N is handled on its own (pass 2D
    slices as N for per-slice cleanup). Among components of equal size the one whose last voxel comes later
    (in C order) is kept. ``backend``: 'torch' (label propagation on the tensor's device), 'scipy' (on the
    host), 'auto' picks scipy for CPU tensors; both keep the same voxels.
    """
    if backend == 'auto':
        backend = 'scipy' if labels.device.type == 'cpu' else 'torch'
    if backend == 'scipy':
        cleaned = largest_component_per_class_numpy(labels.cpu().numpy(), num_classes)
        return torch.from_numpy(cleaned).to(labels.device)
    if backend != 'torch':
        raise ValueError(f"unknown backend {backend}")
    voxels_per_class = torch.bincount(labels.flatten().long(), minlength=num_classes)
    present = voxels_per_class[1:num_classes].nonzero().flatten().add(1).tolist()  # one host synchronisation
    keep, _ = _keep_largest_torch(labels, present)
    return torch.where(keep, labels, torch.zeros_like(labels))


@torch.no_grad()
def hard_pseudo_labels_and_confidence(logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The argmax over classes of the softmax ``(B, *spatial)``, before any cleanup (the same values as
    ``pseudo_labels_from_logits`` starts from), and the softmax probability of that class (the confidence)."""
    # max's indices are argmax's (the first maximum, NaN counting as the maximum), but on the CPU argmax over a
    # non-last axis is some 20 times slower (benchmarks/HISTORY.md, "Where a step's time goes")
    confidence, labels = torch.softmax(logits.float(), dim=1).max(dim=1)
    return labels, confidence


def region_pseudo_labels(logits: torch.Tensor) -> torch.Tensor:
    """Hard pseudo-labels of a region-based network ``(B, R, *spatial)``: every region where its sigmoid is above
    0.5 (the logit above 0), as nnU-Net turns region outputs into masks; int64 0/1, one map per region."""
    return (logits.float() > 0).long()


def hard_pseudo_labels(logits: torch.Tensor) -> torch.Tensor:
    """``hard_pseudo_labels_and_confidence``'s labels."""
    return hard_pseudo_labels_and_confidence(logits)[0]


@torch.no_grad()
def gate_by_confidence(labels: torch.Tensor, confidence: torch.Tensor, threshold: float) -> torch.Tensor:
    """UniMatch's and FixMatch's gate of hard pseudo-labels: ``labels`` where the teacher's confidence is at least
    ``threshold``; elsewhere the label's bitwise complement ``-(label + 1)``, which the mix loss leaves out
    (weight 0 in Dice and CE) while the map still says which class the teacher would have given."""
    return torch.where(confidence >= threshold, labels, torch.bitwise_not(labels))


def is_left_out(labels: torch.Tensor) -> torch.Tensor:
    """Voxels of a gated map that the loss leaves out."""
    return labels < 0


@torch.no_grad()
def kept_share_per_class(gated: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per class, the share of the voxels the teacher gave that class that passed the gate (NaN where it gave none);
    ``(num_classes,)``, background first."""
    flat = gated.flatten().long()
    kept = torch.bincount(flat.clamp_min(0), weights=(flat >= 0).float(), minlength=num_classes)[:num_classes]
    given = torch.bincount(torch.where(flat >= 0, flat, torch.bitwise_not(flat)), minlength=num_classes)
    given = given[:num_classes].float()
    return torch.where(given > 0, kept / given.clamp_min(1), torch.full_like(given, float('nan')))


@torch.no_grad()
def pseudo_labels_from_logits(logits: torch.Tensor, keep_largest_component: bool = True
                              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits ``(B, K, *spatial)`` -> (softmax probabilities, hard pseudo-labels ``(B, 1, *spatial)``).

    Hard labels are the argmax, cleaned to the largest connected component per class: per 2D patch
    for 2D inputs, per volume for 3D inputs.
    """
    probabilities = torch.softmax(logits.float(), dim=1)
    hard = probabilities.max(dim=1).indices
    if keep_largest_component:
        hard = largest_component_per_class(hard, logits.shape[1])
    return probabilities, hard.unsqueeze(1)
