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


def soft_dice_loss_per_region(probabilities: torch.Tensor, target: torch.Tensor, regions: torch.Tensor,
                              smooth: float = 1e-5) -> torch.Tensor:
    """1 - mean soft Dice over all classes of every region, each computed over the whole batch inside its binary
    mask; ``regions`` ``(R, B, 1, *s)`` bool, ``target`` ``(B, 1, *s)`` class indices. Returns ``(R,)``.

    Written with sums (``fp + fn = sum(p) + sum(y) - 2 tp``) and boolean masks, so that autograd keeps one
    byte per voxel and class for the backward instead of nnU-Net's float ``tp``/``fp``/``fn`` maps: the
    Dice value is the same up to float rounding. All regions go through the same kernels at once (a leading
    region axis): on a GPU the loss of the small deep-supervision scales is bound by the number of launches."""
    classes = torch.arange(probabilities.shape[1], device=probabilities.device)
    classes = classes.view(1, -1, *([1] * (probabilities.ndim - 2)))
    return _soft_dice_loss_of_hits(probabilities, (target == classes).unsqueeze(0) & regions, regions, smooth)


def _soft_dice_loss_of_hits(probabilities: torch.Tensor, hit: torch.Tensor, regions: torch.Tensor,
                            smooth: float) -> torch.Tensor:
    """``soft_dice_loss_per_region`` from the binary targets of every channel inside every region, ``hit``
    ``(R, B, K, *s)``: the one-hot classes of a label map, or the maps of nnU-Net's label regions."""
    axes = [1] + list(range(3, probabilities.ndim + 1))  # batch and space; (region, channel) remain
    p = probabilities.unsqueeze(0)
    tp = (p * hit).sum(axes)
    predicted = (p * regions).sum(axes)
    labeled = hit.sum(axes)
    dice = (2 * tp + smooth) / (predicted + labeled + smooth)
    return 1 - dice.mean(dim=1)


def masked_soft_dice_loss(probabilities: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                          smooth: float = 1e-5) -> torch.Tensor:
    """``soft_dice_loss_per_region`` of the one region ``mask`` ``(B, 1, *s)``."""
    return soft_dice_loss_per_region(probabilities, target, mask.bool().unsqueeze(0), smooth)[0]


class RegionWeightedDiceCE(nn.Module):
    def __init__(self, u_weight: float = 0.5, ignore_label: Optional[int] = None, smooth: float = 1e-5):
        super().__init__()
        self.u_weight = u_weight
        self.ignore_label = ignore_label
        self.smooth = smooth
        self.ce = RobustCrossEntropyLoss(reduction='none')
        # targets may hold negative values, voxels that no region counts (pseudo-labels the teacher was not
        # confident about, see teacher.gate_by_confidence); off, the loss launches no extra kernel for them
        self.leave_out_negative = False

    def forward(self, logits: torch.Tensor, target: torch.Tensor, from_unlabeled: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, K, *s)``; ``target`` and ``from_unlabeled`` (binary) ``(B, 1, *s)``."""
        logits = logits.float()
        from_unlabeled = from_unlabeled.bool()
        regions = torch.stack((~from_unlabeled, from_unlabeled))  # (2, B, 1, *s): labeled, pseudo-labeled
        if self.ignore_label is not None or self.leave_out_negative:
            valid = target != self.ignore_label if self.ignore_label is not None else None
            if self.leave_out_negative:
                valid = target >= 0 if valid is None else valid & (target >= 0)
            target = torch.where(valid, target, torch.zeros_like(target))
            regions = regions & valid
        probabilities = torch.softmax(logits, dim=1)
        ce_map = self.ce(logits, target.long())
        dice = soft_dice_loss_per_region(probabilities, target, regions, self.smooth)
        spatial = list(range(1, regions.ndim))
        ce = (ce_map.unsqueeze(0) * regions[:, :, 0]).sum(spatial[:-1]) / regions.sum(spatial).clamp_min(1)
        per_region = dice + ce
        return per_region[0] + self.u_weight * per_region[1]


class RegionWeightedDiceBCE(nn.Module):
    """The mix loss of a dataset with label regions (``regions_class_order``: BraTS, KiTS), built like nnU-Net's
    region loss (sigmoid per region, soft Dice over every region + binary cross-entropy): each of the labeled and
    the pseudo-labeled areas of a mixed image gets a masked Dice and a masked BCE, weighted 1 and ``u_weight``.
    With an ignore label, nnU-Net's region targets carry one more channel that marks the ignored voxels; they count
    in neither area."""

    def __init__(self, u_weight: float = 0.5, has_ignore_channel: bool = False, smooth: float = 1e-5):
        super().__init__()
        self.u_weight = u_weight
        self.has_ignore_channel = has_ignore_channel
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor, from_unlabeled: torch.Tensor) -> torch.Tensor:
        """``logits`` ``(B, R, *s)``; ``target`` ``(B, R, *s)`` binary region maps (``R + 1`` channels with the
        ignore channel); ``from_unlabeled`` ``(B, 1, *s)``."""
        logits = logits.float()
        from_unlabeled = from_unlabeled.bool()
        areas = torch.stack((~from_unlabeled, from_unlabeled))  # (2, B, 1, *s): labeled, pseudo-labeled
        if self.has_ignore_channel:
            areas = areas & (target[:, -1:] == 0)
            target = target[:, :-1]
        target = target.bool()
        dice = _soft_dice_loss_of_hits(torch.sigmoid(logits), target.unsqueeze(0) & areas, areas, self.smooth)
        bce_map = nn.functional.binary_cross_entropy_with_logits(logits, target.float(), reduction='none')
        spatial = list(range(1, areas.ndim))
        bce = (bce_map.unsqueeze(0) * areas).sum(spatial) / (areas.sum(spatial) * logits.shape[1]).clamp_min(1)
        per_area = dice + bce
        return per_area[0] + self.u_weight * per_area[1]
