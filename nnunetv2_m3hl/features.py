"""Feature taps (forward hooks) and the high/low-level consistency losses.

The network is never changed: the bottleneck (``encoder.stages[-1]``) and the last decoder stage
(``decoder.stages[-1]``) are read with forward hooks, which also works for every architecture
nnU-Net plans (PlainConvUNet, ResidualEncoderUNet, ...).
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from nnunetv2_m3hl.mixing import partner_index

HIGH = 'high'
LOW = 'low'


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain module behind DDP and torch.compile wrappers."""
    if hasattr(network, 'module') and isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    return getattr(network, '_orig_mod', network)


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


def _against_couple(distance, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean of ``distance(student[i], teacher[k])`` for k = i and k = the partner of i: every mixed
    image of a couple against both unlabeled images of the couple (4 terms per couple)."""
    partner = partner_index(student.shape[0], student.device)
    return 0.5 * (distance(student, teacher) + distance(student, teacher[partner]))


HIGH_COSINE_PER_SAMPLE = 'sample'
HIGH_COSINE_PER_POSITION = 'position'


def high_level_loss(student_high: torch.Tensor, teacher_high: torch.Tensor,
                    cosine_over: str = HIGH_COSINE_PER_SAMPLE) -> torch.Tensor:
    """1 - cosine similarity of bottleneck features, averaged over the couple's pairs.

    ``sample`` (the reference code): one cosine per sample over its whole flattened feature (channels x
    positions), so positions with strong activations weigh more. ``position``: one cosine per voxel over the
    channels, averaged over positions, blind to how activation strength is spread over the image."""
    if cosine_over == HIGH_COSINE_PER_SAMPLE:
        def distance(s, t):
            return (1 - F.cosine_similarity(s.float().flatten(1), t.float().flatten(1), dim=1)).mean()
    elif cosine_over == HIGH_COSINE_PER_POSITION:
        def distance(s, t):
            return (1 - F.cosine_similarity(s.float(), t.float(), dim=1)).mean()
    else:
        raise ValueError(f"cosine_over must be '{HIGH_COSINE_PER_SAMPLE}' or '{HIGH_COSINE_PER_POSITION}', "
                         f"got {cosine_over!r}")
    return _against_couple(distance, student_high, teacher_high.detach())


class _CoupleL1(torch.autograd.Function):
    """``0.5 * (mean|s - t| + mean|s - t[partner]|)`` that keeps no copy of the feature maps for the backward.

    The plain expression (``F.l1_loss(s.float(), t.float())`` twice) makes autograd keep two float32 copies of
    the student's full-resolution map and a gathered copy of the teacher's, about four times the map itself
    at half precision: in 3d the largest extra memory of the whole M3HL step. Here the backward recomputes
    the signs from ``s`` and ``t``, which live until then anyway, one sample at a time. The gradient is the
    one autograd gives for the plain expression: each term's ``sign * (0.5 * g / N)`` in float32, cast to the
    map's dtype, the two summed in that dtype."""

    @staticmethod
    def forward(ctx, student: torch.Tensor, teacher: torch.Tensor, partners: Tuple[int, ...]) -> torch.Tensor:
        # partners are host integers: indexing with them never waits for the GPU
        ctx.save_for_backward(student, teacher)
        ctx.partners = partners
        total = student.new_zeros((), dtype=torch.float32)
        for i, partner in enumerate(partners):
            for k in (i, partner):
                total = total + (student[i].float() - teacher[k].float()).abs_().sum()
        return 0.5 * total / student.numel()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        student, teacher = ctx.saved_tensors
        per_voxel = (0.5 * grad_output.float()) / student.numel()
        grad = torch.empty_like(student)
        for i, partner in enumerate(ctx.partners):
            s = student[i].float()
            own = (torch.sgn(s - teacher[i].float()) * per_voxel).to(student.dtype)
            other = (torch.sgn(s - teacher[partner].float()) * per_voxel).to(student.dtype)
            torch.add(own, other, out=grad[i])
        return grad, None, None


def low_level_loss(student_low: torch.Tensor, teacher_low: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the last decoder feature maps, each mixed image against both unlabeled
    images of its couple (as ``_against_couple``), without keeping copies of the maps for the backward."""
    partners = tuple(partner_index(student_low.shape[0]).tolist())
    return _CoupleL1.apply(student_low, teacher_low.detach(), partners)
