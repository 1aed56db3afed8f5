"""Where a training step's time goes, by phase, on the device and on the host, for nnUNetTrainer and M3HLTrainer on
any nnU-Net plans (torch.profiler).

    python benchmarks/cost/step_profile.py --plans .../nnUNetPlans.json -c 2d --device cuda [--steps 2] -o profile.json

``step_cost.py`` times whole steps and, apart, each phase behind a synchronisation; this script profiles whole
steps as the trainers run them, so that overlapping streams and the host's launch gaps stay as they are. Each
phase is one package function or one nnU-Net call (the phases of ``step_operations.py``), marked with a profiler
range. Per phase it reports the device time of the kernels it launched (on CUDA; the backward's kernels are
launched by autograd's device thread and count as the backward) and the host time spent in it. Per step it
reports the wall time, the time the device was busy (the union of its kernels' intervals) and so the time it sat
idle waiting for launches or synchronisations, and the kernels that took the most device time. On the CPU there
is no device timeline: the phases' host times are where the time goes.

The trainers are built from the plans as ``memory_breakdown.py`` builds them (random batches, no data read, weights
at initialisation, ``torch.compile`` off), with the M3HL trainer's own pseudo-label cleanup mode unless
``--cleanup-mode`` says otherwise. The profiler adds some host time per operation, so the idle time is an upper
bound; the device times are the kernels' own.
"""
import argparse
import os
import sys
import time
from collections import defaultdict
from typing import Callable, Dict, List

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

from memory_breakdown import add_plans_arguments, each_trainer, write_result  # noqa: E402
from step_cost import sync  # noqa: E402
from step_operations import all_patched, print_by_phase, step_phases, use_foreach_optimizer  # noqa: E402

from nnunetv2_m3hl.overlap import PseudoLabelCleanup  # noqa: E402

PHASE = 'phase: '
BACKWARD_ENGINE = 'autograd::engine::evaluate_function'


def ranged(phase: str, fn: Callable) -> Callable:
    """``fn`` inside a profiler range named after its phase."""
    def wrapped(*args, **kwargs):
        with record_function(PHASE + phase):
            return fn(*args, **kwargs)
    return wrapped


def busy_time(intervals: List[tuple]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, reach = 0.0, float('-inf')
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


def phase_of(event) -> str:
    if event.name.startswith(PHASE):
        return event.name[len(PHASE):]
    if event.name.startswith(BACKWARD_ENGINE):
        return 'backward'
    return 'other'


def summarize(events, steps: int, wall_s: float, top: int) -> dict:
    """Per-step times (ms) by phase, the device's busy and idle time, and the costliest kernels."""
    main_thread = None
    per_phase: Dict[str, Dict[str, float]] = defaultdict(lambda: {'device_ms': 0.0, 'host_ms': 0.0})
    device_events = [e for e in events if e.device_type == DeviceType.CUDA]
    host_events = [e for e in events if e.device_type == DeviceType.CPU]
    for event in host_events:
        if event.name == PHASE + 'student forward':
            main_thread = event.thread  # the training loop's thread
    for event in host_events:
        if event.cpu_parent is not None:
            continue
        phase = per_phase[phase_of(event)]
        phase['device_ms'] += event.device_time_total / 1e3 / steps
        if event.thread == main_thread:
            # the training loop's own time; autograd's and the cleanup's threads work alongside it
            phase['host_ms'] += event.cpu_time_total / 1e3 / steps
    result = {'wall_ms': wall_s * 1e3 / steps, 'phases': {k: dict(v) for k, v in per_phase.items()}}
    if device_events:
        busy = busy_time([(e.time_range.start, e.time_range.end) for e in device_events]) / 1e3 / steps
        result.update(device_busy_ms=busy, device_idle_ms=result['wall_ms'] - busy,
                      kernel_ms=sum(e.time_range.elapsed_us() for e in device_events) / 1e3 / steps)
        key, timed = 'device_ms', [(e.name, e.time_range.elapsed_us()) for e in device_events]
    else:
        key, timed = 'host_self_ms', [(e.name, e.self_cpu_time_total) for e in host_events]
    by_name = defaultdict(lambda: [0.0, 0])
    for name, us in timed:
        by_name[name][0] += us / 1e3 / steps
        by_name[name][1] += 1
    costliest = sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]
    result['costliest'] = [{'name': name[:120], key: ms, 'calls_per_step': calls / steps}
                           for name, (ms, calls) in costliest]
    return result


def profile_trainer(trainer, batch, device: torch.device, warmup: int, steps: int, top: int) -> dict:
    use_foreach_optimizer(trainer)
    patches, run = step_phases(trainer, batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with all_patched(patches, ranged):
        for _ in range(warmup):  # cudnn's autotuning and the allocator's first requests stay out of the profile
            run()
        sync(device)
        with profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                run()
            sync(device)
            wall = time.perf_counter() - t0
    return summarize(prof.events(), steps, wall, top)


def on_device(batch, device: torch.device):
    x_l, target, x_u = batch
    move = (lambda t: t.to(device))
    return move(x_l), ([move(t) for t in target] if isinstance(target, list) else move(target)), move(x_u)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plans_arguments(p)
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    p.add_argument('--steps', type=int, default=2, help='profiled steps per trainer')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--cleanup-mode', default=None, help="M3HL's pseudo-label cleanup mode (default: the trainer's)")
    p.add_argument('--top', type=int, default=15, help='how many of the costliest kernels (operations) to list')
    p.add_argument('-o', default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # as nnUNetv2_train sets it
    rows = {}
    for name, trainer, batch, patch, batch_size in each_trainer(args, device):
        if args.cleanup_mode is not None and hasattr(trainer, 'pseudo_label_cleanup'):
            trainer.pseudo_label_cleanup = PseudoLabelCleanup(args.cleanup_mode)
        rows[name] = profile_trainer(trainer, on_device(batch, device), device, args.warmup, args.steps, args.top)
        if hasattr(trainer, 'pseudo_label_cleanup'):
            rows[name]['cleanup_mode'] = trainer.pseudo_label_cleanup.mode
            trainer.pseudo_label_cleanup.close()
    result = {'plans': args.plans, 'configuration': args.configuration, 'patch_size': list(patch),
              'batch_size': batch_size, 'device': args.device, 'steps': args.steps, 'trainers': rows,
              'wall_ratio': rows['M3HLTrainer']['wall_ms'] / rows['nnUNetTrainer']['wall_ms']}
    time_key = 'device_ms' if device.type == 'cuda' else 'host_ms'
    print(f"{args.configuration}, patch {'x'.join(map(str, patch))}, batch {batch_size}, {args.device}: "
          f"{time_key[:-3]} ms per step by phase (profiled, {args.steps} steps)")
    print_by_phase(rows['nnUNetTrainer']['phases'], rows['M3HLTrainer']['phases'],
                   lambda times: f"{times[time_key]:.2f}")
    for label, key in (('wall', 'wall_ms'), ('device busy', 'device_busy_ms'), ('device idle', 'device_idle_ms')):
        if key in rows['M3HLTrainer']:
            print(f"| {label} | {rows['nnUNetTrainer'][key]:.2f} | {rows['M3HLTrainer'][key]:.2f} |")
    print(f"wall ratio M3HL / nnU-Net (profiled): {result['wall_ratio']:.2f}")
    if args.o:
        write_result(args.o, result)


if __name__ == '__main__':
    main()
