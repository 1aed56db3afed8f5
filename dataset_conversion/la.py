"""Left Atrium (2018 LA segmentation challenge) -> an nnU-Net raw dataset with the UA-MT protocol.

Two input layouts, detected automatically:
- UA-MT: ``<CASE>/mri_norm2.h5`` with ``image`` (float32) and ``label`` (0/1), axes x, y, z, no spacing
  stored; the challenge's 0.625 mm isotropic spacing is written.
- challenge: ``<CASE>/lgemri.nrrd`` and ``<CASE>/laendo.nrrd`` (mask 0/255, written as 0/1), geometry
  from the headers.
The 20 test cases go to ``imagesTs``/``labelsTs``; labeled = the first N of the train order; the other
train cases to ``imagesUnlabeledTr``. The protocol has no validation set: nnU-Net validates on the
labeled cases (``splits_final.json``: val = train), and the test set is never used for selection.
"""
import os
from typing import Dict, Optional, Tuple

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from dataset_conversion.acdc import write_splits_final
from dataset_conversion.common import ConversionError, building, dataset_folder, safe_join, write_dataset_json, \
    write_image
from dataset_conversion.splits import LA_TEST, LA_TRAIN_ORDER
from nnunetv2_m3hl.integrity import IncompleteScanError, check_scan_complete

DEFAULT_LABELED = 8
UAMT_SPACING = (0.625, 0.625, 0.625)
H5_NAME = 'mri_norm2.h5'
NRRD_IMAGE, NRRD_LABEL = 'lgemri.nrrd', 'laendo.nrrd'


def detect_layout(root: str) -> str:
    if not os.path.isdir(root):
        raise ConversionError(f"{root} is not a folder: -i must hold one folder per LA case")
    cases = [d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))]
    has_h5 = any(os.path.isfile(os.path.join(root, c, H5_NAME)) for c in cases)
    has_nrrd = any(os.path.isfile(os.path.join(root, c, NRRD_IMAGE)) for c in cases)
    if has_h5 and has_nrrd:
        raise ConversionError(f"{root} mixes the UA-MT layout (<CASE>/{H5_NAME}) and the challenge layout "
                              f"(<CASE>/{NRRD_IMAGE}); point -i to one of them")
    if not (has_h5 or has_nrrd):
        raise ConversionError(f"{root}: no <CASE>/{H5_NAME} nor <CASE>/{NRRD_IMAGE} found; -i must be the folder "
                              f"holding the LA case folders")
    return 'uamt' if has_h5 else 'challenge'


def _check_label(label: np.ndarray, allowed: Tuple[int, ...], path: str) -> None:
    unexpected = sorted(set(np.unique(label).tolist()) - set(allowed))
    if unexpected:
        raise ConversionError(f"{path}: unexpected label values {unexpected} (expected {list(allowed)}); "
                              f"restore the file from the release")


def load_uamt(case_folder: str) -> Tuple[sitk.Image, sitk.Image]:
    import h5py
    path = os.path.join(case_folder, H5_NAME)
    if not os.path.isfile(path):
        raise ConversionError(f"{path} is missing: the protocol needs every case of the UA-MT split")
    try:
        with h5py.File(path, 'r') as f:
            image, label = f['image'][()], f['label'][()]
    except (OSError, KeyError) as e:
        raise ConversionError(f"{path}: cannot read datasets 'image' and 'label' ({e}); restore the file") from e
    if image.shape != label.shape or image.ndim != 3:
        raise ConversionError(f"{path}: image {image.shape} and label {label.shape} must be 3D of the same shape")
    _check_label(label, (0, 1), path)
    # h5 axes are x, y, z; SimpleITK arrays are z, y, x
    img = sitk.GetImageFromArray(np.ascontiguousarray(image.astype(np.float32).transpose(2, 1, 0)))
    seg = sitk.GetImageFromArray(np.ascontiguousarray(label.astype(np.uint8).transpose(2, 1, 0)))
    for i in (img, seg):
        i.SetSpacing(UAMT_SPACING)
    return img, seg


def load_challenge(case_folder: str) -> Tuple[sitk.Image, sitk.Image]:
    image_path, label_path = os.path.join(case_folder, NRRD_IMAGE), os.path.join(case_folder, NRRD_LABEL)
    for p in (image_path, label_path):
        if not os.path.isfile(p):
            raise ConversionError(f"{p} is missing: every challenge case needs {NRRD_IMAGE} and {NRRD_LABEL}")
        try:
            check_scan_complete(p)
        except IncompleteScanError as e:
            raise ConversionError(str(e)) from e
    try:
        img, seg = sitk.ReadImage(image_path), sitk.ReadImage(label_path)
    except RuntimeError as e:
        raise ConversionError(f"{case_folder}: cannot read the nrrd files ({e})") from e
    if img.GetSize() != seg.GetSize() or not np.allclose(img.GetSpacing(), seg.GetSpacing()) or \
            not np.allclose(img.GetOrigin(), seg.GetOrigin()):
        raise ConversionError(f"{label_path}: geometry (size {seg.GetSize()}, spacing {seg.GetSpacing()}) differs "
                              f"from {image_path} (size {img.GetSize()}, spacing {img.GetSpacing()})")
    label = sitk.GetArrayFromImage(seg)
    _check_label(label, (0, 255), label_path)
    binary = sitk.GetImageFromArray((label == 255).astype(np.uint8))
    binary.CopyInformation(seg)
    return img, binary


def protocol_split(labeled: int) -> Dict[str, list]:
    if not 1 <= labeled <= len(LA_TRAIN_ORDER):
        raise ConversionError(f"--labeled {labeled}: the protocol has {len(LA_TRAIN_ORDER)} training scans; "
                              f"choose 1..{len(LA_TRAIN_ORDER)}")
    return {'labeled': list(LA_TRAIN_ORDER[:labeled]), 'unlabeled': list(LA_TRAIN_ORDER[labeled:]),
            'test': list(LA_TEST)}


def convert_la(la_root: str, dataset_id: int, labeled: int = DEFAULT_LABELED, name: str = 'LA',
               overwrite: bool = False, raw_root: Optional[str] = None) -> str:
    raw_root = raw_root or os.environ.get('nnUNet_raw')
    if not raw_root:
        raise ConversionError("nnUNet_raw is not set: export it (the dataset is written there)")
    split = protocol_split(labeled)
    layout = detect_layout(la_root)
    load = load_uamt if layout == 'uamt' else load_challenge
    missing = [c for c in sum(split.values(), []) if not os.path.isdir(os.path.join(la_root, c))]
    if missing:
        raise ConversionError(f"{os.path.join(la_root, missing[0])} is missing ({len(missing)} case folder(s) of the "
                              f"protocol missing); the split needs all 100 cases")
    target = dataset_folder(raw_root, dataset_id, name)
    with building(target, overwrite) as tmp:
        for sub in ('imagesTr', 'labelsTr', 'imagesUnlabeledTr', 'imagesTs', 'labelsTs'):
            os.makedirs(os.path.join(tmp, sub))
        destinations = {'labeled': ('imagesTr', 'labelsTr'), 'unlabeled': ('imagesUnlabeledTr', None),
                        'test': ('imagesTs', 'labelsTs')}
        jobs = [(case, *destinations[role]) for role, cases in split.items() for case in cases]
        for case, image_dir, label_dir in tqdm(jobs, desc=f'Converting LA ({layout} layout)'):
            image, label = load(os.path.join(la_root, case))
            write_image(image, safe_join(os.path.join(tmp, image_dir), f'{case}_0000.nii.gz'))
            if label_dir is not None:
                write_image(label, safe_join(os.path.join(tmp, label_dir), f'{case}.nii.gz'))
        write_dataset_json(tmp, {'background': 0, 'left atrium': 1}, len(split['labeled']), name,
                           f"LA, UA-MT protocol ({layout} layout): {len(split['labeled'])} labeled, "
                           f"{len(split['unlabeled'])} unlabeled, {len(split['test'])} test. No validation set: "
                           f"nnU-Net validates on the labeled cases; the test set is never used for selection.")
    splits = [{'train': split['labeled'], 'val': split['labeled']}]
    write_splits_final(os.path.basename(target), splits, target)
    print(f"{target}: {len(split['labeled'])} labeled, {len(split['unlabeled'])} unlabeled, {len(split['test'])} test. "
          f"The LA protocol has no validation set: nnU-Net's validation uses the labeled training cases, and the "
          f"test set is never used for model selection.")
    return target
