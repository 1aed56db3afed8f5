"""The image-folder converter (images + masks with the same stems, optional unlabeled images) and the CVC-ClinicDB
split, on tiny generated folders."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from dataset_conversion.common import ConversionError
from dataset_conversion.cvc import convert_cvc, cvc_sequence_of, cvc_test_frames
from dataset_conversion.image_folders import convert_image_folders, parse_label_map
from dataset_conversion.splits import CVC_SEQUENCES, CVC_TEST_SEQUENCES, CVC_TRAIN_ORDER


def _disc(size=32, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = ((yy - rng.integers(10, 22)) ** 2 + (xx - rng.integers(10, 22)) ** 2 < 36).astype(np.uint8)
    image = np.stack([rng.integers(0, 80, (size, size)) + 150 * mask] * 3, -1).astype(np.uint8)
    image[..., 1] //= 2
    return image, mask


def make_folders(root, n=10, n_unlabeled=3, mask_format='png', image_format='jpg', gray=False):
    folders = {k: root / k for k in ('images', 'masks', 'unlabeled')}
    for f in folders.values():
        f.mkdir(parents=True)
    for i in range(n + n_unlabeled):
        image, mask = _disc(seed=i)
        picture = Image.fromarray(image[..., 0] if gray else image)
        if i >= n:
            picture.save(folders['unlabeled'] / f'u{i}.{image_format}')
            continue
        picture.save(folders['images'] / f'f{i}.{image_format}')
        Image.fromarray(255 * mask).save(folders['masks'] / f'f{i}.{mask_format}', quality=60)
    return folders


def test_folders_become_nnunets_natural_image_layout(tmp_path):
    folders = make_folders(tmp_path / 'src')
    target = convert_image_folders(str(folders['images']), str(folders['masks']), 971, 'Polyps',
                                   unlabeled=str(folders['unlabeled']), labeled=0.25, test_fraction=0.2, seed=3,
                                   raw_root=str(tmp_path / 'raw'))
    dataset = json.load(open(os.path.join(target, 'dataset.json')))
    assert dataset['channel_names'] == {'0': 'R', '1': 'G', '2': 'B'} and dataset['file_ending'] == '.png'
    assert dataset['overwrite_image_reader_writer'] == 'NaturalImage2DIO'
    assert dataset['labels'] == {'background': 0, 'foreground': 1} and dataset['numTraining'] == 2
    listing = {sub: sorted(os.listdir(os.path.join(target, sub))) for sub in
               ('imagesTr', 'labelsTr', 'imagesUnlabeledTr', 'imagesTs', 'labelsTs')}
    split = json.load(open(os.path.join(target, 'split.json')))
    # 2 of 10 test, a quarter of the other 8 labeled, their other 6 and the 3 unlabeled images unlabeled
    assert [len(split['cases'][k]) for k in ('test', 'labeled', 'unlabeled')] == [2, 2, 6]
    assert listing['imagesTr'] == [f'{c}_0000.png' for c in split['cases']['labeled']]
    assert listing['labelsTr'] == [f'{c}.png' for c in split['cases']['labeled']]
    assert len(listing['imagesUnlabeledTr']) == 9 and listing['labelsTs'] == [f'{c}.png' for c in split['cases']['test']]
    # no mask of an unlabeled frame anywhere in the dataset
    unlabeled = {f[:-9] for f in listing['imagesUnlabeledTr']}
    assert not unlabeled & {f[:-4] for sub in ('labelsTr', 'labelsTs') for f in listing[sub]}
    image = np.array(Image.open(os.path.join(target, 'imagesTr', listing['imagesTr'][0])))
    label = np.array(Image.open(os.path.join(target, 'labelsTr', listing['labelsTr'][0])))
    assert image.shape == (32, 32, 3) and label.shape == (32, 32) and set(np.unique(label)) == {0, 1}
    # the same seed gives the same split
    again = convert_image_folders(str(folders['images']), str(folders['masks']), 972, 'Polyps2',
                                  unlabeled=str(folders['unlabeled']), labeled=0.25, test_fraction=0.2, seed=3,
                                  raw_root=str(tmp_path / 'raw'))
    assert json.load(open(os.path.join(again, 'split.json')))['cases'] == split['cases']


def test_lossy_masks_need_a_threshold_and_get_it(tmp_path):
    folders = make_folders(tmp_path / 'src', n=4, n_unlabeled=0, mask_format='jpg')
    with pytest.raises(ConversionError, match=r'f\d.jpg: mask values .* \(--threshold 127\)'):
        convert_image_folders(str(folders['images']), str(folders['masks']), 973, 'Lossy',
                              raw_root=str(tmp_path / 'raw'))
    assert os.listdir(tmp_path / 'raw') == []
    target = convert_image_folders(str(folders['images']), str(folders['masks']), 973, 'Lossy', threshold=127,
                                   label_map={'background': 0, 'polyp': 255}, raw_root=str(tmp_path / 'raw'))
    _, mask = _disc(seed=0)
    label = np.array(Image.open(os.path.join(target, 'labelsTr', 'f0.png')))
    assert json.load(open(os.path.join(target, 'dataset.json')))['labels'] == {'background': 0, 'polyp': 1}
    assert (label == mask).mean() > 0.97


def test_multi_class_masks_by_grey_value_or_colour(tmp_path):
    folders = make_folders(tmp_path / 'src', n=2, n_unlabeled=0, gray=True)
    for f in folders['masks'].iterdir():
        grey = np.array(Image.open(f))
        grey[:4] = 128
        Image.fromarray(grey).save(f)
    label_map = parse_label_map('{"background": 0, "a": 255, "b": 128}')
    target = convert_image_folders(str(folders['images']), str(folders['masks']), 974, 'Grey', label_map=label_map,
                                   raw_root=str(tmp_path / 'raw'))
    dataset = json.load(open(os.path.join(target, 'dataset.json')))
    assert dataset['channel_names'] == {'0': 'gray'} and dataset['labels'] == {'background': 0, 'a': 1, 'b': 2}
    assert set(np.unique(np.array(Image.open(os.path.join(target, 'labelsTr', 'f0.png'))))) == {0, 1, 2}
    # a colour label map on colour masks
    for f in folders['masks'].iterdir():
        grey = np.array(Image.open(f))
        colour = np.zeros(grey.shape + (3,), np.uint8)
        colour[grey == 255] = (255, 0, 0)
        colour[grey == 128] = (0, 0, 255)
        Image.fromarray(colour).save(f)
    target = convert_image_folders(str(folders['images']), str(folders['masks']), 975, 'Colour',
                                   label_map={'background': [0, 0, 0], 'red': [255, 0, 0], 'blue': [0, 0, 255]},
                                   raw_root=str(tmp_path / 'raw'))
    assert set(np.unique(np.array(Image.open(os.path.join(target, 'labelsTr', 'f1.png'))))) == {0, 1, 2}
    # a colour that the map does not name is refused with the file and the colour
    with pytest.raises(ConversionError, match=r'f0.png: .* values \[\[0, 0, 255\]\] that are not in the label map'):
        convert_image_folders(str(folders['images']), str(folders['masks']), 976, 'Colour2',
                              label_map={'background': [0, 0, 0], 'red': [255, 0, 0]}, raw_root=str(tmp_path / 'raw'))


@pytest.mark.parametrize('damage,message', [
    ('no_mask', r"1 image\(s\) in .* have no mask \['f2'\]"),
    ('unreadable', r'f1.jpg: cannot be read as an image'),
    ('other_file', r'notes.txt: not an image file'),
    ('size', r'f0.png: mask of 16x16 pixels, its image has 32x32'),
    ('unknown_value', r"f3.png: mask values \[7\] are neither 0/1 nor 0/255"),
    ('labeled_and_unlabeled', r"\['f1'\] are both labeled"),
])
def test_bad_input_is_refused_by_name_and_nothing_is_written(tmp_path, damage, message):
    folders = make_folders(tmp_path / 'src', n=4, n_unlabeled=1)
    if damage == 'no_mask':
        os.remove(folders['masks'] / 'f2.png')
    elif damage == 'unreadable':
        (folders['images'] / 'f1.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
    elif damage == 'other_file':
        (folders['images'] / 'notes.txt').write_text('x')
    elif damage == 'size':
        Image.fromarray(np.zeros((16, 16), np.uint8)).save(folders['masks'] / 'f0.png')
    elif damage == 'unknown_value':
        Image.fromarray(np.full((32, 32), 7, np.uint8)).save(folders['masks'] / 'f3.png')
    else:
        Image.open(folders['images'] / 'f1.jpg').save(folders['unlabeled'] / 'f1.jpg')
    raw = tmp_path / 'raw'
    with pytest.raises(ConversionError, match=message):
        convert_image_folders(str(folders['images']), str(folders['masks']), 977, 'Bad',
                              unlabeled=str(folders['unlabeled']), raw_root=str(raw))
    assert not raw.exists() or os.listdir(raw) == []


def test_command_refuses_with_the_message_alone(tmp_path, nnunet_env):
    folders = make_folders(tmp_path / 'src', n=3, n_unlabeled=0, mask_format='jpg')
    env = dict(os.environ, nnUNet_raw=str(tmp_path / 'raw'))
    proc = run_cli(['nnUNetv2_m3hl_convert_image_folders', '-i', folders['images'], '-m', folders['masks'],
                    '-d', 978, '--name', 'X'], env=env, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith('ERROR: ') and '--threshold 127' in last
    assert 'Traceback' not in proc.stderr
    run_cli(['nnUNetv2_m3hl_convert_image_folders', '-i', folders['images'], '-m', folders['masks'], '-d', 978,
             '--name', 'X', '--threshold', 127, '--labeled', 2], env=env)
    assert len(os.listdir(tmp_path / 'raw' / 'Dataset978_X' / 'imagesTr')) == 2


def test_cvc_split_holds_out_whole_sequences(tmp_path):
    test = cvc_test_frames()
    assert not test & set(CVC_TRAIN_ORDER)
    assert len(set(CVC_TRAIN_ORDER)) == len(CVC_TRAIN_ORDER)
    every_frame = set(range(1, CVC_SEQUENCES[-1][1] + 1))
    assert set(CVC_TRAIN_ORDER) | test | {133, 419, 480} == every_frame  # three frames absent from the public copy
    for s, (first, last) in enumerate(CVC_SEQUENCES, start=1):
        inside = set(range(first, last + 1))
        assert inside <= test if s in CVC_TEST_SEQUENCES else not inside & test
    # a small stand-in for the dataset: the first labeled frames, some other training frames, two test frames
    frames = list(CVC_TRAIN_ORDER[:6]) + sorted(test)[:2]
    root = tmp_path / 'cvc'
    (root / 'images').mkdir(parents=True)
    (root / 'masks').mkdir()
    for f in frames:
        image, mask = _disc(seed=f)
        Image.fromarray(image).save(root / 'images' / f'{f}.jpg')
        Image.fromarray(255 * mask).save(root / 'masks' / f'{f}.jpg', quality=70)
    target = convert_cvc(str(root), 979, labeled=2, raw_root=str(tmp_path / 'raw'))
    split = json.load(open(os.path.join(target, 'split.json')))['cases']
    assert split['labeled'] == sorted(f'cvc_{f}' for f in CVC_TRAIN_ORDER[:2])
    assert split['test'] == sorted(f'cvc_{f}' for f in sorted(test)[:2])
    assert len(split['unlabeled']) == 4
    assert json.load(open(os.path.join(target, 'dataset.json')))['labels'] == {'background': 0, 'polyp': 1}


def test_cvc_sequence_of_a_converted_frame():
    first, last = CVC_SEQUENCES[10]
    assert cvc_sequence_of(f'cvc_{first}.png') == cvc_sequence_of(f'cvc_{last}') == 11
    assert cvc_sequence_of('cvc_1') == 1 and cvc_sequence_of(f'cvc_{CVC_SEQUENCES[-1][1]}.png') == len(CVC_SEQUENCES)
    for bad in ('case_3.png', 'cvc_x.png', f'cvc_{CVC_SEQUENCES[-1][1] + 1}'):
        with pytest.raises(ValueError, match=bad.split('.')[0]):
            cvc_sequence_of(bad)
