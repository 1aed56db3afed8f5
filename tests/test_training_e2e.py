"""End to end through the real console commands on tiny synthetic datasets (CPU)."""
import os

import numpy as np
import SimpleITK as sitk
import torch

from conftest import run_cli
from nnunetv2_m3hl.checkpointing import load_checkpoint_safely


def fold_folder(root, dataset, configuration, trainer='M3HLTrainer_test'):
    return root / 'results' / dataset / f'{trainer}__nnUNetPlans__{configuration}' / 'fold_0'


def assert_same_geometry(image_file, prediction_file):
    a, b = sitk.ReadImage(str(image_file)), sitk.ReadImage(str(prediction_file))
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing())
    assert np.allclose(a.GetOrigin(), b.GetOrigin())
    assert np.allclose(a.GetDirection(), b.GetDirection())


def test_2d_train_resume_validate_predict(nnunet_env, planned_2d, tmp_path):
    env = dict(os.environ, M3HL_TEST_EPOCHS='1')
    run_cli(['nnUNetv2_train', 901, '2d', 0, '-tr', 'M3HLTrainer_test', '-device', 'cpu'], env=env)
    out = fold_folder(nnunet_env, planned_2d, '2d')
    first = load_checkpoint_safely(str(out / 'checkpoint_final.pth'))
    assert first['current_epoch'] == 1
    assert set(first['m3hl']['teacher_weights']) == set(first['network_weights'])
    assert first['m3hl']['settings']['ema_decay'] == 0.99
    # the teacher moved away from the student by EMA, but stays close
    key = next(k for k in first['network_weights'] if k.endswith('weight'))
    assert not torch.equal(first['m3hl']['teacher_weights'][key], first['network_weights'][key])
    assert (out / 'checkpoint_final_teacher.pth').is_file()
    assert (out / 'progress.png').is_file() and (out / 'progress_m3hl.png').is_file()
    assert (out / 'mixed_sample_epoch_0000.png').is_file()
    log = open(sorted(out.glob('training_log_*.txt'))[-1]).read()
    assert 'L_high' in log and 'pseudo-label fg share' in log
    assert (nnunet_env / 'preprocessed' / planned_2d / 'nnUNetPlans_2d_unlabeled' / 'm3hl_manifest.json').is_file()

    # --c continues from the saved epoch with the saved teacher
    env['M3HL_TEST_EPOCHS'] = '2'
    run_cli(['nnUNetv2_train', 901, '2d', 0, '-tr', 'M3HLTrainer_test', '-device', 'cpu', '--c'], env=env)
    second = load_checkpoint_safely(str(out / 'checkpoint_final.pth'))
    assert second['current_epoch'] == 2
    assert len(second['logging']['mix_losses']) == 2
    resumed_log = open(sorted(out.glob('training_log_*.txt'))[-1]).read()
    assert 'Epoch 1' in resumed_log and 'Epoch 0\n' not in resumed_log

    run_cli(['nnUNetv2_train', 901, '2d', 0, '-tr', 'M3HLTrainer_test', '-device', 'cpu', '--val'], env=env)
    assert (out / 'validation' / 'summary.json').is_file()

    images = nnunet_env / 'raw' / planned_2d / 'imagesTs'
    for checkpoint, folder in (('checkpoint_final.pth', 'pred'), ('checkpoint_final_teacher.pth', 'pred_teacher')):
        run_cli(['nnUNetv2_predict', '-i', images, '-o', tmp_path / folder, '-d', 901, '-c', '2d', '-f', 0,
                 '-tr', 'M3HLTrainer_test', '-chk', checkpoint, '-device', 'cpu', '-npp', 1, '-nps', 1])
        for image in sorted(images.iterdir()):
            prediction = tmp_path / folder / image.name.replace('_0000.nii.gz', '.nii.gz')
            assert_same_geometry(image, prediction)
            assert set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(prediction))))) <= {0, 1, 2, 3}


def test_3d_fullres_train_and_predict(nnunet_env, planned_3d, tmp_path):
    run_cli(['nnUNetv2_train', 902, '3d_fullres', 0, '-tr', 'M3HLTrainer_test', '-device', 'cpu'],
            env=dict(os.environ, M3HL_TEST_EPOCHS='1'))
    out = fold_folder(nnunet_env, planned_3d, '3d_fullres')
    assert 'm3hl' in load_checkpoint_safely(str(out / 'checkpoint_final.pth'))
    images = nnunet_env / 'raw' / planned_3d / 'imagesTs'
    run_cli(['nnUNetv2_predict', '-i', images, '-o', tmp_path / 'pred', '-d', 902, '-c', '3d_fullres', '-f', 0,
             '-tr', 'M3HLTrainer_test', '-device', 'cpu', '-npp', 1, '-nps', 1])
    for image in images.iterdir():
        assert_same_geometry(image, tmp_path / 'pred' / image.name.replace('_0000.nii.gz', '.nii.gz'))


def test_warmup_until_ready_ends_when_the_student_is_ready(nnunet_env, planned_2d):
    run_cli(['nnUNetv2_train', 901, '2d', 0, '-tr', 'M3HLTrainer_test_readyWarmup', '-device', 'cpu'])
    out = fold_folder(nnunet_env, planned_2d, '2d', 'M3HLTrainer_test_readyWarmup')
    final = load_checkpoint_safely(str(out / 'checkpoint_final.pth'))
    assert final['m3hl']['warmup_ended_at'] == 1  # ready after one epoch, before the cap of two
    mix = np.array(final['logging']['mix_losses'], dtype=float)
    assert np.isnan(mix[0]) and np.isfinite(mix[1:]).all()
    log = open(sorted(out.glob('training_log_*.txt'))[-1]).read()
    assert 'the student is ready after 1 supervised epochs' in log


def test_a_student_that_never_gets_ready_trains_as_nnunet_and_its_teacher_is_the_student(nnunet_env, planned_2d):
    run_cli(['nnUNetv2_train', 901, '2d', 0, '-tr', 'M3HLTrainer_test_neverReady', '-device', 'cpu'])
    out = fold_folder(nnunet_env, planned_2d, '2d', 'M3HLTrainer_test_neverReady')
    final = load_checkpoint_safely(str(out / 'checkpoint_final.pth'))
    assert final['m3hl']['warmup_ended_at'] is None
    assert np.isnan(np.array(final['logging']['mix_losses'], dtype=float)).all()
    teacher = load_checkpoint_safely(str(out / 'checkpoint_final_teacher.pth'))['network_weights']
    assert all(torch.equal(teacher[k], v) for k, v in final['network_weights'].items())
    assert 'no mixing step ran' in open(sorted(out.glob('training_log_*.txt'))[-1]).read()
