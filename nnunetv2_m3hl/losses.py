"""Region-weighted Dice + CE for mixed images, built on nnU-Net's loss parts.

As in the reference implementation (BCP's ``mix_loss``, reused by M3HL), the labeled and the
pseudo-labeled regions of a mixed image each get a masked soft Dice over all classes (background
included) and a masked cross-entropy; the labeled region weighs 1.0 and the pseudo-labeled one
``u_weight``.
"""
from typing import Optional

import torch
from torch import nn

from nnunetv2.training.loss.dice import get_tp_fp_fn_tn
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss


def masked_soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                          smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over all classes, computed over the whole batch inside ``mask``."""
    axes = [0] + list(range(2, probabilities.ndim))
    tp, fp, fn, _ = get_tp_fp_fn_tn(probabilities, target, axes=axes, mask=mask)
    dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth)
    return 1 - dice.mean()


class RegionWeightedDiceCE(nn.Module):
    def __init__(self, u_weight: float = 0.5, ignore_label: Optional[int] = None, smooth: float = 1e-5):
        super().__init__()
        self.u_weight = u_weight
        self.ignore_label = ignore_label
        self.smooth = smooth
        self.ce = RobustCrossEntropyLoss(reduction='none')

    def forward(self, logits: torch.Tensor, target: torch.Tensor, from_unlabeled: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, K, *s)``; ``target`` and ``from_unlabeled`` ``(B, 1, *s)``."""
        logits = logits.float()
        from_unlabeled = from_unlabeled.float()
        if self.ignore_label is not None:
            valid = (target != self.ignore_label).float()
            target = torch.where(valid.bool(), target, torch.zeros_like(target))
        else:
            valid = torch.ones_like(from_unlabeled)
        probabilities = torch.softmax(logits, dim=1)
        ce_map = self.ce(logits, target.long())
        total = logits.new_zeros(())
        for region, weight in ((1 - from_unlabeled, 1.0), (from_unlabeled, self.u_weight)):
            region = region * valid
            dice = masked_soft_dice_loss(probabilities, target, region, self.smooth)
            ce = (ce_map * region[:, 0]).sum() / region.sum().clamp_min(1.0)
            total = total + weight * (dice + ce)
        return total
