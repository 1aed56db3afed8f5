"""The two forms of targets nnU-Net trains, as M3HL's step sees them. Everything that differs between them lives
here, behind one interface that the step calls the same way for both:

- ``LabelMaps`` (nnU-Net's default): one map of class indices ``(B, 1, *s)``, softmax outputs. Pseudo-labels are
  the teacher's argmax, cleaned to the largest component per class; the mix loss is Dice + CE.
- ``RegionMaps`` (``regions_class_order`` in dataset.json: BraTS, KiTS): one binary map per region ``(B, R, *s)``,
  nested or overlapping, sigmoid outputs. Pseudo-labels are each region's sigmoid above 0.5, cleaned to the
  largest component per region; the mix loss is Dice + BCE, as nnU-Net's region loss.

Both mix their targets the same way (the pseudo-label where a voxel came from the unlabeled image), weigh the
pseudo-labeled voxels ``u_weight``, and leave the ignore label's voxels out of every term.
"""
from typing import Optional, Sequence

import torch
from torch import nn

from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunetv2_m3hl.losses import RegionWeightedDiceBCE, RegionWeightedDiceCE
from nnunetv2_m3hl.mixing import mix_targets
from nnunetv2_m3hl.overlap import PseudoLabelCleanup, Ready
from nnunetv2_m3hl.teacher import gate_by_confidence, hard_pseudo_labels_and_confidence, region_pseudo_labels


class _Gated:
    """A started cleanup whose map is gated by the teacher's confidence once it is ready."""

    def __init__(self, cleaning, confidence: torch.Tensor, threshold: float):
        self.cleaning, self.confidence, self.threshold = cleaning, confidence, threshold

    def result(self) -> torch.Tensor:
        return gate_by_confidence(self.cleaning.result(), self.confidence, self.threshold)


class _Shaped:
    """A started cleanup whose map is handed back as ``shape`` (the cleanup works on ``(N, *spatial)`` maps)."""

    def __init__(self, cleaning, shape: Sequence[int]):
        self.cleaning, self.shape = cleaning, tuple(shape)

    def result(self) -> torch.Tensor:
        return self.cleaning.result().reshape(self.shape)


class LabelMaps:
    """Targets as one map of class indices (softmax outputs)."""

    def __init__(self, label_manager: LabelManager):
        self.num_outputs = label_manager.num_segmentation_heads
        self.ignore_label = label_manager.ignore_label

    def mix_loss(self, u_weight: float, confidence_gated: bool) -> nn.Module:
        loss = RegionWeightedDiceCE(u_weight, self.ignore_label)
        loss.leave_out_negative = confidence_gated
        return loss

    def start_pseudo_labels(self, logits: torch.Tensor, cleanup: Optional[PseudoLabelCleanup],
                            confidence_threshold: Optional[float] = None):
        """The teacher's logits ``(B, K, *s)`` -> a handle whose ``result()`` is the pseudo-label map ``(B, 1, *s)``:
        the argmax, cleaned to the largest component per class unless ``cleanup`` is None, and with a
        ``confidence_threshold`` gated by the softmax probability (``teacher.gate_by_confidence``)."""
        hard, confidence = hard_pseudo_labels_and_confidence(logits)
        cleaning = cleanup.start(hard, logits.shape[1]) if cleanup is not None else Ready(hard)
        if confidence_threshold is not None:
            cleaning = _Gated(cleaning, confidence, confidence_threshold)
        return _Shaped(cleaning, (hard.shape[0], 1, *hard.shape[1:]))

    def mixed_targets(self, y_labeled: torch.Tensor, pseudo: torch.Tensor, from_unlabeled: torch.Tensor
                      ) -> torch.Tensor:
        # int64 once at full resolution: every deep-supervision scale is a view of it, so the loss converts nothing
        return mix_targets(y_labeled.long(), pseudo, from_unlabeled)

    def shown_target(self, target: torch.Tensor) -> torch.Tensor:
        """A ``(1, *s)`` map of one sample's target for the mixed-sample PNG."""
        return target

    def shown_prediction(self, logits: torch.Tensor) -> torch.Tensor:
        """A ``(1, *s)`` map of one sample's prediction for the mixed-sample PNG."""
        return logits.detach().argmax(0, keepdim=True)


class RegionMaps:
    """Targets as one binary map per label region (sigmoid outputs); with an ignore label, nnU-Net's targets carry
    one more channel marking the ignored voxels."""

    def __init__(self, label_manager: LabelManager):
        self.num_outputs = len(label_manager.foreground_regions)
        self.has_ignore_channel = label_manager.has_ignore_label

    def mix_loss(self, u_weight: float, confidence_gated: bool) -> nn.Module:
        if confidence_gated:
            raise ValueError("pseudo-labels gated by the teacher's confidence exist for label maps only; this "
                             "dataset uses regions (regions_class_order). Use M3HLTrainer, whose pseudo-labels are "
                             "each region's sigmoid above 0.5.")
        return RegionWeightedDiceBCE(u_weight, self.has_ignore_channel)

    def start_pseudo_labels(self, logits: torch.Tensor, cleanup: Optional[PseudoLabelCleanup],
                            confidence_threshold: Optional[float] = None):
        """The teacher's logits ``(B, R, *s)`` -> a handle whose ``result()`` is the region maps ``(B, R, *s)``:
        each region's sigmoid above 0.5, cleaned to its largest component unless ``cleanup`` is None."""
        hard = region_pseudo_labels(logits)
        # every (sample, region) map is a binary label map of its own: the cleanup keeps its largest component
        cleaning = cleanup.start(hard.flatten(0, 1), 2) if cleanup is not None else Ready(hard)
        return _Shaped(cleaning, hard.shape)

    def mixed_targets(self, y_labeled: torch.Tensor, pseudo: torch.Tensor, from_unlabeled: torch.Tensor
                      ) -> torch.Tensor:
        if self.has_ignore_channel:
            # a pseudo-labeled voxel is never ignored
            pseudo = torch.cat((pseudo, torch.zeros_like(pseudo[:, :1])), dim=1)
        return mix_targets(y_labeled.long(), pseudo, from_unlabeled)

    def shown_target(self, target: torch.Tensor) -> torch.Tensor:
        """Nested regions as one map: the number of regions a voxel lies in."""
        regions = target[:-1] if self.has_ignore_channel else target
        return regions.sum(0, keepdim=True)

    def shown_prediction(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits.detach() > 0).sum(0, keepdim=True)


def label_form_for(label_manager: LabelManager):
    """``RegionMaps`` for a dataset with label regions, else ``LabelMaps``."""
    return RegionMaps(label_manager) if label_manager.has_regions else LabelMaps(label_manager)
