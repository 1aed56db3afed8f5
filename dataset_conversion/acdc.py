"""ACDC -> an nnU-Net raw dataset with the SSL4MIS semi-supervised protocol.

Two input layouts, detected from the folder:
- the official release: ``ACDC_ROOT/training/patient<NNN>/`` with ``Info.cfg``, ``patient<NNN>_frameYY.nii.gz``
  and ``patient<NNN>_frameYY_gt.nii.gz`` for the two annotated frames (ED and ES, numbers from ``Info.cfg``);
  files are copied byte for byte, so geometry and voxel values are those of the release;
- the SSL4MIS h5 preprocessing (``dataset_conversion.acdc_h5``): training frames rebuilt from their slices,
  written with a nominal spacing.
Output (DESIGN section 2): labeled patients and the 10 validation patients in ``imagesTr``/``labelsTr``,
the other train patients in ``imagesUnlabeledTr`` (no label anywhere), the 20 test patients in
``imagesTs``/``labelsTs``, and ``splits_final.json`` with one fold (train = labeled, val = validation).
Case identifiers are ``patient<NNN>_ED`` and ``patient<NNN>_ES`` for both layouts, and the split is the same.
"""
import json
import os
import shutil
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from dataset_conversion.acdc_h5 import NOMINAL_SPACING, SSL4MISFrames, looks_like_ssl4mis
from dataset_conversion.common import NOMINAL_SPACING_KEY, ConversionError, building, dataset_folder, safe_join, \
    write_dataset_json
from dataset_conversion.splits import ACDC_TEST, ACDC_TRAIN_ORDER, ACDC_VALIDATION
from nnunetv2_m3hl.integrity import IncompleteScanError, check_scan_complete

DEFAULT_LABELED = 7
LABELS = {'background': 0, 'RV': 1, 'MYO': 2, 'LV': 3}
PHASES = ('ED', 'ES')


def patient_name(number: int) -> str:
    return f'patient{number:03d}'


def acdc_patient_of(case: str) -> int:
    """The patient number of a converted frame (``patient012_ED``, or a file of it). A patient's two frames share
    its heart and its scan, so results are also read per patient."""
    stem = os.path.basename(case).split('.')[0]
    patient, _, phase = stem.partition('_')
    if not (patient.startswith('patient') and patient[7:].isdigit() and phase in PHASES):
        raise ValueError(f"{case}: not a converted ACDC frame (patient<NNN>_ED or patient<NNN>_ES)")
    return int(patient[7:])


def read_info(info_file: str) -> Dict[str, int]:
    """ED and ES frame numbers of one patient."""
    if not os.path.isfile(info_file):
        raise ConversionError(f"{info_file} is missing: every ACDC patient folder needs its Info.cfg (with the ED "
                              f"and ES frame numbers). Restore it from the official release.")
    values = {}
    with open(info_file) as f:
        for line in f:
            if ':' in line:
                key, value = line.split(':', 1)
                values[key.strip()] = value.strip()
    try:
        return {phase: int(float(values[phase])) for phase in PHASES}
    except (KeyError, ValueError) as e:
        raise ConversionError(f"{info_file}: no valid 'ED:' and 'ES:' frame numbers ({e}). Restore the file from "
                              f"the official release.") from e


def _geometry(image: sitk.Image):
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def check_pair(image_file: str, label_file: str) -> None:
    """Image and label exist, share their geometry, and the label holds only ACDC's values."""
    for f in (image_file, label_file):
        if not os.path.isfile(f):
            raise ConversionError(f"{f} is missing. Restore it from the official ACDC release.")
        try:
            check_scan_complete(f)
        except IncompleteScanError as e:
            raise ConversionError(str(e)) from e
    try:
        image, label = sitk.ReadImage(image_file), sitk.ReadImage(label_file)
    except RuntimeError as e:
        raise ConversionError(f"{image_file} or its label cannot be read ({e}); restore them from the release.") from e
    mismatches = [(name, a, b) for name, a, b in zip(('size', 'spacing', 'origin', 'direction'),
                                                    _geometry(image), _geometry(label))
                  if len(a) != len(b) or not np.allclose(a, b, atol=1e-4)]
    if mismatches:
        name, a, b = mismatches[0]
        raise ConversionError(f"{label_file}: {name} {b} differs from its image {image_file} ({a}). Image and "
                              f"label must share their geometry.")
    values = np.unique(sitk.GetArrayViewFromImage(label))
    unexpected = sorted(set(values.tolist()) - set(LABELS.values()))
    if unexpected:
        raise ConversionError(f"{label_file}: unexpected label values {unexpected}; ACDC labels are 0 background, "
                              f"1 RV, 2 MYO, 3 LV.")


def frame_files(training_folder: str, number: int) -> Dict[str, Dict[str, str]]:
    """{phase: {'image': path, 'label': path}} of one patient, validated."""
    name = patient_name(number)
    folder = os.path.join(training_folder, name)
    if not os.path.isdir(folder):
        raise ConversionError(f"{folder} is missing: the protocol needs all 100 training patients of ACDC.")
    frames = read_info(os.path.join(folder, 'Info.cfg'))
    result = {}
    for phase in PHASES:
        stem = os.path.join(folder, f'{name}_frame{frames[phase]:02d}')
        result[phase] = {'image': stem + '.nii.gz', 'label': stem + '_gt.nii.gz'}
        check_pair(result[phase]['image'], result[phase]['label'])
    return result


def protocol_split(labeled: Optional[int] = None, labeled_patients: Optional[Sequence[int]] = None
                   ) -> Dict[str, List[int]]:
    """Patient numbers per role: labeled, unlabeled, validation, test."""
    if labeled_patients is not None:
        chosen = [int(p) for p in labeled_patients]
        outside = [p for p in chosen if p not in ACDC_TRAIN_ORDER]
        if outside:
            raise ConversionError(f"labeled patients {outside} are not in the protocol's 70 training patients (they "
                                  f"are validation/test patients or do not exist)")
        if len(set(chosen)) != len(chosen):
            raise ConversionError(f"labeled patients repeat: {chosen}")
    else:
        n = DEFAULT_LABELED if labeled is None else labeled
        if not 1 <= n <= len(ACDC_TRAIN_ORDER):
            raise ConversionError(f"--labeled {n}: the protocol has {len(ACDC_TRAIN_ORDER)} training patients; "
                                  f"choose 1..{len(ACDC_TRAIN_ORDER)}")
        chosen = list(ACDC_TRAIN_ORDER[:n])
    return {'labeled': chosen, 'unlabeled': [p for p in ACDC_TRAIN_ORDER if p not in chosen],
            'validation': list(ACDC_VALIDATION), 'test': list(ACDC_TEST)}


def write_splits_final(dataset_name: str, splits: list, raw_folder: str) -> str:
    """Where nnU-Net reads it (nnUNet_preprocessed/Dataset<ID>/); a copy stays in the raw dataset."""
    with open(os.path.join(raw_folder, 'splits_final.json'), 'w') as f:
        json.dump(splits, f, indent=1)
    preprocessed = os.environ.get('nnUNet_preprocessed')
    if not preprocessed:
        print(f"nnUNet_preprocessed is not set: copy {raw_folder}/splits_final.json to "
              f"$nnUNet_preprocessed/{dataset_name}/ before training")
        return os.path.join(raw_folder, 'splits_final.json')
    target = os.path.join(preprocessed, dataset_name)
    os.makedirs(target, exist_ok=True)
    shutil.copyfile(os.path.join(raw_folder, 'splits_final.json'), os.path.join(target, 'splits_final.json'))
    return os.path.join(target, 'splits_final.json')


def detect_layout(acdc_root: str) -> str:
    """'official' (training/patient<NNN>/ with NIfTI and Info.cfg) or 'ssl4mis' (the h5 files of SSL4MIS)."""
    official = os.path.isdir(os.path.join(acdc_root, 'training'))
    ssl4mis = looks_like_ssl4mis(acdc_root)
    if official and ssl4mis:
        raise ConversionError(f"{acdc_root} holds both the official release (training/) and the SSL4MIS h5 files "
                              f"(data/); point -i to one of them")
    if not (official or ssl4mis):
        raise ConversionError(f"{acdc_root}: neither training/patient<NNN>/ (official ACDC release) nor "
                              f"data/patient<NNN>_frame<FF>*.h5 (SSL4MIS preprocessing) found; -i must be the root of "
                              f"one of them")
    return 'official' if official else 'ssl4mis'


def _official_writer(acdc_root: str, split: Dict[str, List[int]]) -> Callable[[int, str, str, Optional[str]], None]:
    """Validate every frame of the release, then copy files byte for byte (geometry as released)."""
    training = os.path.join(acdc_root, 'training')
    files = {p: frame_files(training, p) for p in tqdm(sorted(sum(split.values(), [])), desc='Checking ACDC')}

    def write(p: int, phase: str, image_path: str, label_path: Optional[str]) -> None:
        shutil.copyfile(files[p][phase]['image'], image_path)
        if label_path is not None:
            shutil.copyfile(files[p][phase]['label'], label_path)
    return write


def _ssl4mis_writer(acdc_root: str, split: Dict[str, List[int]]) -> Callable[[int, str, str, Optional[str]], None]:
    """Validate every frame of the h5 layout (training frames from their slices), then write NIfTI with the
    nominal spacing."""
    frames = SSL4MISFrames(acdc_root)
    frames.check_lists({'train.list': [patient_name(p) for p in ACDC_TRAIN_ORDER],
                        'train_slices.list': [patient_name(p) for p in ACDC_TRAIN_ORDER],
                        'val.list': [patient_name(p) for p in ACDC_VALIDATION],
                        'test.list': [patient_name(p) for p in ACDC_TEST]})
    from_slices = set(split['labeled']) | set(split['unlabeled'])
    for p in tqdm(sorted(sum(split.values(), [])), desc='Checking ACDC (SSL4MIS h5)'):
        for phase in PHASES:
            frames.frame(patient_name(p), phase, p in from_slices)

    def write(p: int, phase: str, image_path: str, label_path: Optional[str]) -> None:
        image, label = frames.frame(patient_name(p), phase, p in from_slices)
        frames.write(image, label, image_path, label_path)
    return write


def convert_acdc(acdc_root: str, dataset_id: int, labeled: Optional[int] = None,
                 labeled_patients: Optional[Sequence[int]] = None, name: str = 'ACDC', overwrite: bool = False,
                 raw_root: Optional[str] = None) -> str:
    """Either ACDC layout (detected) -> an nnU-Net raw dataset with the SSL4MIS split."""
    raw_root = raw_root or os.environ.get('nnUNet_raw')
    if not raw_root:
        raise ConversionError("nnUNet_raw is not set: export it (the dataset is written there)")
    if not os.path.isdir(acdc_root):
        raise ConversionError(f"{acdc_root} is not a folder: -i must be the ACDC release root (training/) or the "
                              f"SSL4MIS ACDC folder (data/ and *.list)")
    layout = detect_layout(acdc_root)
    split = protocol_split(labeled, labeled_patients)
    # validate every input before anything is written
    write_case = (_official_writer if layout == 'official' else _ssl4mis_writer)(acdc_root, split)
    target = dataset_folder(raw_root, dataset_id, name)
    with building(target, overwrite) as tmp:
        for sub in ('imagesTr', 'labelsTr', 'imagesUnlabeledTr', 'imagesTs', 'labelsTs'):
            os.makedirs(os.path.join(tmp, sub))
        destinations = {'labeled': ('imagesTr', 'labelsTr'), 'validation': ('imagesTr', 'labelsTr'),
                        'unlabeled': ('imagesUnlabeledTr', None), 'test': ('imagesTs', 'labelsTs')}
        jobs = [(p, phase, *destinations[role]) for role, patients in split.items() for p in patients
                for phase in PHASES]
        for p, phase, image_dir, label_dir in tqdm(jobs, desc=f'Writing ACDC ({layout} layout)'):
            case = f'{patient_name(p)}_{phase}'
            write_case(p, phase, safe_join(os.path.join(tmp, image_dir), f'{case}_0000.nii.gz'),
                       None if label_dir is None else safe_join(os.path.join(tmp, label_dir), f'{case}.nii.gz'))
        n_training = 2 * (len(split['labeled']) + len(split['validation']))
        description = (f"ACDC, SSL4MIS protocol ({layout} layout): {len(split['labeled'])} labeled patients "
                       f"({', '.join(map(str, split['labeled']))}), {len(split['unlabeled'])} unlabeled, "
                       f"{len(split['validation'])} validation, {len(split['test'])} test; ED and ES frames")
        extra = None
        if layout == 'ssl4mis':
            description += (f". The SSL4MIS h5 files store no geometry: spacing {NOMINAL_SPACING} (x, y, z) is "
                            f"nominal, not physical")
            extra = {NOMINAL_SPACING_KEY: list(NOMINAL_SPACING)}
        write_dataset_json(tmp, LABELS, n_training, name, description, channel_names={'0': 'cineMRI'}, extra=extra)
        splits = [{'train': [f'{patient_name(p)}_{ph}' for p in split['labeled'] for ph in PHASES],
                   'val': [f'{patient_name(p)}_{ph}' for p in split['validation'] for ph in PHASES]}]
    write_splits_final(os.path.basename(target), splits, target)
    print(f"{target}: {2 * len(split['labeled'])} labeled + {2 * len(split['validation'])} validation volumes in "
          f"imagesTr, {2 * len(split['unlabeled'])} unlabeled, {2 * len(split['test'])} test")
    return target
