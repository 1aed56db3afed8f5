"""Tensor operations per training step, by phase, for nnUNetTrainer and M3HLTrainer on any nnU-Net plans.

    python benchmarks/cost/step_operations.py --plans .../nnUNetPlans.json -c 2d [--batch 13] [--patch 256 224] -o ops.json

On a GPU every operation that is not a view is one kernel launch, and most of the M3HL step's bookkeeping
(losses on small deep-supervision scales, the pseudo-label cleanup, masks, EMA) is made of kernels too small to
hide their launch cost, so the number of operations, not their size, sets what those phases cost there. The count
is the same on any device, so this script measures on the CPU what the step will launch on a GPU. Its counter
(``OperationCounter``, ``count_operations``) also counts the launches of single parts in ``lcc_cost.py`` and
``mixing_cost.py``.

Both trainers are built from the plans as ``memory_breakdown.py`` builds them (random batches, no data read) and run
one step each, the M3HL step as the trainer runs it on CUDA: the pseudo-label cleanup with the torch propagation
(on the CPU the trainer would use scipy). The teacher is untrained, so its pseudo-labels are the noisy maps of a
run's first steps (the costliest for the cleanup; ``lcc_cost.py`` has trained-teacher maps). Each phase is the code
that one package function or one nnU-Net call runs, named as the trainer composes them.
"""
import argparse
import os
import sys
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, List, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

from memory_breakdown import add_plans_arguments, each_trainer, in_phase, write_result  # noqa: E402

import nnunetv2_m3hl.overlap as overlap_module  # noqa: E402
from nnunetv2_m3hl.overlap import PseudoLabelCleanup, Ready  # noqa: E402



class OperationCounter(TorchDispatchMode):
    """Counts the operations that reach the backends, views left out (they launch no kernel), under the phase
    label that ``labelled`` functions set while they run."""

    def __init__(self):
        super().__init__()
        self.counts = defaultdict(int)
        self.phase = 'other'

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.counts[self.phase] += 1
        return func(*args, **(kwargs or {}))

    def labelled(self, phase: str, fn: Callable) -> Callable:
        """``fn`` with its operations counted under ``phase``."""
        return in_phase(self, phase, fn)


def count_operations(fn: Callable[[], object]) -> int:
    """Operations dispatched by one call of ``fn``."""
    with OperationCounter() as counter:
        fn()
    return counter.count


@contextmanager
def patched(target, attribute: str, wrap: Callable[[str, Callable], Callable], phase: str):
    original = getattr(target, attribute)
    setattr(target, attribute, wrap(phase, original))
    try:
        yield
    finally:
        setattr(target, attribute, original)


class TorchCleanup(PseudoLabelCleanup):
    """The CUDA path's cleanup (torch propagation), run where it is called."""

    def __init__(self):
        super().__init__('sync')

    def start(self, hard: torch.Tensor, num_classes: int) -> Ready:
        return Ready(overlap_module.largest_component_per_class(hard, num_classes, backend='torch'))


def step_phases(trainer, batch) -> Tuple[List[Tuple[object, str, str]], Callable[[], dict]]:
    """What one training step of either trainer runs, by phase: the (object, attribute, phase) triples to wrap and
    the step itself. Each phase is one package function or one nnU-Net call, named as the trainer composes them."""
    import nnunetv2_m3hl.label_forms as label_forms
    import nnunetv2_m3hl.trainers.m3hl_trainer as m3hl_module
    x_l, target, x_u = batch
    patches = [(torch.Tensor, 'backward', 'backward'), (torch.nn.utils, 'clip_grad_norm_', 'gradient clipping'),
               (trainer.optimizer, 'step', 'optimizer step'), (trainer.optimizer, 'zero_grad', 'zero_grad'),
               (trainer.network, 'forward', 'student forward')]
    if not hasattr(trainer, 'teacher'):
        patches.append((trainer.loss, 'forward', "nnU-Net's loss"))
        return patches, lambda: trainer.train_step({'data': x_l, 'target': target})
    patches += [(overlap_module, 'largest_component_per_class', 'pseudo-label cleanup'),
                (trainer.teacher, 'forward', 'teacher forward'), (trainer, 'make_masks', 'masks'),
                (trainer.mix_loss, 'forward', 'mix loss'),
                (trainer.step_guard, 'all_ranks_finite', 'finiteness check')]
    module_phases = [('mix_images', 'mixing'), ('downsample_for_deep_supervision', 'deep-supervision targets'),
                     ('high_level_loss', 'L_high'), ('low_level_loss', 'L_low'), ('ema_update', 'EMA update')]
    patches += [(m3hl_module, name, phase) for name, phase in module_phases]
    # what differs between label maps and regions is called through label_forms
    patches += [(label_forms, 'hard_pseudo_labels_and_confidence', 'argmax pseudo-labels'),
                (label_forms, 'region_pseudo_labels', 'region pseudo-labels'), (label_forms, 'mix_targets', 'mixing')]
    return patches, lambda: trainer.m3hl_step(x_l, target, x_u)


def use_foreach_optimizer(trainer) -> None:
    for group in trainer.optimizer.param_groups:
        group['foreach'] = True  # SGD's default on CUDA (one launch per group of tensors); on the CPU it loops


def count_step(trainer, batch) -> dict:
    """Operations of one training step by phase."""
    counter = OperationCounter()
    use_foreach_optimizer(trainer)
    if hasattr(trainer, 'teacher'):
        trainer.pseudo_label_cleanup = TorchCleanup()
    patches, run = step_phases(trainer, batch)
    with all_patched(patches, counter.labelled), counter:
        run()
    return dict(counter.counts)


@contextmanager
def all_patched(patches, wrap: Callable[[str, Callable], Callable]):
    """Every (object, attribute, phase) of ``patches`` replaced by ``wrap(phase, original)`` while inside."""
    if not patches:
        yield
        return
    (target, attribute, phase), rest = patches[0], patches[1:]
    with patched(target, attribute, wrap, phase), all_patched(rest, wrap):
        yield


def print_by_phase(base: dict, m3hl: dict, cell: Callable[[object], str]) -> None:
    """A markdown table of both trainers' values per phase, M3HL's largest first."""
    print('| phase | nnUNetTrainer | M3HLTrainer |\n|---|---|---|')
    for phase in sorted(set(base) | set(m3hl), key=lambda k: -float(cell(m3hl.get(k, base.get(k))))):
        print(f"| {phase} | {cell(base[phase]) if phase in base else ''} | "
              f"{cell(m3hl[phase]) if phase in m3hl else ''} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plans_arguments(p)
    p.add_argument('-o', default=None)
    args = p.parse_args()
    rows = {}
    for name, trainer, batch, patch, batch_size in each_trainer(args, torch.device('cpu')):
        rows[name] = count_step(trainer, batch)
    totals = {name: sum(row.values()) for name, row in rows.items()}
    result = {'plans': args.plans, 'configuration': args.configuration, 'patch_size': list(patch),
              'batch_size': batch_size, 'operations': rows, 'total_operations': totals,
              'ratio': totals['M3HLTrainer'] / totals['nnUNetTrainer']}
    print(f"{args.configuration}, patch {'x'.join(map(str, patch))}, batch {batch_size}: operations per step")
    print_by_phase(rows['nnUNetTrainer'], rows['M3HLTrainer'], str)
    print(f"| total | {totals['nnUNetTrainer']} | {totals['M3HLTrainer']} |")
    print(f"ratio M3HL / nnU-Net: {result['ratio']:.2f}")
    if args.o:
        write_result(args.o, result)


if __name__ == '__main__':
    main()
