"""Reproducible training runs: the same seed gives the same batches, augmentations and weights.

nnU-Net's loaders are not reproducible: its ``NonDetMultiThreadedAugmenter`` hands out batches in whichever
order its workers finish them, and the workers are not seeded. Here the loaders a trainer built are put behind
batchgenerators' ``MultiThreadedAugmenter`` with one seed per worker, which returns batches in a fixed
round-robin order. That augmenter seeds numpy in each worker but not torch, whose generator the workers inherit
identically from the parent; batchgeneratorsv2's transforms draw from torch, so every sample first seeds torch
from the worker's numpy stream. The training process itself is seeded by the caller (torch and numpy).

A run that is stopped and resumed with ``--c`` gives the same weights as one that was not: the batches of epoch
``e`` depend only on the seed and ``e`` (every batch seeds its worker from its index in the run, and a loader built
at a resumed epoch starts at that epoch's first batch), the training process is reseeded at every epoch start, and
validation uses the same fixed batches in every epoch.
"""
import os
from typing import Callable

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from nnunetv2_m3hl.unlabeled import n_proc_da_environment, n_proc_split


class TorchSeededTransforms:
    """Calls ``transforms`` after seeding torch from numpy's global generator (seeded per worker). In a worker
    process torch is limited to one thread first, as nnU-Net's own augmenter does: torch's thread pool, inherited
    through fork from a parent that already used it, can deadlock."""

    def __init__(self, transforms: Callable):
        self.transforms = transforms
        self._configured_pid = os.getpid()

    def __call__(self, **data):
        if os.getpid() != self._configured_pid:
            torch.set_num_threads(1)
            self._configured_pid = os.getpid()
        torch.manual_seed(int(np.random.randint(0, 2 ** 31 - 1)))
        return self.transforms(**data)


def seed_everything(seed: int, deterministic_kernels: bool = True) -> None:
    """Seed the training process: torch (CPU and CUDA) and numpy; with ``deterministic_kernels`` also the
    deterministic kernels where torch has them (slower on GPUs: cuDNN's autotuning is off)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    if deterministic_kernels:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


class IndexSeededBatches:
    """Stands in for a loader's ``generate_train_batch``: seeds numpy (and so the per-sample torch seeds) from the
    batch's index in the run before each batch, so that a batch's content depends on the seed and its index only.
    With ``n`` workers, worker ``t`` makes batches ``start + t``, ``start + t + n``, ... and the augmenter hands them
    out round-robin, i.e. in index order."""

    def __init__(self, loader, generate: Callable, seed: int, start: int, n_workers: int):
        self.loader, self.generate = loader, generate
        self.seed, self.start, self.n_workers = seed, start, max(1, n_workers)
        self.made = 0

    def __call__(self):
        # the augmenter sets the worker's thread id on its copy of the loader
        index = self.start + getattr(self.loader, 'thread_id', 0) + self.made * self.n_workers
        self.made += 1
        np.random.seed(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])
        return self.generate()


def seed_batches_by_index(loader, seed: int, start: int, n_workers: int) -> None:
    """Make ``loader``'s batches depend on (seed, index in the run) only, starting at index ``start``."""
    generate = loader.generate_train_batch
    if isinstance(generate, IndexSeededBatches):
        generate = generate.generate
    loader.generate_train_batch = IndexSeededBatches(loader, generate, seed, start, n_workers)


class FixedBatches:
    """The first ``n`` batches of ``augmenter``, then the same ``n`` again and again: every epoch's validation sees
    the same patches, so that the per-epoch pseudo-Dice changes only with the model."""

    def __init__(self, augmenter, n: int):
        self.batches = [next(augmenter) for _ in range(n)]
        if hasattr(augmenter, '_finish'):
            augmenter._finish()
        self._next = 0

    def __iter__(self):
        return self

    def __next__(self):
        batch = self.batches[self._next % len(self.batches)]
        self._next += 1
        return batch

    def _finish(self):
        pass


def seeded_augmenter(single_threaded: SingleThreadedAugmenter, num_processes: int, seed: int,
                     pin_memory: bool = False, start: int = 0):
    """The loader behind ``single_threaded`` in ``num_processes`` seeded workers, in a fixed order (0: it stays in
    the main process), its batches seeded by their index in the run from ``start`` on."""
    loader = single_threaded.data_loader
    if getattr(loader, 'transforms', None) is not None and not isinstance(loader.transforms, TorchSeededTransforms):
        loader.transforms = TorchSeededTransforms(loader.transforms)
    seed_batches_by_index(loader, seed, start, num_processes)
    if num_processes == 0:
        return single_threaded
    return MultiThreadedAugmenter(loader, None, num_processes, num_cached_per_queue=2,
                                  seeds=[seed + i for i in range(num_processes)], pin_memory=pin_memory)


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0])


def make_loading_deterministic(trainer, seed: int, fixed_validation_batches: bool = True) -> None:
    """Replace ``trainer.get_dataloaders`` (nnUNetTrainer or M3HLTrainer) by a reproducible version with the same
    worker budget (``nnUNet_n_proc_DA``), for the labeled, validation and unlabeled loaders, and reseed the training
    process at every epoch start. With ``fixed_validation_batches`` every epoch validates on the same
    ``num_val_iterations_per_epoch`` batches."""
    build = trainer.get_dataloaders

    def get_dataloaders():
        n = get_allowed_n_proc_DA()
        # build nnU-Net's (and M3HL's) loaders in the main process, then put them behind seeded workers
        with n_proc_da_environment(0):
            train, val = build()
        pin = trainer.device.type == 'cuda'
        unlabeled = getattr(trainer, 'dataloader_unlabeled', None)
        n_labeled, n_unlabeled = n_proc_split(n) if unlabeled is not None else (n, 0)
        # a resumed run starts at the batches that the stopped one had not used yet
        labeled_start = trainer.current_epoch * trainer.num_iterations_per_epoch
        if unlabeled is not None:
            trainer.dataloader_unlabeled = seeded_augmenter(
                unlabeled, n_unlabeled, seed + 2000, pin, start=trainer.mixing_steps_before(trainer.current_epoch))
        validation = seeded_augmenter(val, max(1, n // 2) if n else 0, seed + 1000, pin)
        if fixed_validation_batches:
            validation = FixedBatches(validation, trainer.num_val_iterations_per_epoch)
        return seeded_augmenter(train, n_labeled, seed, pin, start=labeled_start), validation
    trainer.get_dataloaders = get_dataloaders

    start_epoch = trainer.on_train_epoch_start

    def on_train_epoch_start():
        seed_everything_at(epoch_seed(seed, trainer.current_epoch))
        start_epoch()
    trainer.on_train_epoch_start = on_train_epoch_start


def seed_everything_at(seed: int) -> None:
    """Reseed the training process's torch and numpy generators (at every epoch start: a resumed run draws the same
    masks as an unstopped one)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
