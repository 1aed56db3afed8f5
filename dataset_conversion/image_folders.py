"""A folder of 2D images and a folder of masks with the same stems (plus, optionally, a folder of unlabeled
images) as an nnU-Net raw dataset in nnU-Net's own natural-image layout: one ``CASE_0000.png`` per case holding
all its channels (RGB or gray), ``NaturalImage2DIO`` as the reader, labels as single-channel PNGs.

Labeled frames are split with a seed into test (``imagesTs``/``labelsTs``), labeled training (``imagesTr``/
``labelsTr``) and unlabeled training (``imagesUnlabeledTr``, their masks written nowhere in the dataset); the
split is recorded in ``split.json`` beside ``dataset.json``. Masks are mapped to label indices: binary masks
(0/1 or 0/255) as they are, lossy masks (JPEG) with a foreground threshold, multi-class masks with a label map of
grey values or colours. Everything is read and checked while the dataset is built in a temporary folder, which
replaces the target only when complete: bad input leaves nothing behind.
"""
import json
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm import tqdm

from dataset_conversion.common import ConversionError, building, dataset_folder

IMAGE_ENDINGS = ('.png', '.jpg', '.jpeg', '.tif', '.tiff', '.bmp')
# PIL modes of one channel; anything else is read as colour
_GRAY_MODES = ('1', 'L', 'I;16', 'I;16B', 'I;16L', 'I')
LabelMap = Dict[str, Union[int, Sequence[int]]]


def list_images(folder: str, what: str) -> Dict[str, str]:
    """{stem: path} of the image files of ``folder``; refuses other files and two files of one stem."""
    if not os.path.isdir(folder):
        raise ConversionError(f"{folder} ({what}) is not a folder")
    found: Dict[str, str] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith('.') or os.path.isdir(path):
            continue
        stem, ending = os.path.splitext(name)
        if ending.lower() not in IMAGE_ENDINGS:
            raise ConversionError(f"{path}: not an image file of a known kind ({', '.join(IMAGE_ENDINGS)}); "
                                  f"remove it from {folder}")
        if stem in found:
            raise ConversionError(f"{path} and {found[stem]} share the stem '{stem}'; keep one of them")
        found[stem] = path
    if not found:
        raise ConversionError(f"{folder} ({what}) holds no image files ({', '.join(IMAGE_ENDINGS)})")
    return found


def _read(path: str):
    from PIL import Image
    try:
        image = Image.open(path)
        image.load()
    except Exception as e:
        raise ConversionError(f"{path}: cannot be read as an image ({type(e).__name__}: {e}); replace or remove "
                              f"it") from e
    return image


def _mode(path: str) -> str:
    from PIL import Image
    try:
        with Image.open(path) as image:
            return image.mode
    except Exception as e:
        raise ConversionError(f"{path}: cannot be read as an image ({type(e).__name__}: {e}); replace or remove "
                              f"it") from e


def image_array(path: str, rgb: bool) -> np.ndarray:
    """The image as written into the dataset: uint8 RGB (alpha dropped, gray repeated) or one gray channel
    (uint8 or uint16)."""
    image = _read(path)
    if rgb:
        return np.asarray(image.convert('RGB'))
    array = np.asarray(image)
    if array.ndim != 2 or array.dtype not in (np.uint8, np.uint16, np.bool_):
        raise ConversionError(f"{path}: a {image.mode} image; gray images must be 8 or 16 bit with one channel. "
                              f"Convert it, or pass --channels rgb")
    return array.astype(np.uint8) if array.dtype == np.bool_ else array


def parse_label_map(text_or_file: Optional[str]) -> Optional[LabelMap]:
    """A label map from JSON text or a JSON file: {"background": 0, "polyp": 255} (grey values) or
    {"background": [0, 0, 0], "tumour": [255, 0, 0]} (colours); label indices follow the order, background 0."""
    if text_or_file is None:
        return None
    text = open(text_or_file).read() if os.path.isfile(text_or_file) else text_or_file
    try:
        label_map = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConversionError(f"--label-map is neither a JSON file nor JSON text ({e}); e.g. "
                              f"'{{\"background\": 0, \"polyp\": 255}}'") from e
    if not isinstance(label_map, dict) or list(label_map)[:1] != ['background']:
        raise ConversionError("--label-map must be a JSON object whose first entry is \"background\", e.g. "
                              "'{\"background\": 0, \"polyp\": 255}'")
    kinds = {isinstance(v, int) for v in label_map.values()}
    if kinds != {True} and not all(isinstance(v, list) and len(v) == 3 for v in label_map.values()):
        raise ConversionError(f"--label-map {label_map}: give every label one grey value or one [R, G, B] colour")
    return label_map


def label_array(path: str, shape: Tuple[int, int], label_map: Optional[LabelMap], threshold: Optional[int]) \
        -> np.ndarray:
    """The mask at ``path`` as label indices (uint8)."""
    array = np.asarray(_read(path))
    if array.shape[:2] != shape:
        raise ConversionError(f"{path}: mask of {array.shape[1]}x{array.shape[0]} pixels, its image has "
                              f"{shape[1]}x{shape[0]}; masks must match their images")
    colours = label_map is not None and not isinstance(next(iter(label_map.values())), int)
    if array.ndim == 3:
        array = array[..., :3]
        if not colours:
            if not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])):
                raise ConversionError(f"{path}: a colour mask; pass --label-map with a colour per label, e.g. "
                                      f"'{{\"background\": [0, 0, 0], \"tumour\": [255, 0, 0]}}'")
            array = array[..., 0]
    elif colours:
        raise ConversionError(f"{path}: a grey mask, but --label-map gives colours; give grey values instead")
    if threshold is not None:
        return (array > threshold).astype(np.uint8)
    if label_map is None:
        values = set(np.unique(array).tolist())
        if values <= {0, 1}:
            return array.astype(np.uint8)
        if values <= {0, 255}:
            return (array == 255).astype(np.uint8)
        raise ConversionError(f"{path}: mask values {_few(sorted(values))} are neither 0/1 nor 0/255. Lossy (JPEG) "
                              f"masks need a foreground threshold (--threshold 127); multi-class masks need "
                              f"--label-map")
    labels = np.zeros(array.shape[:2], dtype=np.uint8)
    known = np.zeros(array.shape[:2], dtype=bool)
    for index, value in enumerate(label_map.values()):
        hit = np.all(array == np.array(value), axis=-1) if colours else array == value
        labels[hit], known = index, known | hit
    if not known.all():
        unknown = np.unique(array[~known].reshape(-1, 3) if colours else array[~known], axis=0)
        raise ConversionError(f"{path}: {int((~known).sum())} pixels have values {_few(unknown.tolist())} that "
                              f"are not in the label map {dict(label_map)}; add them to --label-map (or use "
                              f"--threshold for lossy binary masks)")
    return labels


def _few(values: list, n: int = 8) -> str:
    return str(values[:n])[:-1] + (', ...]' if len(values) > n else ']')


def case_identifier(stem: str, prefix: str = '') -> str:
    """An nnU-Net case identifier for a file stem: letters, digits, '-' and '_' kept, anything else '-'."""
    return prefix + re.sub(r'[^A-Za-z0-9_-]', '-', stem)


def choose_split(labeled_stems: Sequence[str], seed: int, labeled: Optional[float], test_fraction: float,
                 test: Optional[Sequence[str]] = None, labeled_choice: Optional[Sequence[str]] = None) \
        -> Dict[str, List[str]]:
    """Split the stems that have masks into test, labeled and unlabeled (a seeded choice, or the lists given).
    ``labeled``: a count (>= 1) or a share (0..1) of the training stems; None labels all of them."""
    stems = sorted(labeled_stems)
    rng = np.random.default_rng(seed)
    if test is None:
        if not 0 <= test_fraction < 1:
            raise ConversionError(f"--test-fraction {test_fraction}: choose 0 <= f < 1")
        test = rng.choice(stems, int(round(test_fraction * len(stems))), replace=False).tolist()
    unknown = sorted(set(test) - set(stems))
    if unknown:
        raise ConversionError(f"test cases {_few(unknown)} have no mask")
    train = [s for s in stems if s not in set(test)]
    if labeled_choice is None:
        if labeled is None:
            count = len(train)
        elif labeled >= 1:
            if labeled != int(labeled):
                raise ConversionError(f"--labeled {labeled}: give a whole number of frames or a share below 1")
            count = int(labeled)
        elif labeled > 0:
            count = max(1, int(round(labeled * len(train))))
        else:
            raise ConversionError(f"--labeled {labeled}: give a number of frames (>= 1) or a share (0 < f < 1)")
        if count > len(train):
            raise ConversionError(f"--labeled {labeled}: only {len(train)} training frames have masks")
        labeled_choice = rng.choice(train, count, replace=False).tolist()
    unknown = sorted(set(labeled_choice) - set(train))
    if unknown:
        raise ConversionError(f"labeled cases {_few(unknown)} have no mask or are test cases")
    return {'test': sorted(test), 'labeled': sorted(labeled_choice),
            'unlabeled': [s for s in train if s not in set(labeled_choice)]}


def convert_image_folders(images: str, masks: str, dataset_id: int, name: str, unlabeled: Optional[str] = None,
                          labeled: Optional[float] = None, test_fraction: float = 0.0, seed: int = 0,
                          threshold: Optional[int] = None, label_map: Optional[LabelMap] = None,
                          channels: str = 'auto', raw_root: Optional[str] = None, overwrite: bool = False,
                          case_prefix: str = '', test: Optional[Sequence[str]] = None,
                          labeled_choice: Optional[Sequence[str]] = None, description: str = '') -> str:
    """Write ``Dataset{dataset_id}_{name}`` (see the module's description); returns its folder."""
    raw_root = raw_root or os.environ.get('nnUNet_raw')
    if not raw_root:
        raise ConversionError("nnUNet_raw is not set: export it or pass the output folder")
    if channels not in ('auto', 'rgb', 'gray'):
        raise ConversionError(f"--channels {channels}: choose auto, rgb or gray")
    if threshold is not None and not 0 <= threshold < 255:
        raise ConversionError(f"--threshold {threshold}: choose 0..254 (foreground is above it)")
    if threshold is not None and label_map is not None and len(label_map) != 2:
        raise ConversionError("--threshold makes binary masks; a --label-map with it may only name background and "
                              "the foreground")
    image_files, mask_files = list_images(images, 'images'), list_images(masks, 'masks')
    unlabeled_files = list_images(unlabeled, 'unlabeled images') if unlabeled else {}
    without_mask, without_image = sorted(set(image_files) - set(mask_files)), sorted(set(mask_files) - set(image_files))
    if without_mask or without_image:
        raise ConversionError(
            f"images and masks must have the same stems: {len(without_mask)} image(s) in {images} have no mask "
            f"{_few(without_mask)}, {len(without_image)} mask(s) in {masks} have no image {_few(without_image)}. "
            f"Put images without masks in a folder of unlabeled images (-u)")
    both = sorted(set(unlabeled_files) & set(image_files))
    if both:
        raise ConversionError(f"{_few(both)} are both labeled ({images}) and unlabeled ({unlabeled}); keep each "
                              f"frame in one folder")
    identifiers = {stem: case_identifier(stem, case_prefix) for stem in list(image_files) + list(unlabeled_files)}
    if len(set(identifiers.values())) != len(identifiers):
        seen: Dict[str, str] = {}
        for stem, identifier in identifiers.items():
            if identifier in seen:
                raise ConversionError(f"'{stem}' and '{seen[identifier]}' both become case '{identifier}'; rename "
                                      f"one of them")
            seen[identifier] = stem
    split = choose_split(list(mask_files), seed, labeled, test_fraction, test, labeled_choice)
    all_images = dict(image_files, **unlabeled_files)
    rgb = channels == 'rgb' or (channels == 'auto' and any(_mode(p) not in _GRAY_MODES for p in all_images.values()))
    label_names = list(label_map) if label_map is not None else ['background', 'foreground']
    target = dataset_folder(raw_root, dataset_id, name)
    jobs: List[Tuple[str, str, Optional[str]]] = \
        [(s, 'imagesTs', 'labelsTs') for s in split['test']] + \
        [(s, 'imagesTr', 'labelsTr') for s in split['labeled']] + \
        [(s, 'imagesUnlabeledTr', None) for s in split['unlabeled'] + sorted(unlabeled_files)]
    from PIL import Image
    with building(target, overwrite) as tmp:
        for sub in ('imagesTr', 'labelsTr', 'imagesUnlabeledTr', 'imagesTs', 'labelsTs'):
            os.makedirs(os.path.join(tmp, sub))
        for stem, image_dir, label_dir in tqdm(jobs, desc=f'Writing {os.path.basename(target)}'):
            pixels = image_array(all_images[stem], rgb)
            Image.fromarray(pixels).save(os.path.join(tmp, image_dir, f'{identifiers[stem]}_0000.png'))
            if label_dir is not None:
                labels = label_array(mask_files[stem], pixels.shape[:2], label_map, threshold)
                Image.fromarray(labels).save(os.path.join(tmp, label_dir, f'{identifiers[stem]}.png'))
        dataset_json = {
            'channel_names': {'0': 'R', '1': 'G', '2': 'B'} if rgb else {'0': 'gray'},
            'labels': {label: index for index, label in enumerate(label_names)},
            'numTraining': len(split['labeled']), 'file_ending': '.png',
            'overwrite_image_reader_writer': 'NaturalImage2DIO', 'name': name,
            'description': description or f"{images} + {masks}" + (f" + unlabeled {unlabeled}" if unlabeled else ''),
        }
        with open(os.path.join(tmp, 'dataset.json'), 'w') as f:
            json.dump(dataset_json, f, indent=1)
        record = {'seed': seed, 'test_fraction': test_fraction, 'labeled': labeled, 'threshold': threshold,
                  'label_map': label_map, 'sources': {'images': os.path.abspath(images),
                                                      'masks': os.path.abspath(masks),
                                                      'unlabeled': os.path.abspath(unlabeled) if unlabeled else None},
                  'cases': {part: [identifiers[s] for s in stems] for part, stems in split.items()},
                  'unlabeled_folder_cases': [identifiers[s] for s in sorted(unlabeled_files)]}
        with open(os.path.join(tmp, 'split.json'), 'w') as f:
            json.dump(record, f, indent=1)
    print(f"{target}: {len(split['labeled'])} labeled, {len(split['unlabeled']) + len(unlabeled_files)} unlabeled, "
          f"{len(split['test'])} test frames ({'RGB' if rgb else 'gray'}); labels {dataset_json['labels']}")
    return target
