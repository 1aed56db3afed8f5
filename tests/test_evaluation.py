import json

import numpy as np
import pytest
import SimpleITK as sitk
from medpy import metric

from nnunetv2_m3hl.evaluation import class_metrics, evaluate_folders, keep_largest_component


def blob(shape, center, radius):
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing='ij')
    return sum((g - c) ** 2 for g, c in zip(grid, center)) < radius ** 2


def write(array, path, spacing):
    img = sitk.GetImageFromArray(array.astype(np.uint8))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


def test_paper_convention_equals_medpy_and_mm_uses_spacing():
    ref = blob((20, 24, 24), (10, 12, 12), 6)
    pred = blob((20, 24, 24), (11, 12, 10), 6)
    paper = class_metrics(pred, ref, 'paper')
    assert paper['dice'] == metric.binary.dc(pred, ref)
    assert paper['jaccard'] == metric.binary.jc(pred, ref)
    assert paper['hd95'] == metric.binary.hd95(pred, ref)
    assert paper['asd'] == metric.binary.asd(pred, ref)
    spacing = (2.5, 0.7, 0.7)
    mm = class_metrics(pred, ref, 'mm', spacing)
    assert mm['hd95'] == metric.binary.hd95(pred, ref, voxelspacing=spacing)
    assert mm['hd95'] != paper['hd95'] and mm['dice'] == paper['dice']


def test_empty_prediction_scores_zero_in_paper_and_is_flagged_in_mm():
    ref = blob((10, 10, 10), (5, 5, 5), 3)
    empty = np.zeros_like(ref)
    assert class_metrics(empty, ref, 'paper') == {'dice': 0.0, 'jaccard': 0.0, 'hd95': 0.0, 'asd': 0.0,
                                                   'empty_prediction': True}
    mm = class_metrics(empty, ref, 'mm', (1, 1, 1))
    assert mm['dice'] == 0 and np.isnan(mm['hd95']) and mm['empty_prediction']


@pytest.mark.parametrize('seed', range(5))
def test_random_masks_agree_with_medpy_where_defined(seed):
    rng = np.random.default_rng(seed)
    ref = rng.random((8, 9, 10)) < rng.uniform(0.001, 0.5)
    pred = rng.random((8, 9, 10)) < rng.uniform(0.001, 0.5)
    pred[0, 0, 0] = ref[0, 0, 0] = True  # both non-empty: medpy defines every metric
    m = class_metrics(pred, ref, 'paper')
    assert np.isclose(m['hd95'], metric.binary.hd95(pred, ref)) and np.isclose(m['asd'], metric.binary.asd(pred, ref))


def test_largest_component_post_processing():
    pred = np.zeros((10, 10, 10), dtype=np.uint8)
    pred[1:3, 1:3, 1:3] = 1
    pred[5:9, 5:9, 5:9] = 1
    kept = keep_largest_component(pred, [1])
    assert kept.sum() == 64 and kept[1, 1, 1] == 0


def test_folders_means_over_cases_then_classes(tmp_path):
    (tmp_path / 'ref').mkdir()
    (tmp_path / 'pred').mkdir()
    shape = (12, 16, 16)
    for i in range(2):
        ref = blob(shape, (6, 8, 5), 3).astype(np.uint8) + 2 * blob(shape, (6, 8, 11), 3)
        pred = ref.copy()
        if i == 1:
            pred[pred == 2] = 0  # class 2 missed in case 1
        write(ref, tmp_path / 'ref' / f'c{i}.nii.gz', (1, 1, 3))
        write(pred, tmp_path / 'pred' / f'c{i}.nii.gz', (1, 1, 3))
    result = evaluate_folders(str(tmp_path / 'ref'), str(tmp_path / 'pred'), str(tmp_path / 'm.json'), verbose=False)
    assert result['per_class']['1']['dice'] == 1.0 and result['per_class']['2']['dice'] == 0.5
    assert result['mean']['dice'] == 0.75
    assert json.load(open(tmp_path / 'm.json'))['flagged'] == ['c1.nii.gz: class 2']
    assert (tmp_path / 'm.csv').read_text().count('\n') == 5
    (tmp_path / 'pred' / 'c1.nii.gz').unlink()
    with pytest.raises(FileNotFoundError, match='c1.nii.gz'):
        evaluate_folders(str(tmp_path / 'ref'), str(tmp_path / 'pred'), str(tmp_path / 'm2.json'), verbose=False)


@pytest.mark.parametrize('case', ['full', 'single_voxel', 'disconnected', 'empty_reference'])
def test_edge_masks(case):
    shape = (6, 7, 8)
    ref = blob(shape, (3, 3, 4), 2.5)
    pred = {'full': np.ones(shape, bool),
            'single_voxel': np.zeros(shape, bool),
            'disconnected': blob(shape, (1, 1, 1), 1.2) | blob(shape, (4, 5, 6), 1.5)}.get(case)
    if case == 'single_voxel':
        pred[3, 3, 4] = True
    if case == 'empty_reference':
        pred, ref = ref, np.zeros(shape, bool)
        m = class_metrics(pred, ref, 'paper')
        assert m['dice'] == 0 and np.isnan(m['hd95']) and m['empty_reference']
        return
    m = class_metrics(pred, ref, 'paper')
    for key, fn in (('dice', metric.binary.dc), ('jaccard', metric.binary.jc), ('hd95', metric.binary.hd95),
                    ('asd', metric.binary.asd)):
        assert np.isclose(m[key], fn(pred, ref)), key


def test_side_by_side_table(tmp_path):
    from nnunetv2_m3hl.compare import side_by_side
    files = []
    for name, dice in (('metrics_A', 0.9), ('metrics_B', 0.8)):
        per_class = {'1': {'dice': dice, 'jaccard': 0.5, 'hd95': 2.0, 'asd': 1.0}}
        path = tmp_path / f'{name}.json'
        path.write_text(json.dumps({'convention': 'paper', 'labels': [1], 'mean': per_class['1'],
                                    'per_class': per_class}))
        files.append(str(path))
    table = side_by_side(files).splitlines()
    assert table[0].startswith('| class | A Dice% |') and '| B Dice% |' in table[0]
    assert table[2] == '| mean | 90.00 | 50.00 | 2.00 | 1.00 | 80.00 | 50.00 | 2.00 | 1.00 |'
