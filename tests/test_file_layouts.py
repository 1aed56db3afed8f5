"""Every file layout nnU-Net reads, as unlabeled scans: one RGB PNG per case (nnU-Net's natural-image layout with
NaturalImage2DIO) and one file per channel (MRI sequences of a 3D scan). Discovery, the dataset check and the
trainer agree on what a case is; end to end, the RGB layout plans, trains M3HL and predicts (the multi-file 3D
layout does in tests/test_regions.py)."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import ONE_PROCESS, run_cli
from dataset_conversion.synthetic import make_synthetic_dataset
from nnunetv2_m3hl.unlabeled import UnlabeledDataError, check_unlabeled_dataset, discover_unlabeled_cases

RGB_ID = 904


def _rgb_raw(tmp_path, dataset_id=960):
    return make_synthetic_dataset(str(tmp_path), dataset_id, n_labeled=2, n_unlabeled=2, n_test=0, shape=(16, 16),
                                  layout='rgb_png')


def test_an_rgb_case_is_one_file_holding_three_channels(tmp_path):
    raw = _rgb_raw(tmp_path)
    dataset_json = json.load(open(os.path.join(raw, 'dataset.json')))
    assert len(dataset_json['channel_names']) == 3 and os.listdir(os.path.join(raw, 'imagesTr')) == \
        [f for f in os.listdir(os.path.join(raw, 'imagesTr')) if f.endswith('_0000.png')]
    cases = discover_unlabeled_cases(raw, dataset_json)
    assert [(c.identifier, [os.path.basename(f) for f in c.image_files]) for c in cases] == \
        [('unl_000', ['unl_000_0000.png']), ('unl_001', ['unl_001_0000.png'])]
    assert check_unlabeled_dataset(raw, verbose=False) == (2, [])


@pytest.mark.parametrize('mode', ['L', 'RGBA'])
def test_an_unlabeled_case_with_other_channels_is_refused_by_name(tmp_path, mode):
    raw = _rgb_raw(tmp_path)
    bad = os.path.join(raw, 'imagesUnlabeledTr', 'unl_001_0000.png')
    Image.open(bad).convert(mode).save(bad)
    n, problems = check_unlabeled_dataset(raw, verbose=False)
    assert n == 2 and len(problems) == 1
    assert 'unl_001_0000.png' in problems[0] and 'declares 3 (R, G, B)' in problems[0]
    assert f"reads {1 if mode == 'L' else 4} channel(s)" in problems[0]


def test_a_second_file_for_a_one_file_rgb_case_is_refused(tmp_path):
    raw = _rgb_raw(tmp_path)
    extra = os.path.join(raw, 'imagesUnlabeledTr', 'unl_000_0001.png')
    Image.open(os.path.join(raw, 'imagesUnlabeledTr', 'unl_000_0000.png')).save(extra)
    dataset_json = json.load(open(os.path.join(raw, 'dataset.json')))
    with pytest.raises(UnlabeledDataError, match=r'unl_000_0001.png: channel 0001, but this dataset has 1 file\(s\) '
                                                 r'per case as in imagesTr \(3 channels in each file\)'):
        discover_unlabeled_cases(raw, dataset_json)
    # the dataset check reports the same problem the trainer stops on
    assert 'unl_000_0001.png' in check_unlabeled_dataset(raw, verbose=False)[1][0]


def _train_and_predict(nnunet_env, dataset_id, dataset_name, configuration, tmp_path, file_ending):
    run_cli(['nnUNetv2_m3hl_check_dataset', '-d', dataset_id])
    run_cli(['nnUNetv2_plan_and_preprocess', '-d', dataset_id, '-c', configuration, *ONE_PROCESS,
             '--verify_dataset_integrity'])
    split = [{'train': ['lab_000', 'lab_001'], 'val': ['lab_002']}]
    (nnunet_env / 'preprocessed' / dataset_name / 'splits_final.json').write_text(json.dumps(split))
    run_cli(['nnUNetv2_train', dataset_id, configuration, 0, '-tr', 'M3HLTrainer_test', '-device', 'cpu'])
    fold = nnunet_env / 'results' / dataset_name / f'M3HLTrainer_test__nnUNetPlans__{configuration}' / 'fold_0'
    assert (fold / 'checkpoint_final.pth').is_file() and (fold / 'checkpoint_final_teacher.pth').is_file()
    images = nnunet_env / 'raw' / dataset_name / 'imagesTs'
    run_cli(['nnUNetv2_predict', '-i', images, '-o', tmp_path / 'pred', '-d', dataset_id, '-c', configuration,
             '-f', 0, '-tr', 'M3HLTrainer_test', '-device', 'cpu', '-npp', 1, '-nps', 1])
    return sorted(p.name for p in (tmp_path / 'pred').iterdir() if p.name.endswith(file_ending))


def test_rgb_png_dataset_end_to_end(nnunet_env, tmp_path):
    raw = make_synthetic_dataset(str(nnunet_env / 'raw'), RGB_ID, n_labeled=3, n_unlabeled=4, n_test=1,
                                 shape=(64, 64), layout='rgb_png', name='RGBPhantom')
    predicted = _train_and_predict(nnunet_env, RGB_ID, os.path.basename(raw), '2d', tmp_path, '.png')
    assert predicted == ['test_000.png']
    prediction = np.array(Image.open(tmp_path / 'pred' / 'test_000.png'))
    assert prediction.shape == (64, 64) and set(np.unique(prediction)) <= {0, 1, 2, 3}
    manifest = json.load(open(nnunet_env / 'preprocessed' / os.path.basename(raw) / 'nnUNetPlans_2d_unlabeled' /
                              'm3hl_manifest.json'))
    assert len(manifest['cases']) == 4


def test_a_case_missing_one_of_its_sequences_is_refused_by_name(tmp_path):
    """Two MRI sequences, one file each (the multi-file layout; tests/test_regions.py trains such a dataset with four
    sequences end to end)."""
    raw = make_synthetic_dataset(str(tmp_path), 961, n_labeled=2, n_unlabeled=2, n_test=0, shape=(8, 8, 8),
                                 channels=2)
    dataset_json = json.load(open(os.path.join(raw, 'dataset.json')))
    cases = discover_unlabeled_cases(raw, dataset_json)
    assert [[os.path.basename(f) for f in c.image_files] for c in cases] == \
        [['unl_000_0000.nii.gz', 'unl_000_0001.nii.gz'], ['unl_001_0000.nii.gz', 'unl_001_0001.nii.gz']]
    assert check_unlabeled_dataset(raw, verbose=False) == (2, [])
    os.remove(os.path.join(raw, 'imagesUnlabeledTr', 'unl_001_0001.nii.gz'))
    with pytest.raises(UnlabeledDataError, match=r'unl_001_0001.nii.gz is missing: every unlabeled case needs the '
                                                 r'2 file\(s\) per case'):
        discover_unlabeled_cases(raw, dataset_json)
    assert 'unl_001_0001.nii.gz is missing' in check_unlabeled_dataset(raw, verbose=False)[1][0]
