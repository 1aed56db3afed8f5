"""Turn a fully labeled nnU-Net raw dataset into a semi-supervised one, to measure label efficiency on
your own data: N labeled cases chosen with a seed stay in imagesTr/labelsTr, the other training images
move to imagesUnlabeledTr/ without their labels, test data (imagesTs/, labelsTs/) is copied unchanged.
The source dataset is never modified."""
import json
import os
import shutil
from typing import Optional

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json
from tqdm import tqdm

from dataset_conversion.common import ConversionError, building, dataset_folder, safe_join
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets
from nnunetv2_m3hl.integrity import check_dataset_files


def make_ssl_dataset(source, n_labeled: int, target_id: int, seed: int = 0, overwrite: bool = False,
                     raw_root: Optional[str] = None, name: Optional[str] = None) -> str:
    raw_root = raw_root or os.environ.get('nnUNet_raw')
    if not raw_root:
        raise ConversionError("nnUNet_raw is not set: export it")
    os.environ.setdefault('nnUNet_raw', raw_root)
    try:
        source_name = maybe_convert_to_dataset_name(source)
    except RuntimeError as e:
        raise ConversionError(f"source dataset {source} not found in {raw_root}: {e}") from e
    source_folder = os.path.join(raw_root, source_name)
    dataset_json = load_json(os.path.join(source_folder, 'dataset.json'))
    if 'dataset' in dataset_json:
        raise ConversionError(f"{source_folder}/dataset.json lists files explicitly ('dataset' key); only the "
                              f"standard imagesTr/labelsTr layout is supported")
    cases = get_filenames_of_train_images_and_targets(source_folder, dataset_json)
    identifiers = sorted(cases)
    if not 1 <= n_labeled < len(identifiers):
        raise ConversionError(f"--labeled {n_labeled}: {source_folder} has {len(identifiers)} labeled cases; choose "
                              f"1..{len(identifiers) - 1} so that some become unlabeled")
    rng = np.random.default_rng(seed)
    labeled = sorted(rng.choice(identifiers, n_labeled, replace=False).tolist())
    target = dataset_folder(raw_root, target_id, name or f"{source_name.split('_', 1)[1]}SSL{n_labeled}")
    _, incomplete = check_dataset_files(source_folder, verbose=False)
    if incomplete:
        raise ConversionError(f"{incomplete[0]} ({len(incomplete)} incomplete file(s) in {source_folder}; "
                              f"nnUNetv2_m3hl_check_dataset -d {source} lists them all)")
    with building(target, overwrite) as tmp:
        for sub in ('imagesTr', 'labelsTr', 'imagesUnlabeledTr'):
            os.makedirs(os.path.join(tmp, sub))
        for identifier in tqdm(identifiers, desc='Splitting labeled/unlabeled'):
            image_dir = 'imagesTr' if identifier in labeled else 'imagesUnlabeledTr'
            for image in cases[identifier]['images']:
                shutil.copyfile(image, safe_join(os.path.join(tmp, image_dir), os.path.basename(image)))
            if identifier in labeled:
                label = cases[identifier]['label']
                shutil.copyfile(label, safe_join(os.path.join(tmp, 'labelsTr'), os.path.basename(label)))
        for sub in ('imagesTs', 'labelsTs'):
            if os.path.isdir(os.path.join(source_folder, sub)):
                shutil.copytree(os.path.join(source_folder, sub), os.path.join(tmp, sub))
        dataset_json = dict(dataset_json, numTraining=n_labeled, name=os.path.basename(target).split('_', 1)[1],
                            description=f"{n_labeled} labeled cases of {source_name} (seed {seed}); the other "
                                        f"{len(identifiers) - n_labeled} training images unlabeled")
        with open(os.path.join(tmp, 'dataset.json'), 'w') as f:
            json.dump(dataset_json, f, indent=1)
    print(f"{target}: {n_labeled} labeled ({', '.join(labeled)}), {len(identifiers) - n_labeled} unlabeled")
    return target
