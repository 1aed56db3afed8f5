"""Feature taps (forward hooks) and the high/low-level consistency losses.

The network is never changed: the bottleneck (``encoder.stages[-1]``) and the last decoder stage
(``decoder.stages[-1]``) are read with forward hooks, which also works for every architecture
nnU-Net plans (PlainConvUNet, ResidualEncoderUNet, ...).
"""
from functools import lru_cache
from typing import Dict, Tuple

import torch
from torch import nn

from nnunetv2_m3hl.mixing import partner_index

HIGH = 'high'
LOW = 'low'


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module behind DDP and torch.compile wrappers."""
    if hasattr(network, 'module') and isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    return getattr(network, '_orig_mod', network)


def is_compiled(network: nn.Module) -> bool:
    """Whether ``torch.compile`` wraps the network (also inside DDP)."""
    if isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    return hasattr(network, '_orig_mod')


def tapped_modules(network: nn.Module) -> Dict[str, nn.Module]:
    plain = unwrap_network(network)
    try:
        return {HIGH: plain.encoder.stages[-1], LOW: plain.decoder.stages[-1]}
    except AttributeError as e:
        raise TypeError(f"{type(plain).__name__} has no encoder.stages / decoder.stages; M3HL taps the "
                        f"bottleneck and the last decoder stage of nnU-Net's U-Net architectures") from e


class FeatureTap:
    """Records the outputs of the bottleneck and the last decoder stage on every forward."""

    def __init__(self, network: nn.Module):
        self.features: Dict[str, torch.Tensor] = {}
        self._handles = [module.register_forward_hook(self._recorder(name))
                         for name, module in tapped_modules(network).items()]

    def _recorder(self, name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            self.features[name] = output
        return hook

    def pop(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(high, low) of the last forward; cleared so that stale features are never reused."""
        try:
            high, low = self.features.pop(HIGH), self.features.pop(LOW)
        except KeyError as e:
            raise RuntimeError("no features recorded: run a forward pass first") from e
        return high, low

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@lru_cache(maxsize=16)
def _own_and_partner_index(batch_size: int, device: torch.device) -> torch.Tensor:
    """``[0, partner(0), 1, partner(1), ...]``: each pair's own unlabeled image, then its partner's (a lone last
    pair is its own partner). Made once per batch size and device."""
    own = torch.arange(batch_size, device=device)
    return torch.stack((own, partner_index(batch_size, device)), dim=1).flatten()


def _couple_cosine_distance(student: torch.Tensor, teacher: torch.Tensor, per_position: bool) -> torch.Tensor:
    """Mean of ``1 - cos`` of every mixed image against both unlabeled images of its couple (4 terms per couple,
    a lone pair against itself twice), all pairs in the same few kernels. The cosine is taken over the channels
    at every position (``per_position``) or over the whole flattened feature (one per sample); it is
    ``F.cosine_similarity``'s (up to rounding; 0 against a zero vector)."""
    batch, channels = student.shape[:2]
    layout = (batch, channels, -1) if per_position else (batch, -1, 1)  # (B, features, positions)
    s = student.float().reshape(layout).unsqueeze(1)                                    # (B, 1, F, P)
    t = teacher.float().index_select(0, _own_and_partner_index(batch, teacher.device))
    t = t.reshape(batch, 2, *s.shape[2:])                                               # (B, 2, F, P)
    dots = (s * t).sum(dim=2)
    norms = s.norm(dim=2) * t.norm(dim=2)
    return (1 - dots / norms.clamp_min(1e-8)).mean()


HIGH_COSINE_PER_SAMPLE = 'sample'
HIGH_COSINE_PER_POSITION = 'position'


def high_level_loss(student_high: torch.Tensor, teacher_high: torch.Tensor,
                    cosine_over: str = HIGH_COSINE_PER_SAMPLE) -> torch.Tensor:
    """1 - cosine similarity of bottleneck features, averaged over the couple's pairs.

    ``sample`` (the reference code): one cosine per sample over its whole flattened feature (channels x
    positions), so positions with strong activations weigh more. ``position``: one cosine per voxel over the
    channels, averaged over positions, blind to how activation strength is spread over the image."""
    if cosine_over not in (HIGH_COSINE_PER_SAMPLE, HIGH_COSINE_PER_POSITION):
        raise ValueError(f"cosine_over must be '{HIGH_COSINE_PER_SAMPLE}' or '{HIGH_COSINE_PER_POSITION}', "
                         f"got {cosine_over!r}")
    return _couple_cosine_distance(student_high, teacher_high.detach(), cosine_over == HIGH_COSINE_PER_POSITION)


# elements of the largest temporary of one chunk of ``L_low`` (128 MB in float32): the term runs while the whole
# forward's activations are held, so its buffers add to the step's peak memory
LOW_LEVEL_CHUNK_ELEMENTS = 2 ** 25


def _couple_chunks(student: torch.Tensor, teacher: torch.Tensor, max_elements: int):
    """Column chunks of the maps flattened per sample, each as (mixed images of the couples ``(m, 2, 1, w)``, the
    teacher's unlabeled images of the couples ``(m, 1, 2, w)``, a lone last pair's maps ``(1, w)`` or None, and the
    column slice); with a batch of one there are no couples (``m = 0``). The difference of the first two holds all
    four terms of every couple in one tensor."""
    batch = student.shape[0]
    n_couples = batch // 2
    s, t = student.reshape(batch, -1), teacher.reshape(batch, -1)
    width = max(1, max_elements // (2 * batch))
    for first in range(0, s.shape[1], width):
        columns = slice(first, first + width)
        s_chunk, t_chunk = s[:, columns], t[:, columns]
        w = s_chunk.shape[1]
        lone = (s_chunk[2 * n_couples:], t_chunk[2 * n_couples:]) if batch % 2 else None
        yield (s_chunk[:2 * n_couples].view(n_couples, 2, 1, w), t_chunk[:2 * n_couples].view(n_couples, 1, 2, w),
               lone, columns)


class _CoupleL1(torch.autograd.Function):
    """``0.5 * (mean|s - t| + mean|s - t[partner]|)`` that keeps no copy of the feature maps for the backward.

    The plain expression (``F.l1_loss(s.float(), t.float())`` twice) makes autograd keep two float32 copies of
    the student's full-resolution map and a gathered copy of the teacher's, about four times the map itself
    at half precision: in 3d the largest extra memory of the whole M3HL step. Here the backward recomputes
    the signs from ``s`` and ``t``, which live until then anyway. Both directions work on the whole batch at once
    in column chunks of bounded size (a handful of kernels per chunk, not per sample, and a bounded temporary);
    the value is summed in float32 as in the plain expression. The gradient is the one autograd gives for the
    plain expression bit for bit: each term's ``sign * (0.5 * g / N)`` cast to the map's dtype, the two summed
    in that dtype, which is exactly ``(sign_own + sign_partner) * cast(0.5 * g / N)``."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, max_elements: int) -> torch.Tensor:
        ctx.save_for_backward(student, teacher)
        ctx.max_elements = max_elements
        total = student.new_zeros((), dtype=torch.float32)
        for s_couples, t_couples, lone, _ in _couple_chunks(student, teacher, max_elements):
            # float32 minus the teacher's half-precision map is computed in float32, without a float32 copy of it
            if s_couples.numel():
                total = total + (s_couples.float() - t_couples).abs_().sum()
            if lone is not None:  # a lone pair is its own partner: its term counts twice
                total = total + 2 * (lone[0].float() - lone[1]).abs_().sum()
        return 0.5 * total / student.numel()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        student, teacher = ctx.saved_tensors
        # the signs in the maps' own dtype: rounding keeps a difference's sign and makes no non-zero one zero, so
        # they are the float32 signs, and (-2..2) * the cast step is exact in that dtype: no float32 copies here
        step = ((0.5 * grad_output.float()) / student.numel()).to(student.dtype)
        batch = student.shape[0]
        grad = torch.empty((batch, student[0].numel()), dtype=student.dtype, device=student.device)
        n_paired = 2 * (batch // 2)
        for s_couples, t_couples, lone, columns in _couple_chunks(student, teacher, ctx.max_elements):
            if s_couples.numel():
                signs = torch.sgn(s_couples - t_couples).sum(dim=2)  # (m, 2, w): own + partner
                torch.mul(signs, step, out=grad[:n_paired, columns].view_as(signs))
            if lone is not None:
                torch.mul(torch.sgn(lone[0] - lone[1]), 2 * step, out=grad[n_paired:, columns])
        return grad.view(student.shape), None, None


def low_level_loss(student_low: torch.Tensor, teacher_low: torch.Tensor,
                   max_chunk_elements: int = LOW_LEVEL_CHUNK_ELEMENTS) -> torch.Tensor:
    """Mean absolute difference of the last decoder feature maps, each mixed image against both unlabeled
    images of its couple (as ``high_level_loss``), without keeping copies of the maps for the backward."""
    return _CoupleL1.apply(student_low, teacher_low.detach(), max_chunk_elements)
