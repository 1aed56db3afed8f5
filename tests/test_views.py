"""The teacher's weak view and the student's strong view of one unlabeled patch, on nnU-Net's own transforms."""
import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_m3hl.views import PHOTOMETRIC, WeakAndStrongViews, split_geometric_photometric, split_views


def nnunet_transforms(dim: int, dummy_2d: bool = False, masked: bool = False) -> ComposeTransforms:
    patch = (32,) * dim
    return nnUNetTrainer.get_training_transforms(
        patch, (-np.pi / 6, np.pi / 6), None, tuple(range(dim)), dummy_2d,
        use_mask_for_norm=[masked], foreground_labels=[1, 2], regions=None, ignore_label=None)


def sample(dim: int, seed: int = 0) -> dict:
    # a bright block in one corner: its place shows the geometry, and no flip or rotation maps it onto itself
    g = torch.Generator().manual_seed(seed)
    image = 0.1 * torch.randn((1,) + (32,) * dim, generator=g)
    image[(0,) + (slice(2, 14),) * dim] += 3.0
    return {'image': image, 'segmentation': torch.zeros((1,) + (32,) * dim, dtype=torch.int16)}


@pytest.mark.parametrize('dim,dummy_2d,masked', [(2, False, False), (3, False, True), (3, True, False)])
def test_nnunets_transforms_split_into_geometric_photometric_and_the_rest(dim, dummy_2d, masked):
    geometric, photometric, rest = split_geometric_photometric(nnunet_transforms(dim, dummy_2d, masked))
    kinds = [type(t).__name__ for t in geometric]
    assert 'SpatialTransform' in kinds and kinds[-1] == 'MirrorTransform'
    assert ('Convert3DTo2DTransform' in kinds) == dummy_2d
    # noise, blur, brightness, contrast, low resolution and both gammas
    assert len(photometric) == 7 and all(isinstance(t.transform, PHOTOMETRIC) for t in photometric)
    assert any(isinstance(t, MaskImageTransform) for t in rest) == masked
    assert not any(isinstance(t, RandomTransform) for t in rest)


@pytest.mark.parametrize('dim,dummy_2d', [(2, False), (3, True)])
def test_the_weak_view_is_the_geometric_transforms_alone_and_the_strong_view_shares_its_geometry(dim, dummy_2d):
    transforms = nnunet_transforms(dim, dummy_2d)
    views = WeakAndStrongViews(transforms)
    geometric_only = ComposeTransforms(views.geometric.transforms + views.rest.transforms)
    differing = 0
    for seed in range(12):
        torch.manual_seed(seed)
        np.random.seed(seed)
        out = views(**sample(dim, seed))
        strong, weak = out['image'][:1], out['image'][1:]
        assert out['image'].shape == (2,) + (32,) * dim
        torch.manual_seed(seed)
        np.random.seed(seed)
        assert torch.equal(weak, geometric_only(**sample(dim, seed))['image'])
        if not torch.equal(strong, weak):
            differing += 1
        # the block sits at the same place in both views
        block_weak, block_strong = weak > weak.mean() + weak.std(), strong > strong.mean() + strong.std()
        overlap = (block_weak & block_strong).sum() / max(1, int((block_weak | block_strong).sum()))
        assert overlap > 0.7, (seed, float(overlap))
    # nnU-Net's photometric probabilities leave about a quarter of the samples untouched
    assert differing >= 6


def test_without_photometric_transforms_both_views_are_equal():
    views = WeakAndStrongViews(nnunet_transforms(2))
    views.photometric = ComposeTransforms([])
    out = views(**sample(2))
    strong, weak = split_views(out['image'][None])
    assert torch.equal(strong, weak)


def test_a_random_transform_of_unknown_kind_is_refused_by_name():
    class Shuffle(BasicTransform):
        pass
    transforms = ComposeTransforms([SpatialTransform((32, 32), 0, False), RandomTransform(Shuffle(), 0.5),
                                    MirrorTransform((0, 1))])
    with pytest.raises(ValueError, match='Shuffle.*teacher_sees_weak_view = False'):
        WeakAndStrongViews(transforms)


def test_split_views_needs_an_even_channel_count():
    strong, weak = split_views(torch.arange(2 * 4 * 3).reshape(2, 4, 3).float())
    assert strong.shape == weak.shape == (2, 2, 3)
    with pytest.raises(ValueError, match='even channel count'):
        split_views(torch.zeros(2, 3, 5))
