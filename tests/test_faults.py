"""Faults: kills, crashes during writes, bad unlabeled data, degenerate training inputs."""
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import BIN
from nnunetv2_m3hl import checkpointing
from nnunetv2_m3hl.checkpointing import load_checkpoint_safely, save_atomically
from nnunetv2_m3hl.unlabeled import (MANIFEST_NAME, UnlabeledDataError, preprocess_unlabeled,
                                     unlabeled_identifiers)


def wait_for(predicate, timeout, what):
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_sigkill_mid_epoch_then_resume(nnunet_env, planned_2d):
    out = nnunet_env / 'results' / planned_2d / 'M3HLTrainer_test__nnUNetPlans__2d' / 'fold_0'
    import shutil
    shutil.rmtree(out.parent, ignore_errors=True)
    env = dict(os.environ, M3HL_TEST_EPOCHS='4')
    cmd = [os.path.join(BIN, 'nnUNetv2_train'), '901', '2d', '0', '-tr', 'M3HLTrainer_test', '-device', 'cpu']
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        latest = out / 'checkpoint_latest.pth'
        wait_for(latest.is_file, 600, 'the first checkpoint')
        time.sleep(1.0)  # well inside the next epoch
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / 'checkpoint_final.pth').exists(), 'the run finished before it was killed'
    saved = load_checkpoint_safely(str(latest))
    epoch = saved['current_epoch']
    assert epoch in (1, 2, 3)  # killed after a saved epoch, before the last one

    # the restored state equals the saved one bit for bit
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args('901', '2d', 0, 'M3HLTrainer_test', continue_training=True,
                                    device=torch.device('cpu'))
    trainer.load_checkpoint(str(latest))
    assert trainer.current_epoch == epoch
    for k, v in trainer.network.state_dict().items():
        assert torch.equal(v, saved['network_weights'][k]), k
    for k, v in trainer.teacher.state_dict().items():
        assert torch.equal(v, saved['m3hl']['teacher_weights'][k]), k
    opt = trainer.optimizer.state_dict()
    for i, state in saved['optimizer_state']['state'].items():
        assert torch.equal(opt['state'][i]['momentum_buffer'], state['momentum_buffer'])
    # (NaN-aware: a warm-up epoch logs no mix loss)
    np.testing.assert_array_equal(trainer.logger.get_value('mix_losses', None), saved['logging']['mix_losses'])

    subprocess.run(cmd + ['--c'], env=env, check=True, capture_output=True)
    final = load_checkpoint_safely(str(out / 'checkpoint_final.pth'))
    assert final['current_epoch'] == 4 and len(final['logging']['train_losses']) == 4
    assert final['logging']['train_losses'][:epoch] == saved['logging']['train_losses'][:epoch]


def test_crash_during_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = str(tmp_path / 'checkpoint_latest.pth')
    save_atomically({'w': torch.ones(3), 'epoch': 1}, path)

    def crashing_save(obj, f):
        f.write(b'partial bytes')
        raise OSError('No space left on device')

    monkeypatch.setattr(checkpointing.torch, 'save', crashing_save)
    with pytest.raises(OSError, match='No space'):
        save_atomically({'w': torch.zeros(3), 'epoch': 2}, path)
    monkeypatch.undo()
    restored = load_checkpoint_safely(path)
    assert restored['epoch'] == 1 and torch.equal(restored['w'], torch.ones(3))
    assert os.listdir(tmp_path) == ['checkpoint_latest.pth']


def test_checkpoints_are_read_without_running_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ('echo pwned',))
    path = str(tmp_path / 'evil.pth')
    torch.save({'network_weights': {}, 'x': Payload()}, path)
    with pytest.raises(Exception, match='[Ww]eights only|Unsupported global'):
        load_checkpoint_safely(path)


def test_preprocessing_killed_midway_resumes(nnunet_env, planned_2d):
    out = nnunet_env / 'preprocessed' / planned_2d / 'nnUNetPlans_2d_unlabeled'
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    cmd = [os.path.join(BIN, 'nnUNetv2_m3hl_preprocess_unlabeled'), '-d', '901', '-c', '2d', '-np', '1']
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def some_done():
            try:
                return len(json.load(open(out / MANIFEST_NAME))['cases']) >= 1
            except (OSError, ValueError):
                return False
        wait_for(some_done, 300, 'a first preprocessed case')
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    manifest = json.load(open(out / MANIFEST_NAME))
    # every listed case is complete and readable
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    for case in manifest['cases']:
        data, seg, _, props = nnUNetDatasetBlosc2(str(out), [case]).load_case(case)
        assert np.isfinite(np.asarray(data)).all() and 'class_locations' in props
    preprocess_unlabeled(901, '2d', num_processes=1, verbose=False)
    assert len(unlabeled_identifiers(str(out))) == 5
    assert not any(f.startswith('.m3hl-tmp') for f in os.listdir(out))


def test_image_of_other_dimensionality_is_refused(nnunet_env, planned_2d):
    raw = nnunet_env / 'raw' / planned_2d / 'imagesUnlabeledTr'
    bad = raw / 'flat_0000.nii.gz'
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(64, 64).astype(np.float32)), str(bad))  # a 2D NIfTI
    try:
        with pytest.raises(UnlabeledDataError, match='flat_0000.nii.gz: a 2D image.*3D'):
            preprocess_unlabeled(901, '2d', num_processes=1, verbose=False)
        out = nnunet_env / 'preprocessed' / planned_2d / 'nnUNetPlans_2d_unlabeled'
        assert not any('flat' in f for f in os.listdir(out))
    finally:
        bad.unlink()


def test_cli_reports_bad_data_without_traceback(nnunet_env, planned_2d):
    raw = nnunet_env / 'raw' / planned_2d / 'imagesUnlabeledTr'
    bad = raw / 'lab_000_0000.nii.gz'  # clashes with a labeled case
    bad.write_bytes((raw / 'unl_000_0000.nii.gz').read_bytes())
    try:
        proc = subprocess.run([os.path.join(BIN, 'nnUNetv2_m3hl_preprocess_unlabeled'), '-d', '901', '-c', '2d'],
                              capture_output=True, text=True)
        assert proc.returncode == 2
        assert 'lab_000_0000.nii.gz' in proc.stderr and 'also a labeled case' in proc.stderr
        assert 'Traceback' not in proc.stderr
    finally:
        bad.unlink()


def test_all_background_teacher_and_more_unlabeled_than_scans(nnunet_env, planned_2d):
    from test_trainer_step import batches, make_trainer
    trainer = make_trainer(planned_2d)
    trainer.unlabeled_batch_size = 8  # more patches per step than the 5 unlabeled scans
    labeled, unlabeled = batches(trainer)
    assert unlabeled.shape[0] == 8
    seg = trainer.teacher.decoder.seg_layers[-1]
    with torch.no_grad():  # a teacher that predicts background everywhere
        seg.weight.zero_()
        seg.bias.copy_(torch.tensor([10.0, -10.0, -10.0, -10.0]))
    out = trainer.m3hl_step(labeled['data'], labeled['target'], unlabeled)
    assert out['pseudo_fg'] == 0 and np.isfinite(out['loss'])
