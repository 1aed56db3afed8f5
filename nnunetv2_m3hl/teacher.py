"""EMA teacher, pseudo-labels and the largest-connected-component cleanup (torch on any device; the
connected components of CPU tensors use scipy, which is faster there)."""
import copy
from typing import Tuple

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
    torch._foreach_mul_(t_params, decay)
    torch._foreach_add_(t_params, s_params, alpha=1.0 - decay)
    for t_buf, s_buf in zip(teacher.buffers(), student.buffers()):
        if t_buf.dtype.is_floating_point:
            t_buf.mul_(decay).add_(s_buf.detach(), alpha=1.0 - decay)
        else:
            t_buf.copy_(s_buf)


def broadcast_teacher(teacher: nn.Module, src: int = 0) -> None:
    """Make every rank's teacher identical to rank ``src``'s (DDP keeps students in sync, not teachers)."""
    for t in list(teacher.parameters()) + list(teacher.buffers()):
        dist.broadcast(t.data, src=src)


def _max_pool_same(x: torch.Tensor) -> torch.Tensor:
    """3-wide max over the full neighbourhood (8 in 2D, 26 in 3D), output the size of the input."""
    if x.ndim == 4:
        return F.max_pool2d(x, 3, stride=1, padding=1)
    return F.max_pool3d(x, 3, stride=1, padding=1)


@torch.no_grad()
def connected_component_ids(binary: torch.Tensor, backend: str = 'auto') -> torch.Tensor:
    """Label the connected components of a binary batch ``(N, *spatial)`` (2D or 3D, full
    connectivity, never across samples). Returns int64 ids, 0 for background, every component with
    an id unique across the batch.

    ``backend``: 'torch' propagates labels on the tensor's device (used on GPUs: no transfer),
    'scipy' uses ``scipy.ndimage.label`` (faster on the CPU); 'auto' picks by device.
    """
    if backend == 'auto':
        backend = 'scipy' if binary.device.type == 'cpu' else 'torch'
    if backend == 'scipy':
        return _component_ids_scipy(binary)
    if backend != 'torch':
        raise ValueError(f"unknown backend {backend}")
    return _component_ids_torch(binary)


def _component_ids_scipy(binary: torch.Tensor) -> torch.Tensor:
    from scipy import ndimage
    structure = np.zeros((3,) * binary.ndim, dtype=bool)
    structure[1] = True  # full connectivity inside a sample, none along the batch axis
    ids, _ = ndimage.label(binary.cpu().numpy().astype(bool), structure=structure)
    return torch.from_numpy(ids.astype(np.int64)).to(binary.device)


def _component_ids_torch(binary: torch.Tensor, check_every: int = 4) -> torch.Tensor:
    """Propagate the largest voxel index through each component until nothing changes."""
    n = binary.shape[0]
    spatial = binary.shape[1:]
    fg = binary.bool().unsqueeze(1)
    n_vox = fg[0].numel()
    # float32 represents integers exactly only up to 2**24; use float64 where the batch is larger
    dtype = torch.float32 if n * n_vox < 2 ** 24 else torch.float64
    ids = torch.arange(1, n * n_vox + 1, device=binary.device, dtype=dtype).view(n, 1, *spatial)
    ids = torch.where(fg, ids, torch.zeros((), device=binary.device, dtype=dtype))
    while True:
        previous = ids
        for _ in range(check_every):
            ids = torch.where(fg, _max_pool_same(ids), ids)
        if torch.equal(ids, previous):
            break
    return ids[:, 0].long()


@torch.no_grad()
def largest_component_per_class(labels: torch.Tensor, num_classes: int, backend: str = 'auto') -> torch.Tensor:
    """Keep, for every foreground class of every sample, only its largest connected component;
    voxels of the other components become background (0).

    ``labels``: ``(N, *spatial)`` integer map; each entry of N is handled on its own (pass 2D
    slices as N for per-slice cleanup). Ties are broken towards the later component.
    """
    n = labels.shape[0]
    n_vox = labels[0].numel()
    keep = torch.zeros_like(labels, dtype=torch.bool)
    sample_of_voxel = torch.arange(n, device=labels.device).repeat_interleave(n_vox)
    for c in range(1, num_classes):
        is_c = labels == c
        if not bool(is_c.any()):
            continue
        ids = connected_component_ids(is_c, backend).flatten()
        sizes = torch.bincount(ids, minlength=n * n_vox + 1)
        sizes[0] = 0
        # rank components by size, then id, in one integer so that a per-sample max picks one winner
        score = sizes[ids] * (n * n_vox + 1) + ids
        score = torch.where(ids > 0, score, torch.zeros_like(score))
        best = torch.zeros(n, dtype=score.dtype, device=labels.device)
        best = best.scatter_reduce(0, sample_of_voxel, score, reduce='amax')
        winner_id = best % (n * n_vox + 1)
        keep |= ((ids == winner_id[sample_of_voxel]) & (ids > 0)).view_as(labels)
    return torch.where(keep, labels, torch.zeros_like(labels))


@torch.no_grad()
def pseudo_labels_from_logits(logits: torch.Tensor, keep_largest_component: bool = True
                              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Teacher logits ``(B, K, *spatial)`` -> (softmax probabilities, hard pseudo-labels ``(B, 1, *spatial)``).

    Hard labels are the argmax, cleaned to the largest connected component per class: per 2D patch
    for 2D inputs, per volume for 3D inputs.
    """
    probabilities = torch.softmax(logits.float(), dim=1)
    hard = probabilities.argmax(dim=1)
    if keep_largest_component:
        hard = largest_component_per_class(hard, logits.shape[1])
    return probabilities, hard.unsqueeze(1)
