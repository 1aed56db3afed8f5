"""Region-weighted Dice + CE for mixed images, built on nnU-Net's loss parts.

As in the reference implementation (BCP's ``mix_loss``, reused by M3HL), the labeled and the
pseudo-labeled regions of a mixed image each get a masked soft Dice over all classes (background
included) and a masked cross-entropy; the labeled region weighs 1.0 and the pseudo-labeled one
``u_weight``.
"""
from typing import Optional

import torch
from torch import nn

from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss


def masked_soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                          smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over all classes, computed over the whole batch inside the binary ``mask``
    ``(B, 1, *s)``; ``target`` ``(B, 1, *s)`` holds class indices.

    Written with sums (``fp + fn = sum(p) + sum(y) - 2 tp``) and boolean masks, so that autograd keeps one
    byte per voxel and class for the backward instead of nnU-Net's float ``tp``/``fp``/``fn`` maps: the
    Dice value is the same up to float rounding."""
    axes = [0] + list(range(2, probabilities.ndim))
    classes = torch.arange(probabilities.shape[1], device=probabilities.device)
    classes = classes.view(1, -1, *([1] * (probabilities.ndim - 2)))
    inside = mask.bool()
    hit = (target == classes) & inside
    tp = (probabilities * hit).sum(axes)
    predicted = (probabilities * inside).sum(axes)
    labeled = hit.sum(axes)
    dice = (2 * tp + smooth) / (predicted + labeled + smooth)
    return 1 - dice.mean()


class RegionWeightedDiceCE(nn.Module):
    def __init__(self, u_weight: float = 0.5, ignore_label: Optional[int] = None, smooth: float = 1e-5):
        super().__init__()
        self.u_weight = u_weight
        self.ignore_label = ignore_label
        self.smooth = smooth
        self.ce = RobustCrossEntropyLoss(reduction='none')

    def forward(self, logits: torch.Tensor, target: torch.Tensor, from_unlabeled: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, K, *s)``; ``target`` and ``from_unlabeled`` (binary) ``(B, 1, *s)``."""
        logits = logits.float()
        from_unlabeled = from_unlabeled.bool()
        if self.ignore_label is not None:
            valid = target != self.ignore_label
            target = torch.where(valid, target, torch.zeros_like(target))
        else:
            valid = torch.ones_like(from_unlabeled)
        probabilities = torch.softmax(logits, dim=1)
        ce_map = self.ce(logits, target.long())
        total = logits.new_zeros(())
        for region, weight in ((~from_unlabeled, 1.0), (from_unlabeled, self.u_weight)):
            region = region & valid
            dice = masked_soft_dice_loss(probabilities, target, region, self.smooth)
            ce = (ce_map * region[:, 0]).sum() / region.sum().clamp_min(1)
            total = total + weight * (dice + ce)
        return total
