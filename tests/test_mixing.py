import pytest
import torch

from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from nnunetv2_m3hl.mixing import (block_index_per_voxel, downsample_for_deep_supervision, make_block_masks,
                                  mix_images, mutual_mix, number_of_couples, partner_index)


def block_values(mask: torch.Tensor, grid):
    """Per block: the set of values inside it (a block-aligned mask has exactly one)."""
    idx = [block_index_per_voxel(s, g, mask.device) for s, g in zip(mask.shape, grid)]
    mesh = torch.meshgrid(*idx, indexing='ij')
    flat_block = torch.zeros_like(mask, dtype=torch.long)
    for m, g in zip(mesh, grid):
        flat_block = flat_block * g + m
    return [torch.unique(mask[flat_block == b]) for b in range(int(torch.tensor(grid).prod()))]


@pytest.mark.parametrize('shape', [(64, 64), (256, 256), (112, 112, 80), (16, 16, 16)])
def test_masked_share_is_exact_when_divisible(shape):
    masks = make_block_masks(5, shape, 4, 0.5)
    assert masks.shape == (5, *shape)
    assert torch.all(masks.flatten(1).mean(1) == 0.5)


@pytest.mark.parametrize('shape', [(37, 50), (13, 10, 7), (33, 65), (5, 3, 9)])
def test_odd_sizes_are_block_aligned_with_exact_block_share(shape):
    masks = make_block_masks(4, shape, 4, 0.5)
    grid = [min(4, s) for s in shape]
    n_blocks = int(torch.tensor(grid).prod())
    for m in masks:
        values = block_values(m, grid)
        assert all(len(v) == 1 for v in values), 'a block holds both masked and unmasked voxels'
        assert sum(int(v.item()) for v in values) == round(0.5 * n_blocks)


def test_masks_differ_between_couples_and_ratio_is_respected():
    masks = make_block_masks(64, (32, 32), 4, 0.25)
    assert torch.all(masks.flatten(1).mean(1) == 0.25)
    assert len({tuple(m.flatten().tolist()) for m in masks}) > 1


@pytest.mark.parametrize('batch_size', [1, 2, 3, 4])
@pytest.mark.parametrize('spatial', [(12, 20), (8, 12, 6)])
def test_couples_take_complementary_regions(batch_size, spatial):
    x_l = torch.zeros(batch_size, 2, *spatial)             # labeled content = 0
    x_u = torch.ones(batch_size, 2, *spatial)              # unlabeled content = 1
    y_l = torch.full((batch_size, 1, *spatial), 1)
    pseudo = torch.full((batch_size, 1, *spatial), 2)
    masks = make_block_masks(number_of_couples(batch_size), spatial, 4, 0.5)
    mixed = mutual_mix(x_l, y_l, x_u, pseudo, masks)
    for i in range(batch_size):
        m = masks[i // 2]
        expected_u = m if i % 2 == 0 else 1 - m
        assert torch.equal(mixed.images[i, 0], expected_u)
        assert torch.equal(mixed.images[i, 1], expected_u)
        # targets and the source map agree voxel for voxel with the images
        assert torch.equal(mixed.targets[i, 0], torch.where(expected_u.bool(), 2, 1))
        assert torch.equal(mixed.from_unlabeled[i, 0], expected_u)
    for j in range(batch_size // 2):
        # within a couple, unlabeled content of one mix is labeled content of the other
        assert torch.equal(mixed.from_unlabeled[2 * j] + mixed.from_unlabeled[2 * j + 1],
                           torch.ones_like(mixed.from_unlabeled[0]))


def test_partner_index_handles_odd_batches():
    assert partner_index(1).tolist() == [0]
    assert partner_index(3).tolist() == [1, 0, 2]
    assert partner_index(4).tolist() == [1, 0, 3, 2]


def test_mix_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        mutual_mix(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), torch.zeros(3, 1, 8, 8),
                   torch.zeros(2, 1, 8, 8), torch.zeros(1, 8, 8))
    with pytest.raises(ValueError):
        mutual_mix(torch.zeros(3, 1, 8, 8), torch.zeros(3, 1, 8, 8), torch.zeros(3, 1, 8, 8),
                   torch.zeros(3, 1, 8, 8), torch.zeros(1, 8, 8))


@pytest.mark.parametrize('spatial,scales', [((40, 24), [[1, 1], [0.5, 0.5], [0.25, 0.25]]),
                                            ((20, 12, 10), [[1, 1, 1], [0.5, 0.5, 1], [0.25, 0.25, 0.5]]),
                                            # not divisible by the stride: nnU-Net's interpolation rounds
                                            ((18, 10, 7), [[1, 1, 1], [0.5, 0.5, 1], [0.25, 0.25, 0.5]]),
                                            ((21, 16), [[1, 1], [1 / 3, 0.5], [1 / 9, 0.25]])])
def test_deep_supervision_downsampling_matches_nnunet_loader(spatial, scales):
    torch.manual_seed(0)
    targets = torch.randint(0, 4, (3, 1, *spatial), dtype=torch.int16)
    source = torch.randint(0, 2, (3, 1, *spatial)).float()
    per_scale = downsample_for_deep_supervision([targets, source], scales)
    transform = DownsampleSegForDSTransform(scales)
    for b in range(3):
        # what nnU-Net's loader does per sample, (C, *spatial)
        expected_t = transform(segmentation=targets[b])['segmentation']
        expected_s = transform(segmentation=source[b])['segmentation']
        for level, (t, s) in enumerate(per_scale):
            assert t.dtype == targets.dtype and s.dtype == source.dtype
            assert torch.equal(t[b], expected_t[level])
            assert torch.equal(s[b], expected_s[level])
    assert len(downsample_for_deep_supervision([targets], None)) == 1


@pytest.mark.parametrize('shape', [(30, 24), (12, 9, 15)])
def test_box_mask_is_one_box_of_two_thirds(shape):
    from nnunetv2_m3hl.mixing import make_box_masks
    masks = make_box_masks(6, shape)
    for m in masks:
        idx = m.nonzero()
        lo, hi = idx.min(0).values, idx.max(0).values
        extent = (hi - lo + 1).tolist()
        assert extent == [round(2 / 3 * s) for s in shape]
        assert m.sum() == torch.tensor(extent).prod()  # the bounding box is completely filled


@pytest.mark.parametrize('batch_size', [1, 2, 5])
def test_select_mixing_equals_the_blend_of_the_reference(batch_size):
    g = torch.Generator().manual_seed(batch_size)
    x_l, x_u = torch.randn(batch_size, 2, 12, 10, generator=g), torch.randn(batch_size, 2, 12, 10, generator=g)
    masks = make_block_masks(number_of_couples(batch_size), (12, 10), generator=g)
    images, from_unlabeled = mix_images(x_l, x_u, masks)
    assert torch.equal(images, from_unlabeled * x_u + (1 - from_unlabeled) * x_l)
    assert from_unlabeled.dtype == x_l.dtype and set(from_unlabeled.unique().tolist()) <= {0.0, 1.0}
