"""Console entry points of the dataset tools and the evaluation, as a user calls them."""
import json
import os

import numpy as np
import SimpleITK as sitk

from conftest import run_cli
from dataset_conversion.synthetic import make_synthetic_dataset


def test_make_ssl_dataset(tmp_path):
    env = dict(os.environ, nnUNet_raw=str(tmp_path))
    src = make_synthetic_dataset(str(tmp_path), 950, n_labeled=6, n_unlabeled=0, n_test=2, shape=(16, 16))
    run_cli(['nnUNetv2_m3hl_make_ssl_dataset', '-d', 950, '--labeled', 2, '-o', 951, '--seed', 3], env=env)
    out = tmp_path / 'Dataset951_M3HLPhantomSSL2'
    labeled = sorted(os.listdir(out / 'labelsTr'))
    assert len(labeled) == 2 and len(os.listdir(out / 'imagesTr')) == 2
    unlabeled = sorted(os.listdir(out / 'imagesUnlabeledTr'))
    assert len(unlabeled) == 4 and not {u.replace('_0000', '') for u in unlabeled} & set(labeled)
    assert sorted(os.listdir(out / 'labelsTs')) == sorted(os.listdir(os.path.join(src, 'labelsTs')))
    assert json.load(open(out / 'dataset.json'))['numTraining'] == 2
    assert len(os.listdir(os.path.join(src, 'labelsTr'))) == 6  # source untouched
    # same seed, same choice; an existing target is refused without --overwrite
    proc = run_cli(['nnUNetv2_m3hl_make_ssl_dataset', '-d', 950, '--labeled', 2, '-o', 951], env=env, check=False)
    assert proc.returncode == 2 and '--overwrite' in proc.stderr
    run_cli(['nnUNetv2_m3hl_make_ssl_dataset', '-d', 950, '--labeled', 2, '-o', 951, '--seed', 3, '--overwrite'],
            env=env)
    assert sorted(os.listdir(out / 'labelsTr')) == labeled


def test_evaluate_and_converter_cli(tmp_path):
    ref = np.zeros((6, 12, 12), np.uint8)
    ref[2:4, 3:9, 3:9] = 1
    for folder in ('ref', 'pred'):
        (tmp_path / folder).mkdir()
        sitk.WriteImage(sitk.GetImageFromArray(ref), str(tmp_path / folder / 'a.nii.gz'))
    proc = run_cli(['nnUNetv2_m3hl_evaluate', '-ref', tmp_path / 'ref', '-pred', tmp_path / 'pred',
                    '-o', tmp_path / 'm.json', '--convention', 'mm'])
    assert '| mean | 100.00 | 100.00 | 0.00 | 0.00 |' in proc.stdout
    assert json.load(open(tmp_path / 'm.json'))['convention'] == 'mm'
    proc = run_cli(['nnUNetv2_m3hl_convert_la', '-i', tmp_path / 'missing', '-d', 5],
                   env=dict(os.environ, nnUNet_raw=str(tmp_path / 'raw')), check=False)
    assert proc.returncode == 2 and 'missing' in proc.stderr and 'Traceback' not in proc.stderr
