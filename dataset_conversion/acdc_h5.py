"""The SSL4MIS preprocessing of ACDC (the h5 files the semi-supervised papers train on) as a frame source
for ``dataset_conversion.acdc``.

Layout (``ROOT`` is the folder holding the lists):
- ``ROOT/data/patient<NNN>_frame<FF>.h5``: whole frames (datasets ``image`` float32 in [0, 1] and ``label``
  uint8 0-3, slices first), present at least for the validation and test patients;
- ``patient<NNN>_frame<FF>_slice_<K>.h5``: the 2D slices of the training frames, either in
  ``ROOT/data/slices/`` (SSL4MIS) or beside the frames in ``ROOT/data/``;
- ``ROOT/train.list``, ``val.list``, ``test.list`` (frames) and ``train_slices.list`` (slices), optional.
``frame01`` is ED and ``frame02`` ES. Training frames are rebuilt by stacking their slices in slice order
(K ascending), as SSL4MIS cut them; validation and test frames are read whole.

The h5 files carry no geometry. Every frame is written with ``NOMINAL_SPACING``: 1 mm in plane and 10 mm
between slices, which makes nnU-Net plan 2d on the short-axis slices (the axis of largest spacing is the
slicing axis). The paper-convention metrics are in voxels and do not depend on it; ``dataset.json``
records that the spacing is nominal so that mm-convention metrics can say so.
"""
import os
import re
from typing import Dict, List, Optional, Tuple

import numpy as np
import SimpleITK as sitk

from dataset_conversion.common import ConversionError, write_image

NOMINAL_SPACING = (1.0, 1.0, 10.0)  # SimpleITK order: x, y (in plane), z (between slices)
FRAME_OF_PHASE = {'ED': 1, 'ES': 2}
LIST_FILES = ('train.list', 'val.list', 'test.list', 'train_slices.list')
_SLICE_NAME = re.compile(r'^(patient\d{3}_frame\d{2})_slice_(\d+)\.h5$')


def looks_like_ssl4mis(root: str) -> bool:
    data = os.path.join(root, 'data')
    return os.path.isdir(data) and any(_SLICE_NAME.match(f) or re.match(r'^patient\d{3}_frame\d{2}\.h5$', f)
                                       for f in os.listdir(data))


def frame_stem(patient: str, phase: str) -> str:
    return f'{patient}_frame{FRAME_OF_PHASE[phase]:02d}'


def _read_h5(path: str, ndim: int) -> Tuple[np.ndarray, np.ndarray]:
    import h5py
    if not os.path.isfile(path):
        raise ConversionError(f"{path} is missing. Restore it from the SSL4MIS ACDC data.")
    try:
        with h5py.File(path, 'r') as f:
            image, label = f['image'][()], f['label'][()]
    except (OSError, KeyError) as e:
        raise ConversionError(f"{path}: cannot read the datasets 'image' and 'label' ({e}); restore the file from the "
                              f"SSL4MIS ACDC data.") from e
    if image.ndim != ndim or image.shape != label.shape:
        raise ConversionError(f"{path}: image {image.shape} and label {label.shape} must be {ndim}D arrays of one "
                              f"shape; restore the file from the SSL4MIS ACDC data.")
    if not np.isfinite(image).all():
        raise ConversionError(f"{path}: the image holds NaN or infinite values; restore the file.")
    unexpected = sorted(set(np.unique(label).tolist()) - {0, 1, 2, 3})
    if unexpected:
        raise ConversionError(f"{path}: unexpected label values {unexpected}; ACDC labels are 0 background, 1 RV, "
                              f"2 MYO, 3 LV.")
    return image.astype(np.float32), label.astype(np.uint8)


class SSL4MISFrames:
    """Reads the frames of the SSL4MIS h5 layout; every check raises ``ConversionError`` naming the file."""

    def __init__(self, root: str):
        self.root = root
        self.data = os.path.join(root, 'data')
        if not os.path.isdir(self.data):
            raise ConversionError(f"{self.data} not found: -i must be the SSL4MIS ACDC folder holding data/ and the "
                                  f"*.list files")
        slices_folder = os.path.join(self.data, 'slices')
        self.slice_folder = slices_folder if os.path.isdir(slices_folder) else self.data
        self._slices: Dict[str, Dict[int, str]] = {}
        for f in os.listdir(self.slice_folder):
            m = _SLICE_NAME.match(f)
            if m:
                self._slices.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(self.slice_folder, f)

    # ---------------------------------------------------------------- checks
    def check_lists(self, expected_patients: Dict[str, List[str]]) -> None:
        """Every file a shipped list names exists, and the lists hold the protocol's patients
        (``expected_patients``: list file name -> patients, in order for ``train.list``)."""
        for list_name in LIST_FILES:
            path = os.path.join(self.root, list_name)
            if not os.path.isfile(path):
                continue
            with open(path) as f:
                entries = [line.strip() for line in f if line.strip()]
            patients = list(dict.fromkeys(e[:len('patient000')] for e in entries))
            expected = expected_patients.get(list_name)
            if expected is not None and (patients != expected if list_name == 'train.list'
                                         else sorted(patients) != sorted(expected)):
                raise ConversionError(f"{path} lists patients {patients[:5]}... which differ from the SSL4MIS protocol "
                                      f"({expected[:5]}...); restore the list shipped with the data.")
            for entry in entries:
                if list_name == 'train_slices.list':
                    target = os.path.join(self.slice_folder, f'{entry}.h5')
                elif list_name == 'train.list':
                    target = self._slice_files(entry)[0] if entry in self._slices else \
                        os.path.join(self.slice_folder, f'{entry}_slice_1.h5')
                else:
                    target = os.path.join(self.data, f'{entry}.h5')
                if not os.path.isfile(target):
                    raise ConversionError(f"{path} names {entry}, but {target} is missing. Restore the file from the "
                                          f"SSL4MIS ACDC data.")

    def _slice_files(self, stem: str) -> List[str]:
        found = self._slices.get(stem)
        if not found:
            raise ConversionError(f"{os.path.join(self.slice_folder, stem + '_slice_1.h5')} is missing: no slice of "
                                  f"training frame {stem} was found. Restore its slices from the SSL4MIS ACDC data.")
        first = min(found)
        if first not in (0, 1):
            raise ConversionError(f"{os.path.join(self.slice_folder, f'{stem}_slice_{1}.h5')} is missing (the slices "
                                  f"of {stem} start at {first}). Restore the missing slices.")
        for k in range(first, max(found) + 1):
            if k not in found:
                raise ConversionError(f"{os.path.join(self.slice_folder, f'{stem}_slice_{k}.h5')} is missing: slices "
                                      f"{first}..{max(found)} of {stem} must all exist. Restore it.")
        return [found[k] for k in sorted(found)]

    # ---------------------------------------------------------------- reading
    def training_frame(self, patient: str, phase: str) -> Tuple[np.ndarray, np.ndarray]:
        """A training frame rebuilt from its slices (slices first)."""
        files = self._slice_files(frame_stem(patient, phase))
        pairs = [_read_h5(f, 2) for f in files]
        for f, (image, _) in zip(files, pairs):
            if image.shape != pairs[0][0].shape:
                raise ConversionError(f"{f}: slice shape {image.shape} differs from {pairs[0][0].shape} of {files[0]}; "
                                      f"all slices of a frame must have one shape. Restore the file.")
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def whole_frame(self, patient: str, phase: str) -> Tuple[np.ndarray, np.ndarray]:
        return _read_h5(os.path.join(self.data, f'{frame_stem(patient, phase)}.h5'), 3)

    def frame(self, patient: str, phase: str, from_slices: bool) -> Tuple[np.ndarray, np.ndarray]:
        return self.training_frame(patient, phase) if from_slices else self.whole_frame(patient, phase)

    @staticmethod
    def write(image: np.ndarray, label: Optional[np.ndarray], image_path: str, label_path: Optional[str]) -> None:
        for array, path in ((image, image_path), (label, label_path)):
            if path is None:
                continue
            img = sitk.GetImageFromArray(array)
            img.SetSpacing(NOMINAL_SPACING)
            write_image(img, path)
