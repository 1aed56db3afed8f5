"""A weak view of each unlabeled patch for the teacher, a strong one for the student (FixMatch's split, Sohn et al.
2020; UniMatch keeps it).

nnU-Net's training pipeline is split into its geometric transforms (crop, rotation, scaling, elastic deformation,
mirroring), its photometric ones (noise, blur, brightness, contrast, simulated low resolution, gamma) and the
deterministic rest (masking for normalisation, label bookkeeping). The geometric ones run once; the patch after them is
the weak view. The photometric ones then make the strong view from a copy. The rest runs on both. Both views are
returned stacked on the channel axis, ``[strong | weak]``, so that nnU-Net's data loader, which keeps only ``image``
and ``segmentation``, carries them unchanged; ``split_views`` takes them apart again.

Mirroring moves from after the photometric transforms (nnU-Net's order) to before them. Noise, blur with a symmetric
kernel, the pointwise intensity maps and the down-and-up sampling are all symmetric under flips, so the strong view's
distribution stays nnU-Net's.
"""
from typing import List, Tuple

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform

GEOMETRIC = (SpatialTransform, MirrorTransform, Convert3DTo2DTransform, Convert2DTo3DTransform)
PHOTOMETRIC = (GaussianNoiseTransform, GaussianBlurTransform, MultiplicativeBrightnessTransform, ContrastTransform,
               SimulateLowResolutionTransform, GammaTransform)


def _inner(transform: BasicTransform) -> BasicTransform:
    return transform.transform if isinstance(transform, RandomTransform) else transform


def split_geometric_photometric(transforms: ComposeTransforms) -> Tuple[List[BasicTransform], List[BasicTransform],
                                                                         List[BasicTransform]]:
    """nnU-Net's training transforms as (geometric, photometric, deterministic rest), each in its original order.
    A random transform that is neither geometric nor photometric cannot be given to both views with the same draw,
    so it is refused."""
    geometric, photometric, rest = [], [], []
    for t in transforms.transforms:
        if isinstance(_inner(t), GEOMETRIC):
            geometric.append(t)
        elif isinstance(_inner(t), PHOTOMETRIC):
            photometric.append(t)
        elif isinstance(t, RandomTransform):
            raise ValueError(
                f"the weak teacher view cannot place the random transform {type(_inner(t)).__name__} (neither "
                f"geometric nor photometric): set teacher_sees_weak_view = False, or override "
                f"get_unlabeled_transforms to build the two views yourself")
        else:
            rest.append(t)
    return geometric, photometric, rest


class WeakAndStrongViews(BasicTransform):
    """The two views of one sample, stacked on the channel axis as ``[strong | weak]`` (see the module)."""

    def __init__(self, transforms: ComposeTransforms):
        super().__init__()
        geometric, photometric, rest = split_geometric_photometric(transforms)
        self.geometric, self.photometric, self.rest = (ComposeTransforms(geometric), ComposeTransforms(photometric),
                                                       ComposeTransforms(rest))

    def apply(self, data_dict: dict, **params) -> dict:
        data_dict = self.geometric(**data_dict)
        weak = {'image': data_dict['image'].clone(), 'segmentation': data_dict['segmentation'].clone()}
        strong = self.rest(**self.photometric(**data_dict))
        weak = self.rest(**weak)
        strong['image'] = torch.cat((strong['image'], weak['image']))
        return strong


def split_views(stacked: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(strong, weak) from a batch of ``WeakAndStrongViews`` samples, ``(b, 2c, ...)``."""
    if stacked.shape[1] % 2:
        raise ValueError(f"expected a batch of two stacked views with an even channel count, got "
                         f"{tuple(stacked.shape)}")
    return stacked.chunk(2, dim=1)
