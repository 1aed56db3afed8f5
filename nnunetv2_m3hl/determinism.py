"""Reproducible training runs: the same seed gives the same batches, augmentations and weights.

nnU-Net's loaders are not reproducible: its ``NonDetMultiThreadedAugmenter`` hands out batches in whichever
order its workers finish them, and the workers are not seeded. Here the loaders a trainer built are put behind
batchgenerators' ``MultiThreadedAugmenter`` with one seed per worker, which returns batches in a fixed
round-robin order. That augmenter seeds numpy in each worker but not torch, whose generator the workers inherit
identically from the parent; batchgeneratorsv2's transforms draw from torch, so every sample first seeds torch
from the worker's numpy stream. The training process itself is seeded by the caller (torch and numpy).
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


def seeded_augmenter(single_threaded: SingleThreadedAugmenter, num_processes: int, seed: int,
                     pin_memory: bool = False):
    """The loader behind ``single_threaded`` in ``num_processes`` seeded workers, in a fixed order (0: it stays in
    the main process, seeded through the process's own numpy generator)."""
    loader = single_threaded.data_loader
    if getattr(loader, 'transforms', None) is not None and not isinstance(loader.transforms, TorchSeededTransforms):
        loader.transforms = TorchSeededTransforms(loader.transforms)
    if num_processes == 0:
        return single_threaded
    return MultiThreadedAugmenter(loader, None, num_processes, num_cached_per_queue=2,
                                  seeds=[seed + i for i in range(num_processes)], pin_memory=pin_memory)


def make_loading_deterministic(trainer, seed: int) -> None:
    """Replace ``trainer.get_dataloaders`` (nnUNetTrainer or M3HLTrainer) by a reproducible version with the same
    worker budget (``nnUNet_n_proc_DA``), for the labeled, validation and unlabeled loaders."""
    build = trainer.get_dataloaders

    def get_dataloaders():
        n = get_allowed_n_proc_DA()
        # build nnU-Net's (and M3HL's) loaders in the main process, then put them behind seeded workers
        with n_proc_da_environment(0):
            train, val = build()
        pin = trainer.device.type == 'cuda'
        unlabeled = getattr(trainer, 'dataloader_unlabeled', None)
        n_labeled, n_unlabeled = n_proc_split(n) if unlabeled is not None else (n, 0)
        if unlabeled is not None:
            trainer.dataloader_unlabeled = seeded_augmenter(unlabeled, n_unlabeled, seed + 2000, pin)
        return (seeded_augmenter(train, n_labeled, seed, pin),
                seeded_augmenter(val, max(1, n // 2) if n else 0, seed + 1000, pin))
    trainer.get_dataloaders = get_dataloaders
