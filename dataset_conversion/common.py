"""Shared pieces of the converters: errors, atomic dataset creation, NIfTI writing with geometry."""
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

import SimpleITK as sitk


# dataset.json key of a dataset whose files carry a made-up spacing (the source stored none)
NOMINAL_SPACING_KEY = 'm3hl_nominal_spacing'


class ConversionError(RuntimeError):
    """Bad converter input; the message names the file and the fix."""


def dataset_folder(raw_root: str, dataset_id: int, name: str) -> str:
    if not 0 < dataset_id < 1000:
        raise ConversionError(f"dataset id must be 1..999, got {dataset_id}")
    if not name or any(c in name for c in '/\\') or name in ('.', '..'):
        raise ConversionError(f"invalid dataset name '{name}': use letters, digits, '-' or '_'")
    return os.path.join(raw_root, f'Dataset{dataset_id:03d}_{name}')


@contextmanager
def building(target: str, overwrite: bool) -> Iterator[str]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target``, on any failure it
    is removed and ``target`` is left as it was."""
    raw_root = os.path.dirname(os.path.abspath(target))
    existing = [d for d in os.listdir(raw_root) if d.startswith(os.path.basename(target)[:10])] \
        if os.path.isdir(raw_root) else []
    if existing and not overwrite:
        raise ConversionError(f"{os.path.join(raw_root, existing[0])} already exists (same dataset id); pass "
                              f"--overwrite to replace it or choose another -d")
    os.makedirs(raw_root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.tmp-convert-', dir=raw_root)
    try:
        yield tmp
        for d in existing:
            shutil.rmtree(os.path.join(raw_root, d))
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def safe_join(folder: str, *names: str) -> str:
    """Join, refusing any name that would leave ``folder`` (path separators, '..')."""
    for n in names:
        if not n or os.path.basename(n) != n or n in ('.', '..') or '\\' in n:
            raise ConversionError(f"unsafe file name '{n}': names may not contain path separators or '..'")
    path = os.path.abspath(os.path.join(folder, *names))
    if os.path.commonpath([path, os.path.abspath(folder)]) != os.path.abspath(folder):
        raise ConversionError(f"'{os.path.join(*names)}' would be written outside {folder}")
    return path


def write_dataset_json(folder: str, labels: dict, num_training: int, name: str, description: str,
                       channel_names: dict = None, extra: dict = None, file_ending: str = '.nii.gz') -> None:
    content = {'channel_names': channel_names or {'0': 'MRI'}, 'labels': labels, 'numTraining': num_training,
               'file_ending': file_ending, 'name': name, 'description': description, **(extra or {})}
    with open(os.path.join(folder, 'dataset.json'), 'w') as f:
        json.dump(content, f, indent=1)


def write_image(image: sitk.Image, path: str) -> None:
    sitk.WriteImage(image, path, useCompression=True)
