import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_m3hl.unlabeled import (MANIFEST_NAME, UnlabeledDataError, discover_unlabeled_cases,
                                     preprocess_unlabeled, unlabeled_identifiers)

DATASET_JSON = {'channel_names': {'0': 'MRI'}, 'labels': {'background': 0, 'a': 1}, 'numTraining': 1,
                'file_ending': '.nii.gz'}


def write_image(path, shape=(1, 16, 16)):
    img = sitk.GetImageFromArray(np.random.rand(*shape).astype(np.float32))
    img.SetSpacing((1, 1, 999))
    sitk.WriteImage(img, str(path))


@pytest.fixture
def raw(tmp_path):
    for d in ('imagesTr', 'labelsTr', 'imagesUnlabeledTr'):
        (tmp_path / d).mkdir()
    write_image(tmp_path / 'imagesTr' / 'case_0000.nii.gz')
    write_image(tmp_path / 'labelsTr' / 'case.nii.gz')
    write_image(tmp_path / 'imagesUnlabeledTr' / 'u1_0000.nii.gz')
    return tmp_path


def test_discovers_cases(raw):
    cases = discover_unlabeled_cases(str(raw), DATASET_JSON)
    assert [c.identifier for c in cases] == ['u1']


@pytest.mark.parametrize('name,message', [
    ('u2_0000.nrrd', 'wrong file ending'),
    ('u2.nii.gz', 'CASE_0000'),
    ('u2_0001.nii.gz', 'channel 0001'),
    ('case_0000.nii.gz', 'also a labeled case'),
])
def test_bad_names_are_refused_with_the_file_and_fix(raw, name, message):
    write_image(raw / 'imagesUnlabeledTr' / name)
    with pytest.raises(UnlabeledDataError, match=message) as e:
        discover_unlabeled_cases(str(raw), DATASET_JSON)
    assert name in str(e.value) or name.split('_')[0] in str(e.value)


def test_missing_channel_is_refused(raw):
    two = dict(DATASET_JSON, channel_names={'0': 'T1', '1': 'T2'})
    write_image(raw / 'imagesTr' / 'case_0001.nii.gz')
    with pytest.raises(UnlabeledDataError, match='u1_0001.nii.gz is missing'):
        discover_unlabeled_cases(str(raw), two)


def test_missing_or_empty_folder_points_to_nnunettrainer(raw):
    for f in (raw / 'imagesUnlabeledTr').iterdir():
        f.unlink()
    with pytest.raises(UnlabeledDataError, match='is empty.*nnUNetTrainer'):
        discover_unlabeled_cases(str(raw), DATASET_JSON)
    (raw / 'imagesUnlabeledTr').rmdir()
    with pytest.raises(UnlabeledDataError, match='imagesUnlabeledTr.*nnUNetTrainer'):
        discover_unlabeled_cases(str(raw), DATASET_JSON)


def test_incremental_preprocessing(nnunet_env, planned_2d):
    raw = nnunet_env / 'raw' / planned_2d / 'imagesUnlabeledTr'
    out = preprocess_unlabeled(901, '2d', num_processes=1, verbose=False)
    manifest_file = os.path.join(out, MANIFEST_NAME)
    first = json.load(open(manifest_file))
    assert sorted(first['cases']) == unlabeled_identifiers(out) == sorted(
        f.name[:-12] for f in raw.iterdir())
    mtimes = {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in os.listdir(out) if f.endswith('.b2nd')}
    # a rerun with nothing changed redoes nothing
    preprocess_unlabeled(901, '2d', num_processes=1, verbose=False)
    assert {f: os.stat(os.path.join(out, f)).st_mtime_ns for f in mtimes} == mtimes
    # an added scan is picked up, a removed one dropped, a leftover temp file cleaned
    shutil.copy(raw / 'unl_000_0000.nii.gz', raw / 'extra_0000.nii.gz')
    moved = raw.parent / 'unl_001_0000.nii.gz'
    shutil.move(raw / 'unl_001_0000.nii.gz', moved)
    open(os.path.join(out, '.m3hl-tmp-unl_002.b2nd'), 'w').write('truncated')
    try:
        preprocess_unlabeled(901, '2d', num_processes=2, verbose=False)
        ids = unlabeled_identifiers(out)
        assert 'extra' in ids and 'unl_001' not in ids
        assert not os.path.exists(os.path.join(out, 'unl_001.b2nd'))
        assert not any(f.startswith('.m3hl-tmp') for f in os.listdir(out))
        assert os.stat(os.path.join(out, 'unl_000.b2nd')).st_mtime_ns == mtimes['unl_000.b2nd']
        # a changed plan makes everything stale
        manifest = json.load(open(manifest_file))
        manifest['plans_identity'] = 'an older plan'
        json.dump(manifest, open(manifest_file, 'w'))
        preprocess_unlabeled(901, '2d', num_processes=1, verbose=False)
        assert os.stat(os.path.join(out, 'unl_000.b2nd')).st_mtime_ns != mtimes['unl_000.b2nd']
    finally:
        (raw / 'extra_0000.nii.gz').unlink()
        shutil.move(moved, raw / 'unl_001_0000.nii.gz')
        preprocess_unlabeled(901, '2d', num_processes=1, verbose=False)


def test_unreadable_scan_is_refused_and_nothing_written(nnunet_env, planned_2d):
    raw = nnunet_env / 'raw' / planned_2d / 'imagesUnlabeledTr'
    bad = raw / 'broken_0000.nii.gz'
    bad.write_bytes(open(raw / 'unl_000_0000.nii.gz', 'rb').read()[:100])  # truncated file
    try:
        with pytest.raises(UnlabeledDataError, match='broken_0000.nii.gz'):
            preprocess_unlabeled(901, '2d', num_processes=1, verbose=False)
        out = nnunet_env / 'preprocessed' / planned_2d / 'nnUNetPlans_2d_unlabeled'
        assert not any('broken' in f for f in os.listdir(out))
        assert 'broken' not in json.load(open(out / MANIFEST_NAME))['cases']
    finally:
        bad.unlink()


def test_plans_identity_covers_preprocessing_only(nnunet_env, planned_2d):
    import copy
    from nnunetv2_m3hl.unlabeled import plans_identity
    plans = json.load(open(os.path.join(str(nnunet_env), 'preprocessed', planned_2d, 'nnUNetPlans.json')))
    identity = plans_identity(plans, '2d')
    narrow = copy.deepcopy(plans)
    c = narrow['configurations']['2d']
    c['architecture']['arch_kwargs']['features_per_stage'] = [w // 2 for w in
                                                              c['architecture']['arch_kwargs']['features_per_stage']]
    c['batch_size'] = c['batch_size'] + 3
    narrow['plans_name'] = 'nnUNetPlans_narrow'
    assert plans_identity(narrow, '2d') == identity  # a narrower network shares the preprocessed scans
    for edit in (lambda p: p['configurations']['2d'].update(spacing=[s * 2 for s in p['configurations']['2d']['spacing']]),
                 lambda p: p['configurations']['2d'].update(normalization_schemes=['NoNormalization']),
                 lambda p: p.update(transpose_forward=list(reversed(p['transpose_forward'])))):
        changed = copy.deepcopy(plans)
        edit(changed)
        assert plans_identity(changed, '2d') != identity
