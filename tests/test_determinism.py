"""Seeded loading: a batch depends on the seed and its index in the run only, whatever the worker count and
wherever a resumed run starts; validation batches are the same every epoch."""
import numpy as np
import torch
from batchgenerators.dataloading.data_loader import DataLoader
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter

from nnunetv2_m3hl.determinism import FixedBatches, epoch_seed, seeded_augmenter


class RandomBatches(DataLoader):
    """Batches of numpy and torch random numbers (as nnU-Net's loader draws crops and its transforms draw)."""

    def __init__(self):
        super().__init__(None, 2)
        self.transforms = lambda **data: dict(data, noise=torch.rand(2))

    def generate_train_batch(self):
        crop = np.random.rand(2)
        return {'data': np.concatenate([crop, self.transforms(image=crop)['noise'].numpy()])}


def take(n_workers: int, start: int, n: int, seed: int = 5):
    augmenter = seeded_augmenter(SingleThreadedAugmenter(RandomBatches(), None), n_workers, seed, start=start)
    batches = [next(augmenter)['data'] for _ in range(n)]
    if hasattr(augmenter, '_finish'):
        augmenter._finish()
    return np.stack(batches)


def test_batches_depend_on_their_index_only():
    whole = take(0, 0, 6)
    assert len({tuple(b) for b in whole}) == 6
    np.testing.assert_array_equal(take(0, 4, 2), whole[4:])  # a run resumed at batch 4
    np.testing.assert_array_equal(take(2, 0, 6), whole)  # two workers, the same batches in the same order
    np.testing.assert_array_equal(take(2, 3, 3), whole[3:])
    assert not np.array_equal(take(0, 0, 6, seed=6), whole)


def test_fixed_batches_repeat_the_first_ones():
    fixed = FixedBatches(seeded_augmenter(SingleThreadedAugmenter(RandomBatches(), None), 0, 1), 3)
    first = [next(fixed)['data'] for _ in range(3)]
    again = [next(fixed)['data'] for _ in range(3)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])


def test_epoch_seeds_differ_by_epoch_and_seed():
    seeds = {epoch_seed(s, e) for s in range(3) for e in range(50)}
    assert len(seeds) == 150
