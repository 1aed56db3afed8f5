"""Truncated scans at every cut point, through every entry point that reads or copies scans."""
import os
import shutil
import zlib

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import run_cli
from nnunetv2_m3hl.integrity import IncompleteScanError, check_dataset_files, check_scan_complete


def write_scan(path, shape=(7, 67, 59), dtype=np.float32, seed=0):
    image = sitk.GetImageFromArray(np.random.default_rng(seed).random(shape).astype(dtype) * 100)
    image.SetSpacing((1.5, 1.5, 3.0))
    sitk.WriteImage(image, str(path), useCompression=str(path).endswith(('.nrrd', '.mha')))
    return path


def cut(path, size, target=None):
    data = open(path, 'rb').read()[:size]
    target = target or path
    with open(target, 'wb') as f:
        f.write(data)
    return target


def header_end(path):
    """Size of the file's prefix that holds the whole header."""
    data = open(path, 'rb').read()
    if path.endswith('.nii.gz'):
        return next(size for size in range(32, len(data))
                    if len(zlib.decompressobj(31).decompress(data[:size])) >= 352)
    if path.endswith('.nii'):
        return 352
    if path.endswith('.nrrd'):
        return data.index(b'\n\n') + 2
    return data.index(b'\n', data.index(b'ElementDataFile')) + 1


def cut_points(path):
    """Inside the header, just after it, in the middle, one byte short."""
    size = os.path.getsize(path)
    return {'inside the header': header_end(path) // 2, 'just after the header': header_end(path) + 1,
            'middle': size // 2, 'one byte short': size - 1}


@pytest.mark.parametrize('ending', ['.nii.gz', '.nii', '.nrrd', '.mha'])
def test_every_cut_point_is_refused_and_whole_files_pass(tmp_path, ending):
    whole = str(write_scan(tmp_path / f'scan{ending}'))
    check_scan_complete(whole)
    for where, size in cut_points(whole).items():
        broken = cut(whole, size, str(tmp_path / f'cut{ending}'))
        with pytest.raises(IncompleteScanError, match='cut') as e:
            check_scan_complete(broken)
        assert broken in str(e.value), where
    empty = cut(whole, 0, str(tmp_path / f'empty{ending}'))
    with pytest.raises(IncompleteScanError, match='empty'):
        check_scan_complete(empty)


def test_simpleitk_alone_accepts_a_cut_nifti(tmp_path):
    """Why the check exists: the reader returns an array of the header's shape from a cut file."""
    whole = str(write_scan(tmp_path / 'scan.nii.gz'))
    broken = cut(whole, header_end(whole) + 200, str(tmp_path / 'cut.nii.gz'))
    assert sitk.GetArrayFromImage(sitk.ReadImage(broken)).shape == (7, 67, 59)
    with pytest.raises(IncompleteScanError):
        check_scan_complete(broken)


def test_unlabeled_preprocessing_refuses_a_cut_scan_and_writes_nothing(nnunet_env, planned_2d):
    from nnunetv2_m3hl.unlabeled import UnlabeledDataError, load_manifest, preprocess_unlabeled
    raw = nnunet_env / 'raw' / planned_2d / 'imagesUnlabeledTr'
    source = sorted(raw.iterdir())[0]
    victim = raw / 'cutscan_0000.nii.gz'
    output = nnunet_env / 'preprocessed' / planned_2d / 'nnUNetPlans_2d_unlabeled'
    try:
        for size in cut_points(str(source)).values():
            cut(str(source), size, str(victim))
            with pytest.raises(UnlabeledDataError, match='cutscan_0000.nii.gz'):
                preprocess_unlabeled(901, '2d', num_processes=1, verbose=False)
            assert 'cutscan' not in load_manifest(str(output))['cases']
            assert not [f for f in os.listdir(output) if 'cutscan' in f]
    finally:
        victim.unlink()


def test_check_dataset_command_names_every_cut_file(nnunet_env, planned_2d, tmp_path):
    raw = nnunet_env / 'raw' / planned_2d
    copy = tmp_path / 'raw' / planned_2d
    shutil.copytree(raw, copy)
    env = dict(os.environ, nnUNet_raw=str(tmp_path / 'raw'))
    proc = run_cli(['nnUNetv2_m3hl_check_dataset', '-d', planned_2d], env=env)
    assert 'all complete' in proc.stdout
    label = sorted((copy / 'labelsTr').iterdir())[0]
    unlabeled = sorted((copy / 'imagesUnlabeledTr').iterdir())[0]
    cut(str(label), os.path.getsize(label) - 1)
    cut(str(unlabeled), os.path.getsize(unlabeled) // 2)
    n, problems = check_dataset_files(str(copy), verbose=False)
    assert len(problems) == 2 and n == sum(len(os.listdir(copy / s)) for s in
                                           ('imagesTr', 'labelsTr', 'imagesUnlabeledTr', 'imagesTs', 'labelsTs'))
    proc = run_cli(['nnUNetv2_m3hl_check_dataset', '-d', planned_2d], check=False, env=env)
    assert proc.returncode == 2 and label.name in proc.stderr and unlabeled.name in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_converters_refuse_cut_files_and_write_nothing(tmp_path):
    from test_converters import make_la, make_ssl4mis
    from dataset_conversion.acdc import convert_acdc
    from dataset_conversion.common import ConversionError
    from dataset_conversion.la import convert_la
    from dataset_conversion.splits import LA_TRAIN_ORDER
    rng = np.random.default_rng(0)
    make_la(tmp_path / 'la_nrrd', 'challenge', rng)
    make_la(tmp_path / 'la_h5', 'uamt', rng)
    make_ssl4mis(tmp_path / 'acdc_h5', slices_in_subfolder=True)
    victims = [(convert_la, tmp_path / 'la_nrrd', tmp_path / 'la_nrrd' / LA_TRAIN_ORDER[5] / 'lgemri.nrrd'),
               (convert_la, tmp_path / 'la_h5', tmp_path / 'la_h5' / LA_TRAIN_ORDER[5] / 'mri_norm2.h5'),
               (convert_acdc, tmp_path / 'acdc_h5', tmp_path / 'acdc_h5' / 'data' / 'slices' /
                'patient050_frame01_slice_2.h5')]
    for convert, root, victim in victims:
        cut(str(victim), os.path.getsize(victim) - 1)
        with pytest.raises(ConversionError) as e:
            convert(str(root), 290, raw_root=str(tmp_path / 'raw'))
        assert str(victim) in str(e.value)
        assert not (tmp_path / 'raw').exists() or os.listdir(tmp_path / 'raw') == []


def test_official_acdc_converter_refuses_a_cut_frame(tmp_path):
    from dataset_conversion.acdc import check_pair
    from dataset_conversion.common import ConversionError
    image = str(write_scan(tmp_path / 'patient001_frame01.nii.gz'))
    label = str(write_scan(tmp_path / 'patient001_frame01_gt.nii.gz', dtype=np.uint8))
    cut(image, os.path.getsize(image) // 2)
    with pytest.raises(ConversionError, match='patient001_frame01.nii.gz'):
        check_pair(image, label)


def test_make_ssl_dataset_refuses_a_source_with_a_cut_file(nnunet_env, planned_2d, tmp_path):
    from dataset_conversion.common import ConversionError
    from dataset_conversion.make_ssl import make_ssl_dataset
    raw = tmp_path / 'raw'
    shutil.copytree(nnunet_env / 'raw' / planned_2d, raw / planned_2d)
    victim = sorted((raw / planned_2d / 'labelsTr').iterdir())[1]
    cut(str(victim), os.path.getsize(victim) - 1)
    with pytest.raises(ConversionError, match=victim.name):
        make_ssl_dataset(planned_2d, 2, 951, raw_root=str(raw))
    assert sorted(os.listdir(raw)) == [planned_2d]
