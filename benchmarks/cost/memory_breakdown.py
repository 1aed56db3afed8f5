"""Where the extra memory of an M3HL step goes, on any nnU-Net plans, without a GPU.

    python benchmarks/cost/memory_breakdown.py --plans .../nnUNetPlans.json -c 3d_fullres -o breakdown.json
    python benchmarks/cost/memory_breakdown.py --plans ... -c 2d --patch 128 112 --batch 4     # smaller, same layers

Builds ``nnUNetTrainer`` and ``M3HLTrainer`` from the plans (no data is read: the batches are random, the
labels random classes), runs one training step of each as the trainers do (float16 autocast on CUDA, float32
on the CPU; ``--cpu-bf16`` runs the CPU step under bfloat16 autocast, two bytes per activation as on a GPU,
but most CPUs emulate it slowly) and counts, with autograd's saved-tensor hooks, every
tensor the step keeps for its backward, grouped by what made it: the student's forward (the same network in
both trainers), nnU-Net's loss, and M3HL's mix loss and feature terms (including the teacher's features they
hold). Parameters are counted apart: weights, gradients and SGD momentum for both, plus the teacher's
weights for M3HL. The sum is the memory a step holds when its backward starts, which is where the step's
peak lies; it leaves out transient buffers (kernel workspaces, the allocator's slack), so on a GPU compare
it with ``step_cost.py``'s ``max_memory_allocated``.
"""
import argparse
import json
import os
import sys
import tempfile
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

MB = 2 ** 20


def in_phase(recorder, phase: str, fn: Callable) -> Callable:
    """``fn`` with ``recorder.phase`` set to ``phase`` while it runs (whatever the recorder counts is then
    attributed to that phase)."""
    def wrapped(*args, **kwargs):
        previous, recorder.phase = recorder.phase, phase
        try:
            return fn(*args, **kwargs)
        finally:
            recorder.phase = previous
    return wrapped


class SavedTensorLedger:
    """Bytes of the distinct storages that autograd saves for the backward, per labelled phase."""

    def __init__(self, excluded_storages=()):
        self.bytes = defaultdict(int)
        self._seen = {s.untyped_storage().data_ptr() for s in excluded_storages}
        self.phase = 'other'

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.bytes[self.phase] += storage.nbytes()
        return tensor

    @contextmanager
    def recording(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self


def autocast_like_training(device: torch.device, cpu_bf16: bool):
    """The trainers' own mixed precision: float16 autocast on CUDA, none on the CPU (unless asked for)."""
    if device.type == 'cuda':
        return torch.autocast('cuda', dtype=torch.float16)
    return torch.autocast('cpu', dtype=torch.bfloat16, enabled=cpu_bf16)


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def make_trainer(name: str, plans: dict, configuration: str, dataset_json: dict, device: torch.device):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2_m3hl.trainers.m3hl_trainer import M3HLTrainer
    # nnU-Net's own entry point adds this key before it builds a trainer
    trainer = {'nnUNetTrainer': nnUNetTrainer, 'M3HLTrainer': M3HLTrainer}[name](
        dict(plans, continue_training=False), configuration, 0, dataset_json, device)
    trainer.initialize()
    trainer.network.train()
    return trainer


def random_batch(trainer, batch_size: int, patch, generator: torch.Generator):
    from nnunetv2_m3hl.mixing import downsample_for_deep_supervision
    n_channels = len(trainer.dataset_json['channel_names'])
    n_classes = trainer.label_manager.num_segmentation_heads
    x_l = torch.randn((batch_size, n_channels, *patch), generator=generator)
    x_u = torch.randn((batch_size, n_channels, *patch), generator=generator)
    y = torch.randint(0, n_classes, (batch_size, 1, *patch), generator=generator).to(torch.int16)
    targets = [t for (t,) in downsample_for_deep_supervision([y], trainer._get_deep_supervision_scales())]
    return x_l, (targets if trainer.enable_deep_supervision else targets[0]), x_u


def account(trainer, batch, device: torch.device, cpu_bf16: bool) -> dict:
    """Saved bytes per phase of one training step, and the parameter-side bytes."""
    params = parameter_bytes(trainer.network)
    # weights, gradients, SGD momentum; M3HL also holds its teacher's weights
    result = {'weights_grads_momentum': 3 * params}
    ledger = SavedTensorLedger(excluded_storages=list(trainer.network.parameters()))
    trainer.network.forward = in_phase(ledger, 'student forward', trainer.network.forward)
    x_l, target, x_u = batch
    with ledger.recording(), autocast_like_training(device, cpu_bf16):
        if hasattr(trainer, 'teacher'):
            import nnunetv2_m3hl.trainers.m3hl_trainer as m3hl_module
            result['teacher_weights'] = parameter_bytes(trainer.teacher)
            trainer.mix_loss.forward = in_phase(ledger, 'mix loss', trainer.mix_loss.forward)
            originals = {name: getattr(m3hl_module, name) for name in ('high_level_loss', 'low_level_loss')}
            for name, fn in originals.items():
                setattr(m3hl_module, name, in_phase(ledger, name.replace('_level_loss', ' feature term'), fn))
            try:
                trainer.m3hl_step(x_l.to(device), [t.to(device) for t in target] if isinstance(target, list)
                                  else target.to(device), x_u.to(device))
            finally:
                for name, fn in originals.items():
                    setattr(m3hl_module, name, fn)
        else:
            trainer.loss.forward = in_phase(ledger, "nnU-Net's loss", trainer.loss.forward)
            trainer.train_step({'data': x_l, 'target': target})
    result.update(ledger.bytes)
    return result


def load_plans_for_trainers(args, scratch: str):
    """Plans, dataset.json, patch and batch size from ``args.plans`` / ``-c`` / ``--patch`` / ``--batch``, with a
    private nnU-Net environment in ``scratch`` in which trainers can be built without the dataset's data."""
    for var in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        os.environ[var] = scratch  # the trainers write their logs there, never into a real results folder
    os.environ.setdefault('nnUNet_compile', 'f')
    if not os.path.isfile(args.plans):
        sys.exit(f"{args.plans} not found: --plans takes a plans file such as "
                 f"$nnUNet_preprocessed/DatasetXXX_Name/nnUNetPlans.json")
    with open(args.plans) as f:
        plans = json.load(f)
    dataset_json_file = os.path.join(os.path.dirname(os.path.abspath(args.plans)), 'dataset.json')
    if not os.path.isfile(dataset_json_file):
        sys.exit(f"{dataset_json_file} not found: --plans must lie in the dataset's nnUNet_preprocessed folder, "
                 f"next to its dataset.json")
    with open(dataset_json_file) as f:
        dataset_json = json.load(f)
    if args.configuration not in plans['configurations']:
        sys.exit(f"{args.plans} has no configuration {args.configuration!r}: "
                 f"one of {sorted(plans['configurations'])}")
    configuration = plans['configurations'][args.configuration]
    # initialize() infers the dataset format from the preprocessed folder: an empty stand-in is enough
    data_identifier = configuration.get('data_identifier', f"{plans['plans_name']}_{args.configuration}")
    stand_in = os.path.join(scratch, plans['dataset_name'], data_identifier)
    os.makedirs(stand_in)
    open(os.path.join(stand_in, 'stand_in.b2nd'), 'w').close()
    patch = args.patch or configuration['patch_size']
    batch_size = args.batch or configuration['batch_size']
    if len(patch) != len(configuration['patch_size']):
        sys.exit(f"--patch needs {len(configuration['patch_size'])} sizes for {args.configuration}")
    return plans, dataset_json, patch, batch_size


def add_plans_arguments(p: argparse.ArgumentParser) -> None:
    """The options ``load_plans_for_trainers`` reads."""
    p.add_argument('--plans', required=True, help='an nnU-Net plans file; dataset.json is read from its folder')
    p.add_argument('-c', '--configuration', required=True)
    p.add_argument('--batch', type=int, default=None, help="default: the plans' batch size")
    p.add_argument('--patch', type=int, nargs='+', default=None, help="default: the plans' patch size")


def each_trainer(args, device: torch.device):
    """``nnUNetTrainer``, then ``M3HLTrainer``, built from the plans that ``args`` names (``add_plans_arguments``),
    from the same seed and each with the same random batch: yields (name, trainer, batch, patch, batch size)."""
    with tempfile.TemporaryDirectory() as scratch:
        plans, dataset_json, patch, batch_size = load_plans_for_trainers(args, scratch)
        for name in ('nnUNetTrainer', 'M3HLTrainer'):
            torch.manual_seed(0)
            trainer = make_trainer(name, plans, args.configuration, dataset_json, device)
            yield name, trainer, random_batch(trainer, batch_size, patch, torch.Generator().manual_seed(0)), \
                patch, batch_size
            del trainer


def write_result(path: str, result: dict) -> None:
    """``result`` as JSON at ``path``, written whole or not at all."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + '.tmp', 'w') as f:
        json.dump(result, f, indent=1)
    os.replace(path + '.tmp', path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plans_arguments(p)
    p.add_argument('--device', default='cpu')
    p.add_argument('--cpu-bf16', action='store_true', help='run the CPU step under bfloat16 autocast')
    p.add_argument('-o', default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    rows = {}
    for name, trainer, batch, patch, batch_size in each_trainer(args, device):
        rows[name] = account(trainer, batch, device, args.cpu_bf16)
    totals = {name: sum(row.values()) for name, row in rows.items()}
    result = {'plans': args.plans, 'configuration': args.configuration, 'patch_size': list(patch),
              'batch_size': batch_size, 'device': args.device,
              'autocast_dtype': 'float16' if device.type == 'cuda' else ('bfloat16' if args.cpu_bf16 else None),
              'bytes': rows, 'total_bytes': totals, 'ratio': totals['M3HLTrainer'] / totals['nnUNetTrainer']}
    print(f"{args.configuration}, patch {'x'.join(map(str, patch))}, batch {batch_size}, "
          f"autocast {result['autocast_dtype']}; MB held when the backward starts:")
    for name, row in rows.items():
        print(f"  {name}: " + ', '.join(f"{k} {v / MB:.0f}" for k, v in sorted(row.items())) +
              f"; total {totals[name] / MB:.0f}")
    print(f"  ratio M3HL / nnU-Net: {result['ratio']:.2f}")
    if args.o:
        write_result(args.o, result)


if __name__ == '__main__':
    main()
