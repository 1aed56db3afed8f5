"""ACDC and LA converters on mock trees in the official layouts (tiny volumes, the real names)."""
import json
import os

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from dataset_conversion.acdc import convert_acdc
from dataset_conversion.common import ConversionError, safe_join
from dataset_conversion.la import convert_la
from dataset_conversion.splits import ACDC_TEST, ACDC_TRAIN_ORDER, ACDC_VALIDATION, LA_TEST, LA_TRAIN_ORDER

ODD_ED_PATIENT = 38  # its ED frame is frame04, not frame01


def image(array, spacing=(1.5, 1.25, 10.0), origin=(1.0, 2.0, 3.0)):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


@pytest.fixture(scope='module')
def acdc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('acdc')
    rng = np.random.default_rng(0)
    for p in range(1, 101):
        folder = root / 'training' / f'patient{p:03d}'
        folder.mkdir(parents=True)
        ed, es = (4, 12) if p == ODD_ED_PATIENT else (1, 10 + p % 5)
        (folder / 'Info.cfg').write_text(f'ED: {ed}\nES: {es}\nGroup: NOR\nHeight: 180.0\nNbFrame: 30\nWeight: 80.0\n')
        for frame in (ed, es):
            stem = folder / f'patient{p:03d}_frame{frame:02d}'
            # voxel values encode patient and frame, so that tests can trace every file
            sitk.WriteImage(image(np.full((3, 5, 4), p * 100 + frame, dtype=np.int16)), f'{stem}.nii.gz')
            sitk.WriteImage(image(rng.integers(0, 4, (3, 5, 4)).astype(np.uint8)), f'{stem}_gt.nii.gz')
    return root


def cases_in(folder):
    return sorted(f.split('.')[0] for f in os.listdir(folder))


def test_acdc_split_membership_and_ed_es_mapping(acdc_root, tmp_path, monkeypatch):
    monkeypatch.setenv('nnUNet_preprocessed', str(tmp_path / 'pre'))
    out = convert_acdc(str(acdc_root), 271, labeled=3, raw_root=str(tmp_path / 'raw'))
    phases = ('ED', 'ES')
    names = lambda ps: sorted(f'patient{p:03d}_{ph}' for p in ps for ph in phases)  # noqa: E731
    assert [c[:-5] for c in cases_in(f'{out}/imagesTr')] == names([99, 38, 50] + list(ACDC_VALIDATION))
    assert cases_in(f'{out}/labelsTr') == names([99, 38, 50] + list(ACDC_VALIDATION))
    assert [c[:-5] for c in cases_in(f'{out}/imagesUnlabeledTr')] == names(ACDC_TRAIN_ORDER[3:])
    assert [c[:-5] for c in cases_in(f'{out}/imagesTs')] == names(ACDC_TEST)
    assert cases_in(f'{out}/labelsTs') == names(ACDC_TEST)
    # no label of an unlabeled or test case anywhere in the training part of the dataset
    training_labels = set(cases_in(f'{out}/labelsTr'))
    assert not training_labels & set(names(ACDC_TRAIN_ORDER[3:])) and not training_labels & set(names(ACDC_TEST))
    # ED/ES read from Info.cfg, voxel values and geometry preserved
    ed = sitk.ReadImage(f'{out}/imagesTr/patient038_ED_0000.nii.gz')
    assert np.all(sitk.GetArrayFromImage(ed) == 38 * 100 + 4)
    assert np.all(sitk.GetArrayFromImage(sitk.ReadImage(f'{out}/imagesTr/patient099_ES_0000.nii.gz')) == 9900 + 14)
    assert ed.GetSpacing() == (1.5, 1.25, 10.0) and ed.GetOrigin() == (1.0, 2.0, 3.0)
    src_gt = sitk.ReadImage(f'{acdc_root}/training/patient038/patient038_frame04_gt.nii.gz')
    assert np.array_equal(sitk.GetArrayFromImage(src_gt),
                          sitk.GetArrayFromImage(sitk.ReadImage(f'{out}/labelsTr/patient038_ED.nii.gz')))
    dataset = json.load(open(f'{out}/dataset.json'))
    assert dataset['labels'] == {'background': 0, 'RV': 1, 'MYO': 2, 'LV': 3} and dataset['numTraining'] == 26
    splits = json.load(open(tmp_path / 'pre' / os.path.basename(out) / 'splits_final.json'))
    assert splits == [{'train': [f'patient{p:03d}_{ph}' for p in (99, 38, 50) for ph in phases],
                       'val': [f'patient{p:03d}_{ph}' for p in ACDC_VALIDATION for ph in phases]}]


def test_acdc_default_and_explicit_labeled(acdc_root, tmp_path):
    out = convert_acdc(str(acdc_root), 272, raw_root=str(tmp_path))
    assert len(os.listdir(f'{out}/labelsTr')) == 2 * (7 + 10)
    out = convert_acdc(str(acdc_root), 273, labeled_patients=[4, 56], raw_root=str(tmp_path))
    assert len(os.listdir(f'{out}/imagesUnlabeledTr')) == 2 * 68
    with pytest.raises(ConversionError, match='not in the protocol'):
        convert_acdc(str(acdc_root), 274, labeled_patients=[1], raw_root=str(tmp_path))


def test_acdc_patient_of_a_converted_frame(acdc_root, tmp_path):
    from dataset_conversion.acdc import acdc_patient_of
    out = convert_acdc(str(acdc_root), 275, labeled=3, raw_root=str(tmp_path))
    patients = {acdc_patient_of(f) for f in os.listdir(f'{out}/labelsTs')}
    assert len(os.listdir(f'{out}/labelsTs')) == 2 * len(patients)  # each test patient's ED and ES frames
    assert acdc_patient_of('patient012_ES') == acdc_patient_of('patient012_ED.nii.gz') == 12
    for bad in ('patient012', 'patient012_MID.nii.gz', 'case_012_ED', 'cvc_12.png'):
        with pytest.raises(ValueError, match='not a converted ACDC frame'):
            acdc_patient_of(bad)


@pytest.mark.parametrize('damage,message', [
    (lambda t: os.remove(t / 'training/patient050/Info.cfg'), 'Info.cfg is missing'),
    (lambda t: os.remove(t / 'training/patient050/patient050_frame01_gt.nii.gz'), '_gt.nii.gz is missing'),
    (lambda t: os.remove(t / 'training/patient050/patient050_frame01.nii.gz'), 'frame01.nii.gz is missing'),
    (lambda t: sitk.WriteImage(image(np.zeros((3, 5, 5), np.uint8)), str(t / 'training/patient050/patient050_frame01_gt.nii.gz')), 'size'),
    (lambda t: sitk.WriteImage(image(np.zeros((3, 5, 4), np.uint8), spacing=(1, 1, 1)), str(t / 'training/patient050/patient050_frame01_gt.nii.gz')), 'spacing'),
    (lambda t: sitk.WriteImage(image(np.full((3, 5, 4), 7, np.uint8)), str(t / 'training/patient050/patient050_frame01_gt.nii.gz')), 'unexpected label values'),
])
def test_acdc_bad_input_is_refused_with_nothing_written(acdc_root, tmp_path, damage, message):
    import shutil
    broken = tmp_path / 'acdc'
    shutil.copytree(acdc_root, broken)
    damage(broken)
    with pytest.raises(ConversionError, match=message) as e:
        convert_acdc(str(broken), 275, raw_root=str(tmp_path / 'raw'))
    assert 'patient050' in str(e.value)
    assert not (tmp_path / 'raw').exists() or os.listdir(tmp_path / 'raw') == []


def test_refuses_too_many_labeled_and_overwrite(acdc_root, tmp_path):
    with pytest.raises(ConversionError, match='choose 1..70'):
        convert_acdc(str(acdc_root), 276, labeled=71, raw_root=str(tmp_path))
    convert_acdc(str(acdc_root), 277, labeled=3, raw_root=str(tmp_path))
    with pytest.raises(ConversionError, match='--overwrite'):
        convert_acdc(str(acdc_root), 277, labeled=3, raw_root=str(tmp_path))
    out = convert_acdc(str(acdc_root), 277, labeled=5, raw_root=str(tmp_path), overwrite=True)
    assert len(os.listdir(f'{out}/labelsTr')) == 2 * 15


def make_la(root, layout, rng):
    for case in LA_TRAIN_ORDER + LA_TEST:
        folder = root / case
        folder.mkdir(parents=True)
        shape = (6, 5, 4)  # x, y, z
        label = (rng.random(shape) > 0.6).astype(np.uint8)
        img = rng.random(shape).astype(np.float32)
        if layout == 'uamt':
            with h5py.File(folder / 'mri_norm2.h5', 'w') as f:
                f['image'], f['label'] = img, label
        else:
            for arr, name in ((img, 'lgemri.nrrd'), (label * 255, 'laendo.nrrd')):
                i = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))
                i.SetSpacing((0.625, 0.625, 2.5))
                sitk.WriteImage(i, str(folder / name))


@pytest.mark.parametrize('layout', ['uamt', 'challenge'])
def test_la_split_and_values(tmp_path, layout, monkeypatch):
    monkeypatch.setenv('nnUNet_preprocessed', str(tmp_path / 'pre'))
    make_la(tmp_path / 'la', layout, np.random.default_rng(1))
    out = convert_la(str(tmp_path / 'la'), 281, labeled=4, raw_root=str(tmp_path / 'raw'))
    assert [c[:-5] for c in cases_in(f'{out}/imagesTr')] == sorted(LA_TRAIN_ORDER[:4]) == cases_in(f'{out}/labelsTr')
    assert [c[:-5] for c in cases_in(f'{out}/imagesUnlabeledTr')] == sorted(LA_TRAIN_ORDER[4:])
    assert [c[:-5] for c in cases_in(f'{out}/imagesTs')] == sorted(LA_TEST) == cases_in(f'{out}/labelsTs')
    case = LA_TRAIN_ORDER[0]
    written = sitk.ReadImage(f'{out}/labelsTr/{case}.nii.gz')
    arr = sitk.GetArrayFromImage(written).transpose(2, 1, 0)
    if layout == 'uamt':
        with h5py.File(tmp_path / 'la' / case / 'mri_norm2.h5', 'r') as f:
            assert np.array_equal(arr, f['label'][()])
            assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(f'{out}/imagesTr/{case}_0000.nii.gz'))
                                  .transpose(2, 1, 0), f['image'][()])
        assert written.GetSpacing() == (0.625, 0.625, 0.625)
    else:
        source = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / 'la' / case / 'laendo.nrrd'))).transpose(2, 1, 0)
        assert np.array_equal(arr, source // 255) and set(np.unique(arr)) <= {0, 1}
        assert written.GetSpacing() == (0.625, 0.625, 2.5)
    splits = json.load(open(tmp_path / 'pre' / os.path.basename(out) / 'splits_final.json'))
    assert splits == [{'train': list(LA_TRAIN_ORDER[:4]), 'val': list(LA_TRAIN_ORDER[:4])}]
    assert not set(splits[0]['val']) & set(LA_TEST)


def test_la_bad_input(tmp_path):
    make_la(tmp_path / 'la', 'challenge', np.random.default_rng(2))
    bad = tmp_path / 'la' / LA_TEST[3] / 'laendo.nrrd'
    wrong = sitk.GetImageFromArray(np.full((4, 5, 6), 7, np.uint8))
    wrong.SetSpacing((0.625, 0.625, 2.5))
    sitk.WriteImage(wrong, str(bad))
    with pytest.raises(ConversionError, match='unexpected label values') as e:
        convert_la(str(tmp_path / 'la'), 282, raw_root=str(tmp_path / 'raw'))
    assert LA_TEST[3] in str(e.value) and not os.listdir(tmp_path / 'raw')
    with pytest.raises(ConversionError, match='choose 1..80'):
        convert_la(str(tmp_path / 'la'), 282, labeled=81, raw_root=str(tmp_path / 'raw'))


@pytest.mark.parametrize('name', ['../evil', 'a/b', '..', ''])
def test_names_cannot_escape_the_output_folder(tmp_path, name):
    with pytest.raises(ConversionError):
        safe_join(str(tmp_path), name)


# ---------------------------------------------------------------- ACDC, SSL4MIS h5 layout
N_SLICES = 3


def h5_pair(path, image, label):
    with h5py.File(path, 'w') as f:
        f['image'], f['label'] = image, label


def make_ssl4mis(root, slices_in_subfolder: bool):
    """A tiny SSL4MIS tree: training frames as slices (values encode patient, frame and slice), validation and
    test frames whole, and the four lists."""
    data = root / 'data'
    slices = data / 'slices' if slices_in_subfolder else data
    slices.mkdir(parents=True)
    rng = np.random.default_rng(3)
    frames = lambda ps: [f'patient{p:03d}_frame{f:02d}' for p in ps for f in (1, 2)]  # noqa: E731
    for stem in frames(ACDC_TRAIN_ORDER):
        p, f = int(stem[7:10]), int(stem[-2:])
        for k in range(1, N_SLICES + 1):
            h5_pair(slices / f'{stem}_slice_{k}.h5', np.full((6, 5), p + f / 10 + k / 100, np.float32),
                    rng.integers(0, 4, (6, 5)).astype(np.uint8))
    for stem in frames(ACDC_VALIDATION + ACDC_TEST):
        h5_pair(data / f'{stem}.h5', rng.random((N_SLICES, 6, 5)).astype(np.float32),
                rng.integers(0, 4, (N_SLICES, 6, 5)).astype(np.uint8))
    (root / 'train.list').write_text('\n'.join(frames(ACDC_TRAIN_ORDER)) + '\n')
    (root / 'train_slices.list').write_text('\n'.join(f'{s}_slice_{k}' for s in frames(ACDC_TRAIN_ORDER)
                                                      for k in range(1, N_SLICES + 1)) + '\n')
    (root / 'val.list').write_text('\n'.join(frames(ACDC_VALIDATION)) + '\n')
    (root / 'test.list').write_text('\n'.join(frames(ACDC_TEST)) + '\n')
    return root


@pytest.fixture(scope='module')
def ssl4mis_root(tmp_path_factory):
    return make_ssl4mis(tmp_path_factory.mktemp('ssl4mis'), slices_in_subfolder=False)


@pytest.mark.parametrize('slices_in_subfolder', [False, True])
def test_ssl4mis_h5_gives_the_official_split_and_rebuilds_frames_in_slice_order(
        acdc_root, tmp_path, monkeypatch, slices_in_subfolder):
    monkeypatch.setenv('nnUNet_preprocessed', str(tmp_path / 'pre'))
    h5_root = make_ssl4mis(tmp_path / 'h5', slices_in_subfolder)
    out = convert_acdc(str(h5_root), 271, labeled=3, raw_root=str(tmp_path / 'raw'))
    official = convert_acdc(str(acdc_root), 272, labeled=3, raw_root=str(tmp_path / 'raw'))
    for sub in ('imagesTr', 'labelsTr', 'imagesUnlabeledTr', 'imagesTs', 'labelsTs'):
        assert cases_in(f'{out}/{sub}') == cases_in(f'{official}/{sub}'), sub
    splits = lambda folder: json.load(open(tmp_path / 'pre' / os.path.basename(folder) / 'splits_final.json'))  # noqa
    assert splits(out) == splits(official)
    # patient 38's ES frame (frame02) from its slices 1, 2, 3 in this order; frames of the labeled set
    rebuilt = sitk.ReadImage(f'{out}/imagesTr/patient038_ES_0000.nii.gz')
    array = sitk.GetArrayFromImage(rebuilt)
    assert array.shape == (N_SLICES, 6, 5)
    assert np.allclose(array[:, 0, 0], [38.2 + k / 100 for k in range(1, N_SLICES + 1)])
    slices = h5_root / 'data' / ('slices' if slices_in_subfolder else '')
    with h5py.File(slices / 'patient038_frame02_slice_2.h5', 'r') as f:
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(f'{out}/labelsTr/patient038_ES.nii.gz'))[1],
                              f['label'][()])
    assert rebuilt.GetSpacing() == (1.0, 1.0, 10.0)
    # validation and test frames are read whole
    with h5py.File(h5_root / 'data' / 'patient001_frame01.h5', 'r') as f:
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(f'{out}/labelsTs/patient001_ED.nii.gz')),
                              f['label'][()])
    dataset = json.load(open(f'{out}/dataset.json'))
    assert dataset['m3hl_nominal_spacing'] == [1.0, 1.0, 10.0] and 'nominal' in dataset['description']
    assert 'm3hl_nominal_spacing' not in json.load(open(f'{official}/dataset.json'))


def _rewrite_slice(root, name, image=None, label=None):
    path = root / 'data' / name
    with h5py.File(path, 'r') as f:
        old_image, old_label = f['image'][()], f['label'][()]
    path.unlink()
    h5_pair(path, old_image if image is None else image, old_label if label is None else label)


@pytest.mark.parametrize('damage,message', [
    (lambda r: (r / 'data' / 'patient050_frame01_slice_2.h5').unlink(), 'patient050_frame01_slice_2.h5 is missing'),
    (lambda r: _rewrite_slice(r, 'patient050_frame01_slice_3.h5', image=np.zeros((7, 5), np.float32),
                              label=np.zeros((7, 5), np.uint8)), 'slice shape'),
    (lambda r: _rewrite_slice(r, 'patient050_frame02_slice_1.h5', label=np.full((6, 5), 4, np.uint8)),
     'unexpected label values'),
    (lambda r: (r / 'data' / 'patient050_frame02.h5').touch() or
     (r / 'test.list').write_text((r / 'test.list').read_text().replace('patient001_frame01', 'patient050_frame09')),
     'differ from the SSL4MIS protocol'),
    (lambda r: (r / 'train_slices.list').write_text((r / 'train_slices.list').read_text()
                                                    + 'patient050_frame01_slice_9\n'), 'names patient050'),
    (lambda r: (r / 'data' / 'patient001_frame02.h5').unlink(), 'patient001_frame02.h5 is missing'),
])
def test_ssl4mis_bad_input_is_refused_with_nothing_written(ssl4mis_root, tmp_path, damage, message):
    import shutil
    broken = tmp_path / 'h5'
    shutil.copytree(ssl4mis_root, broken)
    damage(broken)
    with pytest.raises(ConversionError, match=message):
        convert_acdc(str(broken), 275, raw_root=str(tmp_path / 'raw'))
    assert not (tmp_path / 'raw').exists() or os.listdir(tmp_path / 'raw') == []


def test_acdc_layout_detection(tmp_path, ssl4mis_root):
    with pytest.raises(ConversionError, match='neither'):
        convert_acdc(str(tmp_path), 276, raw_root=str(tmp_path / 'raw'))
    import shutil
    both = tmp_path / 'both'
    shutil.copytree(ssl4mis_root, both)
    (both / 'training').mkdir()
    with pytest.raises(ConversionError, match='point -i to one of them'):
        convert_acdc(str(both), 276, raw_root=str(tmp_path / 'raw'))


def test_mm_metrics_on_a_nominal_spacing_dataset_say_so(ssl4mis_root, tmp_path):
    from nnunetv2_m3hl.evaluation import evaluate_folders
    out = convert_acdc(str(ssl4mis_root), 277, labeled=3, raw_root=str(tmp_path / 'raw'))
    mm = evaluate_folders(f'{out}/labelsTs', f'{out}/labelsTs', str(tmp_path / 'mm.json'), convention='mm',
                          verbose=False)
    assert 'nominal, not physical' in mm['spacing_not_physical']
    paper = evaluate_folders(f'{out}/labelsTs', f'{out}/labelsTs', str(tmp_path / 'paper.json'), verbose=False)
    assert 'spacing_not_physical' not in paper and paper['mean']['dice'] == 1.0
