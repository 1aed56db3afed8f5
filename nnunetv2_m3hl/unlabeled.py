"""Unlabeled scans: discovery and validation of ``imagesUnlabeledTr/``, incremental preprocessing with
the dataset's own plans and preprocessor, and the data loader.

Preprocessed cases live in ``nnUNet_preprocessed/Dataset<ID>/<data_identifier>_unlabeled/`` in
nnU-Net's storage format. ``m3hl_manifest.json`` there records the identity of the plans and of every
source file; only cases listed in it are ever read, and a case is listed only after all of its files
have been moved into place, so an interrupted run is resumed and never half-read.
"""
import hashlib
import json
import multiprocessing
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from time import sleep
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from batchgenerators.utilities.file_and_folder_operations import join, load_json, load_pickle, write_pickle
from filelock import FileLock, Timeout
from tqdm import tqdm

from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2_m3hl.integrity import IncompleteScanError, check_scan_complete
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

UNLABELED_IMAGES_FOLDER = 'imagesUnlabeledTr'
MANIFEST_NAME = 'm3hl_manifest.json'
MANIFEST_VERSION = 1
LOCK_NAME = '.m3hl-lock'
_TMP_PREFIX = '.m3hl-tmp-'
# the files nnU-Net's blosc2 storage writes for one case
_CASE_FILE_SUFFIXES = ('.b2nd', '_seg.b2nd', '.pkl')


class UnlabeledDataError(RuntimeError):
    """Bad or missing unlabeled data; the message names the file and the fix."""


@dataclass(frozen=True)
class UnlabeledCase:
    identifier: str
    image_files: Tuple[str, ...]


def unlabeled_folder_of(raw_dataset_folder: str) -> str:
    return join(raw_dataset_folder, UNLABELED_IMAGES_FOLDER)


def preprocessed_unlabeled_folder(preprocessed_dataset_folder_base: str, data_identifier: str) -> str:
    return join(preprocessed_dataset_folder_base, f'{data_identifier}_unlabeled')


def _labeled_cases(raw_dataset_folder: str, dataset_json: dict) -> Dict[str, dict]:
    """The labeled cases as nnU-Net lists them ({identifier: {'images': [...], 'label': ...}})."""
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
    return get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json)


def declared_channels(dataset_json: dict) -> List[str]:
    """The channel names of ``dataset.json`` in channel order."""
    names = dataset_json.get('channel_names', dataset_json.get('modality', {'0': 'image'}))
    return [names[k] for k in sorted(names, key=int)]


def image_files_per_case(labeled_cases: Dict[str, dict], dataset_json: dict) -> int:
    """How many image files one case has, read off the labeled cases as nnU-Net lists them: one per channel, or
    fewer where the reader finds several channels in one file (an RGB ``CASE_0000.png``)."""
    counts: Dict[int, str] = {}
    for identifier, case in sorted(labeled_cases.items()):
        counts.setdefault(len(case['images']), identifier)
    if not counts:
        return len(declared_channels(dataset_json))
    if len(counts) > 1:
        examples = ', '.join(f"'{i}' has {n}" for n, i in sorted(counts.items()))
        raise UnlabeledDataError(
            f"The labeled cases of imagesTr differ in their number of image files ({examples}), so it is not clear "
            f"how many files an unlabeled case needs. Give every case the same files (nnU-Net's "
            f"--verify_dataset_integrity names the odd ones).")
    return next(iter(counts))


def discover_unlabeled_cases(raw_dataset_folder: str, dataset_json: dict) -> List[UnlabeledCase]:
    """List and validate the cases of ``imagesUnlabeledTr/`` the way nnU-Net lists ``imagesTr``: file ending and
    names are checked, and every case must have as many files as each labeled case (one per channel, or one RGB
    file). How many channels those files hold is checked when they are read (``check_channel_count``)."""
    folder = unlabeled_folder_of(raw_dataset_folder)
    if not os.path.isdir(folder):
        raise UnlabeledDataError(
            f"No unlabeled scans: {folder} does not exist. M3HL learns from unlabeled scans: add them to "
            f"{UNLABELED_IMAGES_FOLDER}/ (named like imagesTr, e.g. CASE_0000{dataset_json['file_ending']}), "
            f"or train the supervised baseline with -tr nnUNetTrainer.")
    file_ending = dataset_json['file_ending']
    labeled_cases = _labeled_cases(raw_dataset_folder, dataset_json)
    n_files = image_files_per_case(labeled_cases, dataset_json)
    n_channels = len(declared_channels(dataset_json))
    per_case = f"{n_files} file(s) per case as in imagesTr" + (
        f" ({n_channels} channels in each file)" if n_files == 1 and n_channels > 1 else '')
    pattern = re.compile(r'(.+)_(\d{4})' + re.escape(file_ending))
    files_per_identifier: Dict[str, Dict[int, str]] = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith('.'):
            continue
        path = join(folder, name)
        if not name.endswith(file_ending):
            raise UnlabeledDataError(
                f"{path}: wrong file ending; dataset.json says file_ending is '{file_ending}'. Convert the scan "
                f"to {file_ending} or remove it from {UNLABELED_IMAGES_FOLDER}/.")
        match = pattern.fullmatch(name)
        if match is None:
            raise UnlabeledDataError(
                f"{path}: the name does not follow nnU-Net's CASE_0000{file_ending} convention (a 4-digit "
                f"channel index). Rename it, e.g. to {name[:-len(file_ending)]}_0000{file_ending}.")
        identifier, channel = match.group(1), int(match.group(2))
        if channel >= n_files:
            raise UnlabeledDataError(
                f"{path}: channel {channel:04d}, but this dataset has {per_case} (0000..{n_files - 1:04d}). "
                f"Remove the extra file.")
        files_per_identifier.setdefault(identifier, {})[channel] = path
    if not files_per_identifier:
        raise UnlabeledDataError(
            f"No unlabeled scans: {folder} is empty. Add unlabeled images there (named like imagesTr), or "
            f"train the supervised baseline with -tr nnUNetTrainer.")
    cases = []
    for identifier, files in sorted(files_per_identifier.items()):
        missing = [c for c in range(n_files) if c not in files]
        if missing:
            raise UnlabeledDataError(
                f"{join(folder, identifier)}_{missing[0]:04d}{file_ending} is missing: every unlabeled case needs "
                f"the {per_case}. Add the missing file or remove the case's files.")
        if identifier in labeled_cases:
            raise UnlabeledDataError(
                f"{files[0]}: identifier '{identifier}' is also a labeled case in imagesTr. Unlabeled "
                f"identifiers must be distinct: rename the unlabeled scan (e.g. {identifier}_u).")
        cases.append(UnlabeledCase(identifier, tuple(files[c] for c in range(n_files))))
    return cases


def check_channel_count(case: UnlabeledCase, image: np.ndarray, dataset_json: dict, reader_name: str) -> None:
    """Refuse a case whose files, as the dataset's reader returns them, do not hold the channels of
    ``dataset.json`` (as nnU-Net's ``verify_dataset_integrity`` checks the labeled cases)."""
    channels = declared_channels(dataset_json)
    if image.shape[0] != len(channels):
        raise UnlabeledDataError(
            f"{case.image_files[0]}: {reader_name} reads {image.shape[0]} channel(s) from this case, but "
            f"dataset.json declares {len(channels)} ({', '.join(map(str, channels))}). Save the scan with the "
            f"dataset's channels (e.g. RGB for a natural image, no alpha) or remove it from "
            f"{UNLABELED_IMAGES_FOLDER}/.")


# what decides a preprocessed scan's voxels: the configuration's resampling and normalisation, and the plans'
# axis order, intensity statistics and reader. The network, batch and patch size are left out, so that plans
# that differ only there (a narrower network, another batch) share one folder, as nnU-Net's labeled data does
_PREPROCESSING_CONFIGURATION_KEYS = ('data_identifier', 'preprocessor_name', 'spacing', 'normalization_schemes',
                                     'use_mask_for_norm', 'resampling_fn_data', 'resampling_fn_data_kwargs',
                                     'resampling_fn_seg', 'resampling_fn_seg_kwargs')
_PREPROCESSING_PLANS_KEYS = ('transpose_forward', 'foreground_intensity_properties_per_channel',
                             'image_reader_writer')


def plans_identity(plans: dict, configuration_name: str) -> str:
    """A digest of everything in the plans that determines how a scan is preprocessed for one configuration."""
    configuration = PlansManager(plans).get_configuration(configuration_name).configuration
    relevant = {'configuration': {k: configuration.get(k) for k in _PREPROCESSING_CONFIGURATION_KEYS},
                'plans': {k: plans.get(k) for k in _PREPROCESSING_PLANS_KEYS}}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def source_identity(files: Sequence[str]) -> List[dict]:
    identities = []
    for f in files:
        st = os.stat(f)
        identities.append({'file': os.path.basename(f), 'size': st.st_size, 'mtime_ns': st.st_mtime_ns})
    return identities


def _process_tag() -> str:
    """Part of every temporary name: no two processes ever write the same temporary file."""
    return f'{os.getpid()}-'


def _write_json_atomically(obj: dict, path: str) -> None:
    tmp = join(os.path.dirname(path), f'{_TMP_PREFIX}{_process_tag()}{os.path.basename(path)}')
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_manifest(output_folder: str) -> dict:
    path = join(output_folder, MANIFEST_NAME)
    if not os.path.isfile(path):
        return {'version': MANIFEST_VERSION, 'plans_identity': None, 'cases': {}}
    try:
        manifest = load_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        # a manifest is only ever replaced atomically; an unreadable one was damaged from outside, so
        # everything is redone rather than trusted
        return {'version': MANIFEST_VERSION, 'plans_identity': None, 'cases': {}}
    if manifest.get('version') != MANIFEST_VERSION:
        return {'version': MANIFEST_VERSION, 'plans_identity': None, 'cases': {}}
    return manifest


def _case_files(output_folder: str, identifier: str) -> List[str]:
    return [join(output_folder, identifier + s) for s in _CASE_FILE_SUFFIXES]


def _temporary_case_name(identifier: str) -> str:
    return f'{_TMP_PREFIX}{_process_tag()}{identifier}'


def _remove_case_files(output_folder: str, identifier: str) -> None:
    for f in _case_files(output_folder, identifier) + _case_files(output_folder, _temporary_case_name(identifier)):
        if os.path.isfile(f):
            os.remove(f)


def image_dimensionality(properties: dict) -> int:
    """Axes of the image as stored on disk (2 for a 2D NIfTI, 3 for a volume)."""
    if 'sitk_stuff' in properties:
        return len(properties['sitk_stuff']['spacing'])
    return len(properties['spacing'])


def first_labeled_images(raw_dataset_folder: str, dataset_json: dict) -> List[str]:
    """The image files of the first labeled case, as nnU-Net lists them."""
    return next(iter(_labeled_cases(raw_dataset_folder, dataset_json).values()))['images']


def reference_dimensionality(labeled_images: Sequence[str], reader) -> int:
    """Axes of a labeled image as ``reader`` (the dataset's reader instance) returns it."""
    _, props = reader.read_images(list(labeled_images))
    return image_dimensionality(props)


def read_unlabeled_case(case: UnlabeledCase, reader, dataset_json: dict, expected_dimensionality: int) -> dict:
    """Read one case with the dataset's reader and check it as training will use it: every file whole, readable,
    the declared channels, the labeled images' dimensionality. Returns the reader's properties; raises
    UnlabeledDataError naming the file and the fix."""
    for f in case.image_files:
        try:
            check_scan_complete(f)
        except IncompleteScanError as e:
            raise UnlabeledDataError(f"{e} Or remove it from {UNLABELED_IMAGES_FOLDER}/.") from e
    try:
        image, props = reader.read_images(list(case.image_files))
    except Exception as e:
        raise UnlabeledDataError(
            f"{case.image_files[0]}: cannot be read ({type(e).__name__}: {e}). Replace the file with a valid "
            f"scan or remove it from {UNLABELED_IMAGES_FOLDER}/.") from e
    check_channel_count(case, image, dataset_json, type(reader).__name__)
    if image_dimensionality(props) != expected_dimensionality:
        raise UnlabeledDataError(
            f"{case.image_files[0]}: a {image_dimensionality(props)}D image, but the labeled images of this "
            f"dataset are {expected_dimensionality}D. Convert it to match or remove it.")
    return props


def check_unlabeled_dataset(raw_dataset_folder: str, verbose: bool = True) -> Tuple[int, List[str]]:
    """What ``nnUNetv2_train -tr M3HLTrainer`` will check of ``imagesUnlabeledTr/`` before preprocessing it, with
    the reader nnU-Net's planner picks for the dataset: returns the number of cases and one message per unusable
    case (none when the folder does not exist: the dataset is a supervised one)."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    if not os.path.isdir(unlabeled_folder_of(raw_dataset_folder)):
        return 0, []
    dataset_json = load_json(join(raw_dataset_folder, 'dataset.json'))
    try:
        cases = discover_unlabeled_cases(raw_dataset_folder, dataset_json)
    except UnlabeledDataError as e:
        return 0, [str(e)]
    first_labeled = first_labeled_images(raw_dataset_folder, dataset_json)
    reader = determine_reader_writer_from_dataset_json(dataset_json, first_labeled[0])()
    expected = reference_dimensionality(first_labeled, reader)
    problems = []
    for case in tqdm(cases, desc='Reading unlabeled scans', disable=not verbose):
        try:
            read_unlabeled_case(case, reader, dataset_json, expected)
        except UnlabeledDataError as e:
            problems.append(str(e))
    return len(cases), problems


def preprocess_one_case(case: UnlabeledCase, output_folder: str, plans: dict, configuration_name: str,
                        dataset_json: dict, expected_dimensionality: int) -> str:
    """Preprocess one scan into temporary files, then move them into place. Returns the identifier.
    Raises UnlabeledDataError naming the file when the scan cannot be used."""
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration_name)
    read_unlabeled_case(case, plans_manager.image_reader_writer_class(), dataset_json, expected_dimensionality)
    tmp = join(output_folder, _temporary_case_name(case.identifier))
    preprocessor = configuration_manager.preprocessor_class(verbose=False)
    try:
        preprocessor.run_case_save(tmp, list(case.image_files), None, plans_manager, configuration_manager,
                                   dataset_json)
        # unlabeled patches are cropped at random; an empty class_locations lets nnU-Net's own data loader
        # read these cases unchanged
        properties = load_pickle(tmp + '.pkl')
        properties['class_locations'] = {}
        write_pickle(properties, tmp + '.pkl')
        for src, dst in zip(_case_files(output_folder, _temporary_case_name(case.identifier)),
                            _case_files(output_folder, case.identifier)):
            os.replace(src, dst)
    except Exception as e:
        _remove_case_files(output_folder, case.identifier)
        if isinstance(e, UnlabeledDataError):
            raise
        raise UnlabeledDataError(
            f"{case.image_files[0]}: preprocessing failed ({type(e).__name__}: {e}). Check the scan (shape, "
            f"spacing, channels as in imagesTr) or remove it from {UNLABELED_IMAGES_FOLDER}/.") from e
    return case.identifier


def preprocess_unlabeled(dataset_name_or_id, configuration_name: str, plans_identifier: str = 'nnUNetPlans',
                         num_processes: int = 4, verbose: bool = True) -> str:
    """Bring ``<data_identifier>_unlabeled/`` up to date with ``imagesUnlabeledTr/`` and the plans.
    Only missing or stale cases are (re)done; removed scans are dropped. Returns the folder."""
    dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    raw_dataset_folder = join(nnUNet_raw, dataset_name)
    preprocessed_base = join(nnUNet_preprocessed, dataset_name)
    plans_file = join(preprocessed_base, plans_identifier + '.json')
    if not os.path.isfile(plans_file):
        raise FileNotFoundError(f"{plans_file} not found. Run nnUNetv2_plan_and_preprocess -d {dataset_name_or_id} "
                                f"first (or pass the right -p).")
    plans = load_json(plans_file)
    dataset_json = load_json(join(preprocessed_base, 'dataset.json'))
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration_name)
    cases = discover_unlabeled_cases(raw_dataset_folder, dataset_json)
    output_folder = preprocessed_unlabeled_folder(preprocessed_base, configuration_manager.data_identifier)
    os.makedirs(output_folder, exist_ok=True)
    # one process updates the folder at a time; the others wait, then find it up to date (folds started together,
    # each fold's rank 0 calls this at its start)
    lock = FileLock(join(output_folder, LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if verbose:
            print(f"Another process is updating {output_folder}; waiting for it to finish")
        lock.acquire()
    try:
        _bring_up_to_date(cases, output_folder, plans, configuration_name, dataset_json, raw_dataset_folder,
                          plans_manager, num_processes, verbose)
    finally:
        lock.release()
    return output_folder


def _bring_up_to_date(cases: List[UnlabeledCase], output_folder: str, plans: dict, configuration_name: str,
                      dataset_json: dict, raw_dataset_folder: str, plans_manager: PlansManager, num_processes: int,
                      verbose: bool) -> None:
    """Preprocess what is missing or stale and drop what was removed; the caller holds the folder's lock."""
    identity = plans_identity(plans, configuration_name)
    manifest = load_manifest(output_folder)
    if manifest['plans_identity'] != identity:
        manifest = {'version': MANIFEST_VERSION, 'plans_identity': identity, 'cases': {}}
    current = {c.identifier: c for c in cases}
    for identifier in list(manifest['cases']):
        if identifier not in current:
            del manifest['cases'][identifier]
            _remove_case_files(output_folder, identifier)
    todo = []
    for case in cases:
        entry = manifest['cases'].get(case.identifier)
        up_to_date = entry is not None and entry['sources'] == source_identity(case.image_files) and \
            all(os.path.isfile(f) for f in _case_files(output_folder, case.identifier))
        if not up_to_date:
            manifest['cases'].pop(case.identifier, None)
            todo.append(case)
    _write_json_atomically(manifest, join(output_folder, MANIFEST_NAME))
    # leftovers of an interrupted run that no manifest entry vouches for (no other process writes here now)
    for name in os.listdir(output_folder):
        if name.startswith(_TMP_PREFIX):
            os.remove(join(output_folder, name))
    if verbose:
        print(f"Unlabeled scans: {len(cases)} found, {len(cases) - len(todo)} up to date, {len(todo)} to preprocess "
              f"into {output_folder}")
    if not todo:
        return

    expected_dim = reference_dimensionality(first_labeled_images(raw_dataset_folder, dataset_json),
                                            plans_manager.image_reader_writer_class())
    args = [(case, output_folder, plans, configuration_name, dataset_json, expected_dim) for case in todo]

    def record(case: UnlabeledCase) -> None:
        manifest['cases'][case.identifier] = {'sources': source_identity(case.image_files)}
        _write_json_atomically(manifest, join(output_folder, MANIFEST_NAME))

    with tqdm(total=len(todo), desc='Preprocessing unlabeled scans', disable=not verbose) as bar:
        if num_processes <= 1:
            for a in args:
                preprocess_one_case(*a)
                record(a[0])
                bar.update()
        else:
            with multiprocessing.get_context('spawn').Pool(min(num_processes, len(todo))) as pool:
                pending = {a[0].identifier: (a[0], pool.apply_async(preprocess_one_case, a)) for a in args}
                while pending:
                    for identifier in [i for i, (_, r) in pending.items() if r.ready()]:
                        case, result = pending.pop(identifier)
                        result.get()  # re-raises the worker's error with its message
                        record(case)
                        bar.update()
                    sleep(0.05)


def unlabeled_identifiers(output_folder: str) -> List[str]:
    """The cases that are completely preprocessed (listed in the manifest and present on disk)."""
    manifest = load_manifest(output_folder)
    return sorted(i for i in manifest['cases']
                  if all(os.path.isfile(f) for f in _case_files(output_folder, i)))


class UnlabeledDataLoader(nnUNetDataLoader):
    """nnU-Net's data loader over unlabeled cases: random crops only (no foreground oversampling)."""

    def __init__(self, output_folder: str, batch_size: int, initial_patch_size: Sequence[int],
                 patch_size: Sequence[int], label_manager: LabelManager, transforms=None,
                 folder_with_segs_from_previous_stage: Optional[str] = None):
        identifiers = unlabeled_identifiers(output_folder)
        if not identifiers:
            raise UnlabeledDataError(f"{output_folder} holds no preprocessed unlabeled case; run "
                                     f"nnUNetv2_m3hl_preprocess_unlabeled first.")
        # a cascade stage reads each scan's previous-stage segmentation too, as nnU-Net's loader does (cascade.py)
        dataset = nnUNetDatasetBlosc2(output_folder, identifiers, folder_with_segs_from_previous_stage)
        super().__init__(dataset, batch_size, initial_patch_size, patch_size, label_manager,
                         oversample_foreground_percent=0.0, transforms=transforms)
        # without labels every crop is uniformly random, also for datasets with an ignore label
        self.has_ignore = False


@contextmanager
def n_proc_da_environment(n: int) -> Iterator[None]:
    """nnU-Net sizes its loaders from nnUNet_n_proc_DA; set it to ``n`` while they are built."""
    old = os.environ.get('nnUNet_n_proc_DA')
    os.environ['nnUNet_n_proc_DA'] = str(n)
    try:
        yield
    finally:
        if old is None:
            del os.environ['nnUNet_n_proc_DA']
        else:
            os.environ['nnUNet_n_proc_DA'] = old


def n_proc_split(n_proc_da: int) -> Tuple[int, int]:
    """Split nnU-Net's data-augmentation worker budget between the labeled and the unlabeled loader
    (0 = load in the main process)."""
    if n_proc_da <= 0:
        return 0, 0
    return max(1, (n_proc_da + 1) // 2), max(1, n_proc_da // 2)

