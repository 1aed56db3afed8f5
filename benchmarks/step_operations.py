"""Tensor operations per training step, by phase, for nnUNetTrainer and M3HLTrainer on any nnU-Net plans.

    python benchmarks/step_operations.py --plans .../nnUNetPlans.json -c 2d [--batch 13] [--patch 256 224] -o ops.json

On a GPU every operation that is not a view is one kernel launch, and most of the M3HL step's bookkeeping
(losses on small deep-supervision scales, the pseudo-label cleanup, masks, EMA) is made of kernels too small to
hide their launch cost, so the number of operations, not their size, sets what those phases cost there. The count
is the same on any device, so this script measures on the CPU what the step will launch on a GPU.

Both trainers are built from the plans as ``memory_breakdown.py`` builds them (random batches, no data read) and run
one step each, the M3HL step as the trainer runs it on CUDA: the pseudo-label cleanup with the torch propagation
(on the CPU the trainer would use scipy). The teacher is untrained, so its pseudo-labels are the noisy maps of a
run's first steps (the costliest for the cleanup; ``lcc_cost.py`` has trained-teacher maps). Each phase is the code
that one package function or one nnU-Net call runs, named as the trainer composes them.
"""
import argparse
import json
import os
import sys
import tempfile
from contextlib import contextmanager

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from memory_breakdown import add_plans_arguments, load_plans_for_trainers, make_trainer, random_batch  # noqa: E402
from operator_count import OperationCounter  # noqa: E402

from nnunetv2_m3hl.overlap import PseudoLabelCleanup, Ready  # noqa: E402
from nnunetv2_m3hl.teacher import largest_component_per_class  # noqa: E402


@contextmanager
def patched(target, attribute: str, counter: OperationCounter, phase: str):
    original = getattr(target, attribute)
    setattr(target, attribute, counter.labelled(phase, original))
    try:
        yield
    finally:
        setattr(target, attribute, original)


class TorchCleanup(PseudoLabelCleanup):
    """The CUDA path's cleanup (torch propagation), run where it is called."""

    def __init__(self):
        super().__init__('sync')

    def start(self, hard: torch.Tensor, num_classes: int) -> Ready:
        return Ready(largest_component_per_class(hard, num_classes, backend='torch'))


def count_step(trainer, batch) -> dict:
    """Operations of one training step by phase."""
    import nnunetv2_m3hl.trainers.m3hl_trainer as m3hl_module
    x_l, target, x_u = batch
    counter = OperationCounter()
    for group in trainer.optimizer.param_groups:
        group['foreach'] = True  # SGD's default on CUDA (one launch per group of tensors); on the CPU it loops
    common = [(torch.Tensor, 'backward', 'backward'), (torch.nn.utils, 'clip_grad_norm_', 'gradient clipping'),
              (trainer.optimizer, 'step', 'optimizer step'), (trainer.optimizer, 'zero_grad', 'zero_grad')]
    if hasattr(trainer, 'teacher'):
        cleanup = trainer.pseudo_label_cleanup = TorchCleanup()
        cleanup.start = counter.labelled('pseudo-label cleanup', cleanup.start)
        trainer.teacher.forward = counter.labelled('teacher forward', trainer.teacher.forward)
        trainer.network.forward = counter.labelled('student forward', trainer.network.forward)
        trainer.make_masks = counter.labelled('masks', trainer.make_masks)
        trainer.mix_loss.forward = counter.labelled('mix loss', trainer.mix_loss.forward)
        trainer.step_guard.all_ranks_finite = counter.labelled('finiteness check', trainer.step_guard.all_ranks_finite)
        module_phases = [('hard_pseudo_labels', 'argmax pseudo-labels'), ('mix_images', 'mixing'),
                         ('mix_targets', 'mixing'), ('downsample_for_deep_supervision', 'deep-supervision targets'),
                         ('high_level_loss', 'L_high'), ('low_level_loss', 'L_low'), ('ema_update', 'EMA update')]
        patches = [(m3hl_module, name, phase) for name, phase in module_phases] + common
        run = lambda: trainer.m3hl_step(x_l, target, x_u)  # noqa: E731
    else:
        trainer.network.forward = counter.labelled('student forward', trainer.network.forward)
        trainer.loss.forward = counter.labelled("nnU-Net's loss", trainer.loss.forward)
        patches = common
        run = lambda: trainer.train_step({'data': x_l, 'target': target})  # noqa: E731
    with _all_patched(patches, counter), counter:
        run()
    return dict(counter.counts)


@contextmanager
def _all_patched(patches, counter):
    if not patches:
        yield
        return
    (target, attribute, phase), rest = patches[0], patches[1:]
    with patched(target, attribute, counter, phase), _all_patched(rest, counter):
        yield


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plans_arguments(p)
    p.add_argument('-o', default=None)
    args = p.parse_args()
    device = torch.device('cpu')
    with tempfile.TemporaryDirectory() as scratch:
        plans, dataset_json, patch, batch_size = load_plans_for_trainers(args, scratch)
        rows = {}
        for name in ('nnUNetTrainer', 'M3HLTrainer'):
            torch.manual_seed(0)
            trainer = make_trainer(name, plans, args.configuration, dataset_json, device)
            batch = random_batch(trainer, batch_size, patch, torch.Generator().manual_seed(0))
            rows[name] = count_step(trainer, batch)
            del trainer
    totals = {name: sum(row.values()) for name, row in rows.items()}
    result = {'plans': args.plans, 'configuration': args.configuration, 'patch_size': list(patch),
              'batch_size': batch_size, 'operations': rows, 'total_operations': totals,
              'ratio': totals['M3HLTrainer'] / totals['nnUNetTrainer']}
    print(f"{args.configuration}, patch {'x'.join(map(str, patch))}, batch {batch_size}: operations per step")
    print('| phase | nnUNetTrainer | M3HLTrainer |\n|---|---|---|')
    for phase in sorted(set(rows['nnUNetTrainer']) | set(rows['M3HLTrainer']),
                        key=lambda k: -rows['M3HLTrainer'].get(k, 0)):
        print(f"| {phase} | {rows['nnUNetTrainer'].get(phase, '')} | {rows['M3HLTrainer'].get(phase, '')} |")
    print(f"| total | {totals['nnUNetTrainer']} | {totals['M3HLTrainer']} |")
    print(f"ratio M3HL / nnU-Net: {result['ratio']:.2f}")
    if args.o:
        os.makedirs(os.path.dirname(os.path.abspath(args.o)), exist_ok=True)
        with open(args.o + '.tmp', 'w') as f:
            json.dump(result, f, indent=1)
        os.replace(args.o + '.tmp', args.o)


if __name__ == '__main__':
    main()
