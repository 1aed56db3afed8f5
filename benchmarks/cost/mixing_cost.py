"""Fixed cost of the M3HL step's data handling (block masks, mixing, deep-supervision targets) at a plan's
batch and patch size, the package's functions side by side with the plain formulations they replace.

    python benchmarks/cost/mixing_cost.py --plans .../nnUNetPlans.json -c 2d [--device cuda] -o mixing_cost.json

For each part it reports the median time over ``--repeats`` calls and the number of tensor operations
dispatched, views left out (each a kernel launch on a GPU; ``step_operations.py``):

- mixing: ``torch.where`` on the couple masks vs the blend ``M * x_u + (1 - M) * x_l``;
- deep-supervision targets: strided views (scales that divide the patch, as nnU-Net plans them) vs
  nnU-Net's ``DownsampleSegForDSTransform`` (nearest-exact interpolation), the path used before;
- block masks: blocks drawn on the CPU and expanded on the device with cached indices vs everything on the
  device (the form before);
- the per-pair share of the unlabeled image: the couple masks and their complements interleaved vs a gather
  by couple and an XOR for the odd pairs (the form before);
- the mixed targets, which have one form only.

Both forms of each part give identical tensors; the script checks that before it times them.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform  # noqa: E402

from step_operations import count_operations  # noqa: E402

from nnunetv2_m3hl.mixing import (blocks_along_axes, block_index_per_voxel,  # noqa: E402
                                  downsample_for_deep_supervision, make_block_masks, mix_images, mix_targets,
                                  number_of_couples, unlabeled_share_per_pair)


def block_masks_on_device(n_masks, spatial_shape, device, blocks_per_axis=4, masked_ratio=0.5):
    grid = blocks_along_axes(spatial_shape, blocks_per_axis)
    n_blocks = int(np.prod(grid))
    ranks = torch.rand((n_masks, n_blocks), device=device).argsort(dim=1).argsort(dim=1)
    masks = (ranks < int(round(masked_ratio * n_blocks))).float().reshape(n_masks, *grid)
    for axis, (size, g) in enumerate(zip(spatial_shape, grid)):
        masks = masks.index_select(axis + 1, block_index_per_voxel(int(size), g, device))
    return masks


def share_by_gather_and_xor(masks, batch_size):
    device = masks.device
    per_pair = masks.bool()[torch.arange(batch_size, device=device) // 2]
    odd = (torch.arange(batch_size, device=device) % 2 == 1).view(-1, *([1] * (masks.ndim - 1)))
    return (per_pair ^ odd).unsqueeze(1).to(masks.dtype)


def blend_images(x_labeled, x_unlabeled, masks):
    from_unlabeled = unlabeled_share_per_pair(masks.to(x_labeled.dtype), x_labeled.shape[0])
    return from_unlabeled * x_unlabeled + (1 - from_unlabeled) * x_labeled, from_unlabeled


def interpolate_for_deep_supervision(maps, scales):
    batch_size = maps[0].shape[0]
    stacked = torch.cat([m[:, 0].float() for m in maps], dim=0)
    return [[p.unsqueeze(1).to(m.dtype) for p, m in zip(level.split(batch_size, dim=0), maps)]
            for level in DownsampleSegForDSTransform(scales)(segmentation=stacked)['segmentation']]


def median_seconds(fn, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def shapes_from_plans(plans_file: str, configuration: str):
    with open(plans_file) as f:
        plans = json.load(f)
    c = plans['configurations'][configuration]
    dataset_json_file = os.path.join(os.path.dirname(os.path.abspath(plans_file)), 'dataset.json')
    if not os.path.isfile(dataset_json_file):
        sys.exit(f"{dataset_json_file} not found: --plans must lie in the dataset's nnUNet_preprocessed folder, "
                 f"next to its dataset.json")
    with open(dataset_json_file) as f:
        n_classes = len(json.load(f)['labels'])
    pools = c['architecture']['arch_kwargs']['strides']
    scales = [list(s) for s in 1 / np.cumprod(np.vstack(pools), axis=0)][:-1]
    return c['batch_size'], list(c['patch_size']), n_classes, scales


def measure(batch_size, patch, n_classes, scales, device, repeats) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    x_l = torch.randn((batch_size, 1, *patch), device=device, generator=g)
    x_u = torch.randn((batch_size, 1, *patch), device=device, generator=g)
    y = torch.randint(0, n_classes, (batch_size, 1, *patch), device=device, generator=g).to(torch.int16)
    pseudo = torch.randint(0, n_classes, (batch_size, 1, *patch), device=device, generator=g).to(torch.int16)
    masks = make_block_masks(number_of_couples(batch_size), patch, device=device, generator=g)
    images, from_unlabeled = mix_images(x_l, x_u, masks)
    targets = mix_targets(y, pseudo, from_unlabeled)
    if not torch.equal(images, blend_images(x_l, x_u, masks)[0]):
        raise AssertionError('the select and the blend give different mixed images')
    if not torch.equal(unlabeled_share_per_pair(masks, batch_size), share_by_gather_and_xor(masks, batch_size)):
        raise AssertionError('the two forms of the per-pair share differ')
    for new, old in zip(downsample_for_deep_supervision([targets, from_unlabeled], scales),
                        interpolate_for_deep_supervision([targets, from_unlabeled], scales)):
        if not all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(new, old)):
            raise AssertionError("strided views and nnU-Net's interpolation give different targets")
    parts = {
        'block masks': lambda: make_block_masks(number_of_couples(batch_size), patch, device=device),
        'block masks (on the device, before)': lambda: block_masks_on_device(number_of_couples(batch_size), patch,
                                                                             device),
        'per-pair share': lambda: unlabeled_share_per_pair(masks, batch_size),
        'per-pair share (gather and XOR, before)': lambda: share_by_gather_and_xor(masks, batch_size),
        'mixing (select)': lambda: mix_images(x_l, x_u, masks),
        'mixing (blend, before)': lambda: blend_images(x_l, x_u, masks),
        'mixed targets': lambda: mix_targets(y, pseudo, from_unlabeled),
        'deep-supervision targets (views)': lambda: downsample_for_deep_supervision([targets, from_unlabeled], scales),
        'deep-supervision targets (interpolation, before)':
            lambda: interpolate_for_deep_supervision([targets, from_unlabeled], scales),
    }
    for fn in parts.values():
        fn()  # warm-up
    return {name: {'seconds': median_seconds(fn, device, repeats), 'operators': count_operations(fn)}
            for name, fn in parts.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--plans', required=True, help="an nnU-Net plans file, next to the dataset's dataset.json")
    p.add_argument('-c', '--configuration', required=True)
    p.add_argument('--device', default='cpu')
    p.add_argument('--repeats', type=int, default=11)
    p.add_argument('-o', default=None)
    args = p.parse_args()
    batch_size, patch, n_classes, scales = shapes_from_plans(args.plans, args.configuration)
    device = torch.device(args.device)
    parts = measure(batch_size, patch, n_classes, scales, device, args.repeats)
    print(f"{args.configuration}: batch {batch_size}, patch {'x'.join(map(str, patch))}, {n_classes} classes, "
          f"{len(scales)} deep-supervision scales, {args.device}")
    print('| part | ms | operations |\n|---|---|---|')
    for name, r in parts.items():
        print(f"| {name} | {1000 * r['seconds']:.2f} | {r['operators']} |")
    if args.o:
        with open(args.o, 'w') as f:
            json.dump({'plans': args.plans, 'configuration': args.configuration, 'batch_size': batch_size,
                       'patch_size': patch, 'classes': n_classes, 'device': args.device, 'repeats': args.repeats,
                       'parts': parts}, f, indent=1)


if __name__ == '__main__':
    main()
