"""The overlapped pseudo-label cleanup keeps exactly the voxels of the synchronous one."""
import numpy as np
import pytest
import torch

from nnunetv2_m3hl.overlap import CLEANUP_MODES, PseudoLabelCleanup
from nnunetv2_m3hl.teacher import largest_component_per_class


def noisy_labels(shape, seed):
    g = torch.Generator().manual_seed(seed)
    # blobs of each class plus scattered islands, so that every class has several components
    labels = torch.randint(0, 4, shape, generator=g)
    smooth = torch.nn.functional.avg_pool2d if len(shape) == 3 else torch.nn.functional.avg_pool3d
    blurred = smooth(labels.float().unsqueeze(1), 3, stride=1, padding=1).squeeze(1)
    return blurred.round().long()


@pytest.mark.parametrize('mode', CLEANUP_MODES)
@pytest.mark.parametrize('shape', [(4, 40, 36), (2, 12, 20, 18)])
def test_every_mode_keeps_the_same_voxels(mode, shape):
    cleanup = PseudoLabelCleanup(mode)
    try:
        for seed in range(3):
            labels = noisy_labels(shape, seed)
            # the torch propagation: what the GPU runs in 'sync' mode
            expected = largest_component_per_class(labels, 4, backend='torch')
            started = cleanup.start(labels, 4)
            result = started.result()
            assert result.dtype == labels.dtype and torch.equal(result, expected)
            assert not torch.equal(expected, labels)  # the cleanup did remove something
    finally:
        cleanup.close()


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match='cleanup mode'):
        PseudoLabelCleanup('gpu')


def test_trainer_step_is_the_same_with_the_cleanup_overlapped(nnunet_env, planned_2d):
    from test_trainer_step import batches, make_trainer
    losses, labeled, unlabeled = {}, None, None
    for mode in ('sync', 'host_thread', 'teacher_side_stream'):
        trainer = make_trainer(planned_2d)  # the same initial weights every time
        trainer.pseudo_label_cleanup = PseudoLabelCleanup(mode)
        if labeled is None:
            labeled, unlabeled = batches(trainer)
        torch.manual_seed(7)
        losses[mode] = [float(trainer.m3hl_step(labeled['data'], labeled['target'], unlabeled)['loss'])
                        for _ in range(2)]
        trainer.pseudo_label_cleanup.close()
    assert np.array_equal(losses['sync'], losses['host_thread'])
    assert np.array_equal(losses['sync'], losses['teacher_side_stream'])


@pytest.mark.parametrize('mode', CLEANUP_MODES)
def test_every_mode_hands_back_the_teacher_pass(mode):
    labels = noisy_labels((3, 24, 20), 0)
    high, low = torch.randn(3, 8, 3, 2), torch.randn(3, 4, 24, 20)
    cleanup = PseudoLabelCleanup(mode)
    try:
        outputs = cleanup.run_teacher(lambda: (cleanup.start(labels, 4), high, low), labels.device)
        pseudo, got_high, got_low = outputs.result()
        assert torch.equal(pseudo, largest_component_per_class(labels, 4, backend='torch'))
        assert got_high is high and got_low is low
    finally:
        cleanup.close()
