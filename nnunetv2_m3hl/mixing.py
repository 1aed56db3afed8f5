"""Block masks and the mutual mixing of labeled and unlabeled patches (pure torch, any device).

Pairing (DESIGN section 3): labeled sample i is paired with unlabeled sample i; pairs 2j and 2j+1
form a *couple* that shares one block mask ``M_j`` in opposite directions::

    mixed[2j]   = M_j * x_u[2j]   + (1 - M_j) * x_l[2j]
    mixed[2j+1] = M_j * x_l[2j+1] + (1 - M_j) * x_u[2j+1]

An odd last pair has a couple (and a mask) of its own, so every batch size works.
"""
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import torch
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform


def blocks_along_axes(spatial_shape: Sequence[int], blocks_per_axis: int) -> List[int]:
    """Number of blocks per axis: ``blocks_per_axis``, fewer only where an axis has fewer voxels."""
    if blocks_per_axis < 1:
        raise ValueError(f"blocks_per_axis must be >= 1, got {blocks_per_axis}")
    return [min(blocks_per_axis, int(s)) for s in spatial_shape]


def block_index_per_voxel(size: int, n_blocks: int, device: torch.device) -> torch.Tensor:
    """Block index of every voxel along one axis; blocks differ by at most one voxel when
    ``size`` is not divisible by ``n_blocks``."""
    return torch.arange(size, device=device) * n_blocks // size


@lru_cache(maxsize=32)
def _cached_block_index(size: int, n_blocks: int, device: torch.device) -> torch.Tensor:
    return block_index_per_voxel(size, n_blocks, device)


def _to_device_async(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == 'cuda' and tensor.device.type == 'cpu':
        # from pinned memory the copy does not wait for the GPU's queue, as a copy from pageable memory does
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def make_block_masks(n_masks: int, spatial_shape: Sequence[int], blocks_per_axis: int = 4,
                     masked_ratio: float = 0.5, device: torch.device = torch.device('cpu'),
                     generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random block-grid masks, shape ``(n_masks, *spatial_shape)``, values 0/1 (float32).

    Exactly ``round(masked_ratio * n_blocks)`` blocks of each mask are 1; every mask draws its own
    blocks. Built with one argsort over random keys, without Python loops over blocks. The blocks are drawn
    on ``generator``'s device (the CPU without one: a few dozen values, not worth a GPU kernel each) and
    expanded to voxels on ``device`` by one gather per axis.
    """
    if not 0.0 <= masked_ratio <= 1.0:
        raise ValueError(f"masked_ratio must lie in [0, 1], got {masked_ratio}")
    grid = blocks_along_axes(spatial_shape, blocks_per_axis)
    n_blocks = 1
    for g in grid:
        n_blocks *= g
    n_masked = int(round(masked_ratio * n_blocks))
    device = torch.device(device)
    keys = torch.rand((n_masks, n_blocks), device=generator.device if generator is not None else 'cpu',
                      generator=generator)
    ranks = keys.argsort(dim=1).argsort(dim=1)
    block_masks = _to_device_async((ranks < n_masked).float().reshape(n_masks, *grid), device)
    # expand blocks to voxels by gathering along each axis in turn
    voxel_masks = block_masks
    for axis, (size, g) in enumerate(zip(spatial_shape, grid)):
        voxel_masks = voxel_masks.index_select(axis + 1, _cached_block_index(int(size), g, device))
    return voxel_masks


def partner_index(batch_size: int, device: torch.device = torch.device('cpu')) -> torch.Tensor:
    """The other pair of each pair's couple; a lone last pair is its own partner."""
    idx = torch.arange(batch_size, device=device)
    partner = idx ^ 1
    return torch.where(partner < batch_size, partner, idx)


def number_of_couples(batch_size: int) -> int:
    return (batch_size + 1) // 2


@dataclass
class MixedBatch:
    images: torch.Tensor          # (B, C, *spatial)
    targets: torch.Tensor         # (B, 1, *spatial), label or pseudo-label per voxel
    from_unlabeled: torch.Tensor  # (B, 1, *spatial), 1 where the voxel came from the unlabeled image
    masks: torch.Tensor           # (n_couples, *spatial), the couple masks used


def unlabeled_share_per_pair(masks: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Where each pair takes its unlabeled content: ``M`` for even pairs, ``1 - M`` for odd ones.
    Returns ``(B, 1, *spatial)`` in the masks' dtype."""
    # couple j's two pairs interleaved (M_j, 1 - M_j), an odd batch's last complement cut off: two kernels
    return torch.stack((masks, 1 - masks), dim=1).flatten(0, 1)[:batch_size].unsqueeze(1)


def mix_images(x_labeled: torch.Tensor, x_unlabeled: torch.Tensor, masks: torch.Tensor
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The mixed images of B (labeled, unlabeled) pairs and where each voxel came from the unlabeled image
    ``(B, 1, *spatial)``. Needs no pseudo-labels, so the student can run before they are ready."""
    batch_size = x_labeled.shape[0]
    if x_unlabeled.shape != x_labeled.shape:
        raise ValueError(f"labeled and unlabeled batches differ in shape: {tuple(x_labeled.shape)} vs "
                         f"{tuple(x_unlabeled.shape)}")
    if masks.shape[0] != number_of_couples(batch_size) or masks.shape[1:] != x_labeled.shape[2:]:
        raise ValueError(f"expected {number_of_couples(batch_size)} masks of shape {tuple(x_labeled.shape[2:])}, "
                         f"got {tuple(masks.shape)}")
    from_unlabeled = unlabeled_share_per_pair(masks.to(x_labeled.dtype), batch_size)
    # a select, not M * x_u + (1 - M) * x_l: one pass over the images instead of four, the same values
    return torch.where(from_unlabeled.bool(), x_unlabeled, x_labeled), from_unlabeled


def mix_targets(y_labeled: torch.Tensor, pseudo_labels: torch.Tensor, from_unlabeled: torch.Tensor) -> torch.Tensor:
    """The mixed targets: the pseudo-label where the voxel came from the unlabeled image, else the label."""
    return torch.where(from_unlabeled.bool(), pseudo_labels.to(y_labeled.dtype), y_labeled)


def mutual_mix(x_labeled: torch.Tensor, y_labeled: torch.Tensor, x_unlabeled: torch.Tensor,
               pseudo_labels: torch.Tensor, masks: torch.Tensor) -> MixedBatch:
    """Mix images and targets of B (labeled, unlabeled) pairs with the couple masks.

    ``x_*``: ``(B, C, *spatial)``; ``y_labeled``/``pseudo_labels``: ``(B, 1, *spatial)``;
    ``masks``: ``(ceil(B/2), *spatial)``.
    """
    images, from_unlabeled = mix_images(x_labeled, x_unlabeled, masks)
    return MixedBatch(images, mix_targets(y_labeled, pseudo_labels, from_unlabeled), from_unlabeled, masks)


def integer_strides(spatial_shape: Sequence[int], scale: Sequence[float]) -> Optional[List[int]]:
    """The stride ``k`` per axis when ``scale`` is ``1/k`` with ``k`` dividing the axis, else None.

    nnU-Net's nearest-exact downsampling by such a factor reads voxel ``k*i + k//2``, so a strided view
    gives exactly its result without a kernel or a copy."""
    strides = []
    for size, s in zip(spatial_shape, scale):
        k = round(1 / s)
        if k < 1 or abs(k * s - 1) > 1e-9 or size % k:
            return None
        strides.append(k)
    return strides


def downsample_for_deep_supervision(maps: Sequence[torch.Tensor], scales: Optional[Sequence[Sequence[float]]]
                                    ) -> List[List[torch.Tensor]]:
    """Downsample label-like ``(B, C, *spatial)`` maps to every deep-supervision resolution exactly as
    nnU-Net's data augmentation does for its targets (nearest-exact). Returns one list per scale,
    holding the maps in input order. ``scales=None`` means no deep supervision (one full-res scale).

    Scales that divide the patch (nnU-Net's plans make them so) are strided views of the maps; other
    scales go through nnU-Net's own transform."""
    if scales is None:
        return [list(maps)]
    spatial_shape = maps[0].shape[2:]
    result: List[Optional[List[torch.Tensor]]] = []
    for scale in scales:
        strides = integer_strides(spatial_shape, scale)
        if strides is None:
            result.append(None)
        else:
            views = (slice(None), slice(None)) + tuple(slice(k // 2, None, k) for k in strides)
            result.append([m[views] for m in maps])
    remaining = [scale for scale, level in zip(scales, result) if level is None]
    if remaining:
        # nnU-Net's transform treats the leading axis as channels: stack every channel of every map there in one
        # call (label maps have one channel, region maps one per region)
        stacked = torch.cat([m.flatten(0, 1).float() for m in maps], dim=0)
        interpolated = iter(DownsampleSegForDSTransform(remaining)(segmentation=stacked)['segmentation'])
        for i, level in enumerate(result):
            if level is None:
                parts = next(interpolated).split([m.shape[0] * m.shape[1] for m in maps], dim=0)
                result[i] = [p.reshape(*m.shape[:2], *p.shape[1:]).to(m.dtype) for p, m in zip(parts, maps)]
    return result


def make_box_masks(n_masks: int, spatial_shape: Sequence[int], box_fraction: float = 2 / 3,
                   device: torch.device = torch.device('cpu'), generator: Optional[torch.Generator] = None
                   ) -> torch.Tensor:
    """BCP's bidirectional copy-paste mask: one box of ``box_fraction`` of every axis at a random
    position per mask, shape ``(n_masks, *spatial_shape)``."""
    masks = torch.ones((n_masks, *spatial_shape), device=device)
    for axis, size in enumerate(spatial_shape):
        box = max(1, int(round(box_fraction * size)))
        start = torch.randint(0, size - box + 1, (n_masks, 1), device=device, generator=generator)
        position = torch.arange(size, device=device).unsqueeze(0)
        inside = (position >= start) & (position < start + box)  # (n_masks, size)
        view = [n_masks] + [1] * len(spatial_shape)
        view[axis + 1] = size
        masks = masks * inside.view(view).float()
    return masks


def copy_paste_halves(images: torch.Tensor, labels: torch.Tensor, masks: torch.Tensor
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """BCP's pre-training mix of labeled patches: the first half of the batch is pasted into the second half,
    ``mixed = M * a + (1 - M) * b`` for ``a = batch[:n]``, ``b = batch[n:2n]``, ``n = B // 2``. Returns
    ``n`` mixed images and labels (a batch of one is returned as it is).

    ``images``: ``(B, C, *spatial)``; ``labels``: ``(B, 1, *spatial)``; ``masks``: ``(1 or n, *spatial)``.
    """
    n = images.shape[0] // 2
    if n == 0:
        return images, labels
    m = masks.unsqueeze(1).to(images.dtype)
    a, b = slice(0, n), slice(n, 2 * n)
    mixed_images = m * images[a] + (1 - m) * images[b]
    mixed_labels = torch.where(m.bool(), labels[a], labels[b])
    return mixed_images, mixed_labels
