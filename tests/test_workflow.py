"""nnU-Net's workflow beyond one fold, on M3HL models: processes started together on one dataset, cross-validation
folds trained at once, nnU-Net's post-training commands, and a model shared with a plain nnU-Net install."""
import filecmp
import json
import os
import pickle
import shutil
import subprocess
import sys

import blosc2
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import BIN, ONE_PROCESS, run_cli
from dataset_conversion.synthetic import make_synthetic_dataset
from nnunetv2_m3hl.unlabeled import MANIFEST_NAME

DATASET_ID = 903
NAME = f'Dataset{DATASET_ID:03d}_M3HLPhantom'
# a Python start-up that refuses this package, as on a machine where only nnU-Net is installed
HIDE_PACKAGE = '''
import sys


class RefuseTheM3HLPackage:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('nnunetv2_m3hl', 'dataset_conversion'):
            raise ModuleNotFoundError(f"No module named {name!r} (this environment has plain nnU-Net only)")
        return None


sys.meta_path.insert(0, RefuseTheM3HLPackage())
'''


def start(args, env=None):
    return subprocess.Popen([os.path.join(BIN, args[0])] + [str(a) for a in args[1:]], env=env or os.environ.copy(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(processes, timeout=900):
    outputs = []
    for p in processes:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out[-4000:]
        outputs.append(out)
    return outputs


@pytest.fixture(scope='module')
def two_fold_dataset(nnunet_env):
    """A tiny 2D dataset with two cross-validation folds; its unlabeled scans are not preprocessed yet."""
    make_synthetic_dataset(str(nnunet_env / 'raw'), DATASET_ID, n_labeled=4, n_unlabeled=8, n_test=2,
                           shape=(64, 64), seed=3)
    run_cli(['nnUNetv2_plan_and_preprocess', '-d', DATASET_ID, '-c', '2d', *ONE_PROCESS])
    splits = [{'train': ['lab_000', 'lab_001', 'lab_002'], 'val': ['lab_003']},
              {'train': ['lab_001', 'lab_002', 'lab_003'], 'val': ['lab_000']}]
    (nnunet_env / 'preprocessed' / NAME / 'splits_final.json').write_text(json.dumps(splits))
    return nnunet_env


def unlabeled_folder(root):
    return root / 'preprocessed' / NAME / 'nnUNetPlans_2d_unlabeled'


def case_contents(folder):
    """Every preprocessed case as arrays and properties, and the manifest."""
    cases = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.endswith('.b2nd'):
            cases[name] = blosc2.open(path, mode='r')[:]
        elif name.endswith('.pkl'):
            with open(path, 'rb') as f:
                cases[name] = pickle.load(f)
    return cases, json.load(open(os.path.join(folder, MANIFEST_NAME)))


def test_preprocessings_started_together_give_a_lone_process_output(two_fold_dataset, tmp_path):
    folder = unlabeled_folder(two_fold_dataset)
    shutil.rmtree(folder, ignore_errors=True)
    run_cli(['nnUNetv2_m3hl_preprocess_unlabeled', '-d', DATASET_ID, '-c', '2d', '-np', 1])
    lone = tmp_path / 'lone'
    shutil.copytree(folder, lone)
    shutil.rmtree(folder)

    outputs = finish([start(['nnUNetv2_m3hl_preprocess_unlabeled', '-d', DATASET_ID, '-c', '2d', '-np', n])
                      for n in (1, 2, 1)])
    assert any('waiting for it to finish' in out for out in outputs)
    assert not [n for n in os.listdir(folder) if n.startswith('.m3hl-tmp-')]
    together, manifest = case_contents(folder)
    alone, lone_manifest = case_contents(lone)
    assert manifest == lone_manifest and len(manifest['cases']) == 8
    assert sorted(together) == sorted(alone)
    for name, value in alone.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(together[name], value, err_msg=name)
        else:
            assert together[name] == value, name


def test_a_running_training_keeps_its_scans_while_another_process_adds_one(two_fold_dataset):
    from nnunetv2_m3hl.unlabeled import UnlabeledDataLoader, unlabeled_identifiers
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    folder = unlabeled_folder(two_fold_dataset)
    run_cli(['nnUNetv2_m3hl_preprocess_unlabeled', '-d', DATASET_ID, '-c', '2d'])
    plans = PlansManager(str(two_fold_dataset / 'preprocessed' / NAME / 'nnUNetPlans.json'))
    dataset_json = json.load(open(two_fold_dataset / 'preprocessed' / NAME / 'dataset.json'))
    loader = UnlabeledDataLoader(str(folder), 2, (64, 64), (64, 64), plans.get_label_manager(dataset_json))
    before = unlabeled_identifiers(str(folder))
    source = two_fold_dataset / 'raw' / NAME / 'imagesUnlabeledTr'
    added = source / 'unl_new_0000.nii.gz'
    shutil.copy(source / 'unl_000_0000.nii.gz', added)
    try:
        run_cli(['nnUNetv2_m3hl_preprocess_unlabeled', '-d', DATASET_ID, '-c', '2d'])
        assert unlabeled_identifiers(str(folder)) == sorted(before + ['unl_new'])
        for _ in range(4):  # the loader built before still reads its own cases
            assert next(loader)['data'].shape[0] == 2
    finally:
        added.unlink()
        run_cli(['nnUNetv2_m3hl_preprocess_unlabeled', '-d', DATASET_ID, '-c', '2d'])
    assert unlabeled_identifiers(str(folder)) == before


def train_both_folds(trainer):
    """Both folds started at once, as one process per GPU would be; validation probabilities kept (--npz)."""
    return finish([start(['nnUNetv2_train', DATASET_ID, '2d', fold, '-tr', trainer, '-device', 'cpu', '--npz'])
                   for fold in (0, 1)])


@pytest.fixture(scope='module')
def trained_folds(two_fold_dataset):
    shutil.rmtree(unlabeled_folder(two_fold_dataset), ignore_errors=True)
    train_both_folds('M3HLTrainer_test')
    train_both_folds('nnUNetTrainer_test')
    return two_fold_dataset


def model_folder(root, trainer):
    return root / 'results' / NAME / f'{trainer}__nnUNetPlans__2d'


def test_two_folds_started_together_both_finish(trained_folds):
    for fold in (0, 1):
        out = model_folder(trained_folds, 'M3HLTrainer_test') / f'fold_{fold}'
        assert (out / 'checkpoint_final.pth').is_file() and (out / 'checkpoint_final_teacher.pth').is_file()
        assert (out / 'validation' / 'summary.json').is_file()
    folder = unlabeled_folder(trained_folds)
    assert len(json.load(open(folder / MANIFEST_NAME))['cases']) == 8
    assert not [n for n in os.listdir(folder) if n.startswith('.m3hl-tmp-')]


def test_best_configuration_ensemble_and_postprocessing_on_m3hl_folds(trained_folds, tmp_path):
    raw = trained_folds / 'raw' / NAME
    # M3HL against the supervised baseline in one call: each alone and their ensemble are ranked
    run_cli(['nnUNetv2_find_best_configuration', DATASET_ID, '-c', '2d', '-tr', 'M3HLTrainer_test',
             'nnUNetTrainer_test', '-f', 0, 1, '-np', 1])
    info = json.load(open(trained_folds / 'results' / NAME / 'inference_information.json'))
    ranked = set(info['all_results'])
    assert any('M3HLTrainer_test' in k and 'nnUNetTrainer_test' in k for k in ranked)  # the ensemble
    assert any(k.startswith('nnUNetTrainer_test') for k in ranked)
    assert any(k.startswith('M3HLTrainer_test') for k in ranked)

    predictions = {}
    for trainer in ('M3HLTrainer_test', 'nnUNetTrainer_test'):
        predictions[trainer] = tmp_path / trainer
        run_cli(['nnUNetv2_predict', '-i', raw / 'imagesTs', '-o', predictions[trainer], '-d', DATASET_ID, '-c', '2d',
                 '-tr', trainer, '-f', 0, 1, '-device', 'cpu', '--save_probabilities', '-npp', 1, '-nps', 1])
    ensembled = tmp_path / 'ensemble'
    run_cli(['nnUNetv2_ensemble', '-i', *predictions.values(), '-o', ensembled, '-np', 1])
    cases = sorted(os.listdir(raw / 'imagesTs'))
    expected = sorted(c.replace('_0000.nii.gz', '.nii.gz') for c in cases)
    assert sorted(f for f in os.listdir(ensembled) if f.endswith('.nii.gz')) == expected

    best = info['best_model_or_ensemble']
    postprocessed = tmp_path / 'postprocessed'
    run_cli(['nnUNetv2_apply_postprocessing', '-i', ensembled, '-o', postprocessed, '-pp_pkl_file',
             best['postprocessing_file'], '-plans_json', best['some_plans_file'], '-np', 1])
    assert sorted(f for f in os.listdir(postprocessed) if f.endswith('.nii.gz')) == expected


def test_an_exported_m3hl_model_predicts_identically_under_plain_nnunet(trained_folds, tmp_path):
    raw = trained_folds / 'raw' / NAME
    archive = tmp_path / 'm3hl_model.zip'
    run_cli(['nnUNetv2_export_model_to_zip', '-d', DATASET_ID, '-o', archive, '-c', '2d', '-tr', 'M3HLTrainer_test',
             '-f', 0, 1, '-chk', 'checkpoint_final.pth', 'checkpoint_final_teacher.pth'])

    hidden = tmp_path / 'plain_nnunet_site'
    hidden.mkdir()
    (hidden / 'sitecustomize.py').write_text(HIDE_PACKAGE)
    plain = {k: v for k, v in os.environ.items() if k != 'nnUNet_extTrainer'}
    plain.update(PYTHONPATH=str(hidden), nnUNet_results=str(tmp_path / 'colleague_results'))
    refused = subprocess.run([sys.executable, '-c', 'import nnunetv2_m3hl'], env=plain, capture_output=True)
    assert refused.returncode != 0 and b'plain nnU-Net only' in refused.stderr
    run_cli(['nnUNetv2_install_pretrained_model_from_zip', archive], env=plain)

    for checkpoint in ('checkpoint_final.pth', 'checkpoint_final_teacher.pth'):
        outputs = {}
        for who, env in (('with the package', os.environ.copy()), ('plain nnU-Net', plain)):
            outputs[who] = tmp_path / f'{who}_{checkpoint}'.replace(' ', '_')
            run_cli(['nnUNetv2_predict', '-i', raw / 'imagesTs', '-o', outputs[who], '-d', DATASET_ID, '-c', '2d',
                     '-tr', 'M3HLTrainer_test', '-f', 0, 1, '-chk', checkpoint, '-device', 'cpu', '-npp', 1,
                     '-nps', 1], env=env)
        files = sorted(f for f in os.listdir(outputs['with the package']) if f.endswith('.nii.gz'))
        assert len(files) == 2
        for f in files:
            a = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs['with the package'] / f)))
            b = sitk.GetArrayFromImage(sitk.ReadImage(str(outputs['plain nnU-Net'] / f)))
            np.testing.assert_array_equal(a, b, err_msg=f'{checkpoint}: {f}')
            assert filecmp.cmp(outputs['with the package'] / f, outputs['plain nnU-Net'] / f, shallow=False)


def test_resume_and_validation_keep_working_with_the_package(trained_folds):
    fold = model_folder(trained_folds, 'M3HLTrainer_test') / 'fold_0'
    summary = fold / 'validation' / 'summary.json'
    before = json.load(open(summary))['foreground_mean']
    summary.unlink()
    run_cli(['nnUNetv2_train', DATASET_ID, '2d', 0, '-tr', 'M3HLTrainer_test', '-device', 'cpu', '--val', '--npz'])
    assert json.load(open(summary))['foreground_mean'] == before
    # --c on a finished fold: nnU-Net loads the final checkpoint (the stored inference name changes nothing)
    run_cli(['nnUNetv2_train', DATASET_ID, '2d', 0, '-tr', 'M3HLTrainer_test', '-device', 'cpu', '--c'])
