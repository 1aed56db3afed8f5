"""Copy a few cases of a preprocessed nnU-Net dataset (labeled and unlabeled) into a new nnUNet_preprocessed
folder, with plans, dataset.json and a fold-0 split that name only those cases.

    python benchmarks/gpu/subset_prepared.py /scratch/acdc3/nnUNet_preprocessed/Dataset271_ACDC /carry/acdc3/nnUNet_preprocessed \
        -c 2d --train 6 --val 2 --unlabeled 6

Step costs do not depend on how many cases a dataset has, only on its plans (patch, batch, network) and on
what the patches hold. This makes a dataset prepared at native plans (``real_data.py --prepare-only --budget
gpu``) small enough to carry to a GPU machine without its raw data: ``step_cost.py --dataset`` then uses it as
preprocessed. The first cases of fold 0 (training, then validation) and the first unlabeled cases in sorted order
are kept.
"""
import argparse
import json
import os
import shutil
import sys
from typing import List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))


def case_files(folder: str, identifier: str) -> List[str]:
    """A preprocessed case's files: ``ID.b2nd``, ``ID.pkl``, ``ID_seg.b2nd`` (whichever exist)."""
    names = [identifier + suffix for suffix in ('.b2nd', '.pkl', '_seg.b2nd', '.npz', '.npy', '_seg.npy')]
    return [os.path.join(folder, n) for n in names if os.path.isfile(os.path.join(folder, n))]


def subset_prepared(source: str, destination_base: str, configuration: str, plans_identifier: str = 'nnUNetPlans',
                    n_train: int = 6, n_val: int = 2, n_unlabeled: int = 6) -> str:
    """Write the subset to ``destination_base/<dataset name>``; returns that folder."""
    from nnunetv2_m3hl.unlabeled import MANIFEST_NAME, load_manifest, preprocessed_unlabeled_folder
    plans_file = os.path.join(source, plans_identifier + '.json')
    for required in (plans_file, os.path.join(source, 'dataset.json'), os.path.join(source, 'splits_final.json')):
        if not os.path.isfile(required):
            sys.exit(f"{required} not found: {source} must be a dataset folder of nnUNet_preprocessed, planned and "
                     f"preprocessed (e.g. by benchmarks/quality/real_data.py --prepare-only)")
    with open(plans_file) as f:
        plans = json.load(f)
    if configuration not in plans['configurations']:
        sys.exit(f"{plans_file} has no configuration '{configuration}' (it has {sorted(plans['configurations'])})")
    data_identifier = plans['configurations'][configuration].get('data_identifier',
                                                                  f'{plans_identifier}_{configuration}')
    labeled_source = os.path.join(source, data_identifier)
    unlabeled_source = preprocessed_unlabeled_folder(source, data_identifier)
    with open(os.path.join(source, 'splits_final.json')) as f:
        fold0 = json.load(f)[0]
    train, val = fold0['train'][:n_train], fold0['val'][:n_val]
    manifest = load_manifest(unlabeled_source)
    unlabeled = sorted(manifest['cases'])[:n_unlabeled]
    if not train or not val or not unlabeled:
        sys.exit(f"{source}: need at least one training, one validation and one unlabeled case for "
                 f"{configuration} (found {len(train)}, {len(val)}, {len(unlabeled)})")

    destination = os.path.join(destination_base, os.path.basename(os.path.normpath(source)))
    if os.path.exists(destination):
        sys.exit(f"{destination} exists; remove it or choose another destination")
    staging = destination + '.partial'
    shutil.rmtree(staging, ignore_errors=True)
    labeled_destination = os.path.join(staging, data_identifier)
    unlabeled_destination = preprocessed_unlabeled_folder(staging, data_identifier)
    os.makedirs(labeled_destination)
    os.makedirs(unlabeled_destination)
    for name in ('dataset.json', 'dataset_fingerprint.json', plans_identifier + '.json'):
        if os.path.isfile(os.path.join(source, name)):
            shutil.copy2(os.path.join(source, name), staging)
    for identifier in dict.fromkeys(train + val):
        files = case_files(labeled_source, identifier)
        if not files:
            sys.exit(f"{labeled_source} holds no preprocessed files of {identifier}; preprocess {configuration} first")
        for file in files:
            shutil.copy2(file, labeled_destination)
    for identifier in unlabeled:
        for file in case_files(unlabeled_source, identifier):
            shutil.copy2(file, unlabeled_destination)
    with open(os.path.join(staging, 'splits_final.json'), 'w') as f:
        json.dump([{'train': train, 'val': val}], f, indent=1)
    kept = dict(manifest, cases={i: manifest['cases'][i] for i in unlabeled})
    with open(os.path.join(unlabeled_destination, MANIFEST_NAME), 'w') as f:
        json.dump(kept, f, indent=1)
    os.rename(staging, destination)
    return destination


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('source', help='nnUNet_preprocessed/DatasetXXX_Name, planned and preprocessed')
    p.add_argument('destination', help='an nnUNet_preprocessed folder to write DatasetXXX_Name into')
    p.add_argument('-c', '--configuration', required=True)
    p.add_argument('-p', '--plans', default='nnUNetPlans')
    p.add_argument('--train', type=int, default=6, help='training cases of fold 0 to keep')
    p.add_argument('--val', type=int, default=2, help='validation cases of fold 0 to keep')
    p.add_argument('--unlabeled', type=int, default=6, help='unlabeled cases to keep')
    args = p.parse_args()
    out = subset_prepared(args.source, args.destination, args.configuration, args.plans, args.train, args.val,
                          args.unlabeled)
    print(f"wrote {out}")


if __name__ == '__main__':
    main()
