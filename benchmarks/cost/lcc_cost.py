"""Cost of the largest-connected-component cleanup of pseudo-labels with the torch backend (the one
used on GPUs), against its earlier form, on the same label maps.

    python benchmarks/cost/lcc_cost.py --device cuda -o benchmarks/results/lcc_cost_cuda.json
    python benchmarks/cost/lcc_cost.py --device cpu  -o benchmarks/results/lcc_cost_cpu.json

Forms of the same algorithm (label propagation by 3x3(x3) max-pooling; the convergence check, one host
synchronisation, after 8 iterations and then every 2):
  per class, pooling only           one propagation per class (the earliest implementation)
  all classes, pooling only         one propagation, one channel per class
  all classes, pointer jumping      the same plus pointer jumping
  all classes, pointer jumping, axis by axis    3D only: the cube's maximum taken one axis at a time (not used:
                                    slower on an H200)
  all classes, jumping + hooking    the same plus hooking (the current implementation, see
                                    teacher._propagate_max_index)
and the host path: the map goes to the host as uint8, scipy.ndimage.label cleans it one sample per thread
('host, 1 thread' and 'host, N threads'), and the result comes back (on CUDA the transfers are included).
Label maps: 'noisy' = smoothed random fields split into 4 classes (an untrained teacher: many
components with long, ragged borders), 'phantom' = the synthetic task's label maps (a trained teacher).
Reported: propagation iterations and tensor operations per call (both device independent; on a GPU each
operation is a kernel launch, and these kernels are small, so their number sets the cost), and the median time
per call. Every form is checked to keep the same voxels.
"""
import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from dataset_conversion.synthetic import make_phantom  # noqa: E402
from step_operations import count_operations  # noqa: E402
from nnunetv2_m3hl.overlap import host_cleanup_threads  # noqa: E402
from nnunetv2_m3hl.teacher import _keep_largest_torch, largest_component_per_class_numpy  # noqa: E402

CASES = {  # name: (batch, spatial shape); 2D maps are cleaned per slice, as the trainer does
    '2d 256x224, batch 12': (12, (256, 224)),
    '3d 64^3, batch 2': (2, (64, 64, 64)),
    '3d 112x112x80, batch 4': (4, (80, 112, 112)),
    '3d 96x128x192, batch 2': (2, (96, 128, 192)),  # LA's native 3d_fullres patch
}
NUM_CLASSES = 4


def noisy_labels(batch: int, shape, rng: np.random.Generator) -> np.ndarray:
    fields = rng.normal(size=(batch, NUM_CLASSES) + tuple(shape))
    sigma = (0, 0) + (max(1.0, min(shape) / 24),) * len(shape)
    return ndimage.gaussian_filter(fields, sigma).argmax(1)


def phantom_labels(batch: int, shape, rng: np.random.Generator) -> np.ndarray:
    return np.stack([make_phantom(shape, rng)[1] for _ in range(batch)]).astype(np.int64)


def timed(fn, device: torch.device, repeats: int):
    if device.type == 'cuda':
        fn()  # kernel selection and allocator warm-up
    times = []
    for _ in range(repeats):
        if device.type == 'cuda':
            torch.cuda.synchronize()
        t = time.perf_counter()
        result = fn()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), result


def measure(labels: torch.Tensor, device: torch.device, repeats: int) -> dict:
    present = [c for c in range(1, NUM_CLASSES) if bool((labels == c).any())]

    def per_class():
        results = [_keep_largest_torch(labels, [c], pointer_jumping=False, hooking=False) for c in present]
        return sum(r[1] for r in results), results

    settings = {
        'all classes, pooling only': dict(pointer_jumping=False, hooking=False),
        'all classes, pointer jumping': dict(hooking=False),
    }
    if labels.ndim == 4:
        settings['all classes, pointer jumping, axis by axis'] = dict(hooking=False, separable=True)
    settings['all classes, jumping + hooking'] = {}
    forms = {'per class, pooling only': per_class}
    forms.update({name: (lambda kw=kw: _keep_largest_torch(labels, present, **kw)[::-1])
                  for name, kw in settings.items()})
    out = {}
    for name, fn in forms.items():
        seconds, (iterations, _) = timed(fn, device, repeats)
        out[name] = {'seconds': seconds, 'iterations': iterations, 'operations': count_operations(fn)}
    reference = torch.where(_keep_largest_torch(labels, present, pointer_jumping=False, hooking=False)[0],
                            labels, 0)
    for name, kw in settings.items():
        kept = torch.where(_keep_largest_torch(labels, present, **kw)[0], labels, 0)
        assert torch.equal(kept, reference), f'{name} keeps other voxels than pooling alone'
    for workers in sorted({1, host_cleanup_threads()}):
        name = 'host, 1 thread' if workers == 1 else f'host, {workers} threads'
        with ThreadPoolExecutor(workers) as pool:
            def host():
                cleaned = largest_component_per_class_numpy(labels.to(torch.uint8).cpu().numpy(), NUM_CLASSES, pool)
                return None, torch.from_numpy(cleaned).to(device)
            seconds, (_, cleaned) = timed(host, device, repeats)
        assert torch.equal(cleaned.long(), reference), f'{name} keeps other voxels than the torch propagation'
        out[name] = {'seconds': seconds, 'iterations': None, 'operations': None}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--cases', nargs='+', default=list(CASES), choices=list(CASES))
    p.add_argument('-o', default='lcc_cost.json')
    args = p.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(0)
    results = []
    for case in args.cases:
        batch, shape = CASES[case]
        for kind, make in (('noisy', noisy_labels), ('phantom', phantom_labels)):
            labels = torch.from_numpy(make(batch, shape, rng)).to(device)
            for form, r in measure(labels, device, args.repeats).items():
                results.append({'case': case, 'labels': kind, 'form': form, **r})
                print(f"{case:24s} {kind:8s} {form:42s} {r['seconds'] * 1000:9.1f} ms  "
                      f"iterations {r['iterations']}  operations {r['operations']}", flush=True)
    meta = {'device': str(device), 'torch': torch.__version__,
            'gpu': torch.cuda.get_device_name(device) if device.type == 'cuda' else None,
            'repeats': args.repeats}
    with open(args.o + '.tmp', 'w') as f:
        json.dump({'settings': meta, 'results': results}, f, indent=1)
    os.replace(args.o + '.tmp', args.o)
    print('\n| case | labels | form | iterations | operations | ms per call |\n|---|---|---|---|---|---|')
    for r in results:
        print(f"| {r['case']} | {r['labels']} | {r['form']} | {r['iterations'] or ''} | {r['operations'] or ''} | "
              f"{r['seconds'] * 1000:.1f} |")


if __name__ == '__main__':
    main()
