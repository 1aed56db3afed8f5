"""CVC-ClinicDB (colonoscopy frames with polyp masks) with this project's fixed split: whole video sequences as the
test set (``CVC_TEST_SEQUENCES``), the labeled frames the first N of ``CVC_TRAIN_ORDER``, the other training frames
unlabeled. Input: a folder with ``images/`` and ``masks/`` (``<frame>.jpg`` or any image format; the masks may be
lossy JPEGs, whose foreground is above 127)."""
import os
from typing import Optional

from dataset_conversion.common import ConversionError
from dataset_conversion.image_folders import convert_image_folders, list_images
from dataset_conversion.splits import CVC_SEQUENCES, CVC_TEST_SEQUENCES, CVC_TRAIN_ORDER

FOREGROUND_THRESHOLD = 127
DEFAULT_LABELED = 23  # 5% of the 466 training frames


def cvc_test_frames() -> set:
    return {f for s in CVC_TEST_SEQUENCES for f in range(CVC_SEQUENCES[s - 1][0], CVC_SEQUENCES[s - 1][1] + 1)}


def cvc_sequence_of(case: str) -> int:
    """The video sequence (1..29) of a converted frame, named as the converter names it (``cvc_149`` or a file of
    it, ``cvc_149.png``). Frames of one sequence are near-duplicates, so a per-frame count overstates how many
    independent cases agree; results are also read per sequence."""
    stem = os.path.basename(case).split('.')[0]
    if not stem.startswith('cvc_') or not stem[4:].isdigit():
        raise ValueError(f"{case}: not a converted CVC-ClinicDB frame (cvc_<frame number>)")
    frame = int(stem[4:])
    for number, (first, last) in enumerate(CVC_SEQUENCES, start=1):
        if first <= frame <= last:
            return number
    raise ValueError(f"{case}: frame {frame} lies in no CVC-ClinicDB sequence (1..{CVC_SEQUENCES[-1][1]})")


def convert_cvc(source: str, dataset_id: int, labeled: int = DEFAULT_LABELED, name: str = 'CVCClinicDB',
                raw_root: Optional[str] = None, overwrite: bool = False) -> str:
    images, masks = os.path.join(source, 'images'), os.path.join(source, 'masks')
    stems = list_images(images, 'CVC-ClinicDB frames')
    frames = {}
    for stem in stems:
        if not stem.isdigit():
            raise ConversionError(f"{stems[stem]}: CVC-ClinicDB frames are named by their number (1.jpg .. 612.jpg)")
        frames[int(stem)] = stem
    train = [f for f in CVC_TRAIN_ORDER if f in frames]
    if not 1 <= labeled < len(train):
        raise ConversionError(f"--labeled {labeled}: choose 1..{len(train) - 1} of the {len(train)} training frames")
    missing = sorted(set(CVC_TRAIN_ORDER[:labeled]) - set(frames))
    if missing:
        raise ConversionError(f"labeled frames {missing} are not in {images}; this split needs them")
    return convert_image_folders(
        images, masks, dataset_id, name, threshold=FOREGROUND_THRESHOLD, label_map={'background': 0, 'polyp': 255},
        channels='rgb', raw_root=raw_root, overwrite=overwrite, case_prefix='cvc_',
        test=[frames[f] for f in sorted(cvc_test_frames() & set(frames))],
        labeled_choice=[frames[f] for f in CVC_TRAIN_ORDER[:labeled]],
        description=f"CVC-ClinicDB, {labeled} labeled frames (first of the project's train order), test sequences "
                    f"{list(CVC_TEST_SEQUENCES)}; masks thresholded at {FOREGROUND_THRESHOLD}")
