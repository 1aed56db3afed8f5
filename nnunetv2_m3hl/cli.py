"""Console entry points. Each parses its arguments and calls one library function; errors about the
user's data end the program with the message alone (exit code 2), not a traceback."""
import argparse
import os
import sys
from typing import Callable


def _run(fn: Callable[[], None]) -> None:
    from nnunetv2_m3hl.unlabeled import UnlabeledDataError
    from dataset_conversion.common import ConversionError
    try:
        fn()
    except (UnlabeledDataError, ConversionError, FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(2)


def trainer_path_entry() -> None:
    """Print the folder to put on nnUNet_extTrainer."""
    from nnunetv2_m3hl import trainer_path
    argparse.ArgumentParser(description=trainer_path_entry.__doc__).parse_args()
    print(trainer_path())


def preprocess_unlabeled_entry() -> None:
    from nnunetv2_m3hl.unlabeled import preprocess_unlabeled
    p = argparse.ArgumentParser(description="Preprocess imagesUnlabeledTr/ with the dataset's plans into "
                                            "<data_identifier>_unlabeled/. Only missing or stale cases are redone.")
    p.add_argument('-d', required=True, help='dataset name or id')
    p.add_argument('-c', nargs='+', required=True, help='configuration(s), e.g. 2d 3d_fullres')
    p.add_argument('-p', default='nnUNetPlans', help='plans identifier (default: nnUNetPlans)')
    p.add_argument('-np', type=int, default=4, help='number of processes (default: 4)')
    args = p.parse_args()
    _run(lambda: [preprocess_unlabeled(args.d, c, args.p, args.np) for c in args.c])


def predict_unlabeled_next_stage_entry() -> None:
    import torch
    from nnunetv2_m3hl.cascade import predict_unlabeled_for_next_stage
    p = argparse.ArgumentParser(description="For a cascade stage (3d_cascade_fullres): segment every unlabeled scan "
                                            "with the previous stage's model of the fold, as nnU-Net does for the "
                                            "labeled cases. M3HL training of the stage does this at its start; this "
                                            "command does it ahead of time.")
    p.add_argument('-d', required=True, help='dataset name or id')
    p.add_argument('-c', default='3d_cascade_fullres', help='the cascade stage (default: 3d_cascade_fullres)')
    p.add_argument('-f', required=True, help="fold (or 'all')")
    p.add_argument('-tr', default='M3HLTrainer', help='the trainer of both stages (default: M3HLTrainer)')
    p.add_argument('-p', default='nnUNetPlans', help='plans identifier (default: nnUNetPlans)')
    p.add_argument('-device', default=None, help='cpu or cuda (default: cuda when available)')
    args = p.parse_args()
    fold = args.f if args.f == 'all' else int(args.f)
    device = torch.device(args.device) if args.device else None
    _run(lambda: print(predict_unlabeled_for_next_stage(args.d, args.c, fold, args.tr, args.p, device)))


def convert_acdc_entry() -> None:
    from dataset_conversion.acdc import DEFAULT_LABELED, convert_acdc
    p = argparse.ArgumentParser(description='Convert ACDC (the official release or the SSL4MIS h5 preprocessing, '
                                            'detected) into an nnU-Net dataset with the SSL4MIS protocol split '
                                            '(labeled / unlabeled / validation / test).')
    p.add_argument('-i', required=True, help='ACDC root: the official release (holding training/patient<NNN>/) or '
                                             'the SSL4MIS folder (holding data/ and the *.list files)')
    group = p.add_mutually_exclusive_group()
    group.add_argument('--labeled', type=int, default=None,
                       help=f'number of labeled patients: the first N of the protocol order (default {DEFAULT_LABELED})')
    group.add_argument('--labeled-patients', nargs='+', type=int, default=None,
                       help='explicit labeled patient numbers, e.g. 99 38 50')
    p.add_argument('-d', type=int, required=True, help='dataset id')
    p.add_argument('--name', default='ACDC', help='dataset name (default: ACDC)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing dataset with this id')
    args = p.parse_args()
    _run(lambda: convert_acdc(args.i, args.d, labeled=args.labeled, labeled_patients=args.labeled_patients,
                              name=args.name, overwrite=args.overwrite))


def convert_la_entry() -> None:
    from dataset_conversion.la import DEFAULT_LABELED, convert_la
    p = argparse.ArgumentParser(description='Convert the Left Atrium data (UA-MT h5 or challenge nrrd layout) into an '
                                            'nnU-Net dataset with the UA-MT protocol split.')
    p.add_argument('-i', required=True, help='LA root: <CASE>/mri_norm2.h5 or <CASE>/lgemri.nrrd + laendo.nrrd')
    p.add_argument('--labeled', type=int, default=DEFAULT_LABELED,
                   help=f'number of labeled scans: the first N of the train order (default {DEFAULT_LABELED})')
    p.add_argument('-d', type=int, required=True, help='dataset id')
    p.add_argument('--name', default='LA', help='dataset name (default: LA)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing dataset with this id')
    args = p.parse_args()
    _run(lambda: convert_la(args.i, args.d, labeled=args.labeled, name=args.name, overwrite=args.overwrite))


def convert_image_folders_entry() -> None:
    from dataset_conversion.image_folders import convert_image_folders, parse_label_map
    p = argparse.ArgumentParser(description="A folder of 2D images (PNG, JPEG, TIFF; RGB or gray) and a folder of "
                                            "masks with the same stems, and optionally a folder of unlabeled images, "
                                            "as an nnU-Net dataset in its natural-image layout (CASE_0000.png, "
                                            "NaturalImage2DIO): imagesTr/labelsTr, imagesUnlabeledTr, imagesTs/"
                                            "labelsTs, the split recorded in split.json.")
    p.add_argument('-i', required=True, help='folder of images')
    p.add_argument('-m', required=True, help='folder of masks, one per image, with the same stems')
    p.add_argument('-u', default=None, help='folder of unlabeled images (optional)')
    p.add_argument('-d', type=int, required=True, help='dataset id')
    p.add_argument('--name', required=True, help='dataset name')
    p.add_argument('--labeled', type=float, default=None,
                   help='labeled frames: a number (e.g. 20) or a share of the training frames (e.g. 0.05), chosen '
                        'with --seed; the other training frames become unlabeled (default: all labeled)')
    p.add_argument('--test-fraction', type=float, default=0.0, help='share of the masked frames held out as test')
    p.add_argument('--seed', type=int, default=0, help='seed of the test and labeled choice (default 0)')
    p.add_argument('--threshold', type=int, default=None,
                   help='binary masks: foreground where the mask is above this grey value (lossy JPEG masks: 127)')
    p.add_argument('--label-map', default=None,
                   help='JSON (text or file) from label name to grey value or [R, G, B] colour, background first, '
                        "e.g. '{\"background\": 0, \"polyp\": 255}'")
    p.add_argument('--channels', choices=('auto', 'rgb', 'gray'), default='auto',
                   help='auto: RGB when any image has colour, else gray')
    p.add_argument('--overwrite', action='store_true', help='replace an existing dataset with this id')
    args = p.parse_args()
    _run(lambda: convert_image_folders(args.i, args.m, args.d, args.name, unlabeled=args.u, labeled=args.labeled,
                                       test_fraction=args.test_fraction, seed=args.seed, threshold=args.threshold,
                                       label_map=parse_label_map(args.label_map), channels=args.channels,
                                       overwrite=args.overwrite))


def convert_cvc_entry() -> None:
    from dataset_conversion.cvc import DEFAULT_LABELED, convert_cvc
    p = argparse.ArgumentParser(description="Convert CVC-ClinicDB (images/ and masks/) into an nnU-Net dataset with "
                                            "the project's split: whole video sequences as test, the first N of a "
                                            "fixed order of the other frames labeled, the rest unlabeled.")
    p.add_argument('-i', required=True, help='folder holding images/ and masks/')
    p.add_argument('--labeled', type=int, default=DEFAULT_LABELED,
                   help=f'labeled frames (default {DEFAULT_LABELED} = 5%%; 47 = 10%%)')
    p.add_argument('-d', type=int, required=True, help='dataset id')
    p.add_argument('--name', default='CVCClinicDB', help='dataset name (default: CVCClinicDB)')
    p.add_argument('--overwrite', action='store_true', help='replace an existing dataset with this id')
    args = p.parse_args()
    _run(lambda: convert_cvc(args.i, args.d, labeled=args.labeled, name=args.name, overwrite=args.overwrite))


def evaluate_entry() -> None:
    from nnunetv2_m3hl.evaluation import evaluate_folders
    p = argparse.ArgumentParser(description='Dice, Jaccard, HD95 and ASD per case and class, as in the papers.')
    p.add_argument('-ref', required=True, help='folder of reference label files')
    p.add_argument('-pred', required=True, help='folder of predicted label files (same names)')
    p.add_argument('-l', nargs='+', type=int, default=None, help='labels to evaluate (default: all in the refs)')
    p.add_argument('--convention', choices=('paper', 'mm'), default='paper',
                   help="paper: medpy, voxel units, empty prediction scores 0 (default); mm: image spacing, "
                        "empty predictions flagged")
    p.add_argument('--largest-component', action='store_true',
                   help='keep only the largest connected component of each predicted class (LA papers)')
    p.add_argument('-o', required=True, help='output JSON (a CSV is written next to it)')
    args = p.parse_args()
    _run(lambda: evaluate_folders(args.ref, args.pred, args.o, labels=args.l, convention=args.convention,
                                  largest_component=args.largest_component))


def check_dataset_entry() -> None:
    import time
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2_m3hl.integrity import DATASET_SUBFOLDERS, check_dataset_files
    from nnunetv2_m3hl.unlabeled import check_unlabeled_dataset
    p = argparse.ArgumentParser(description=f"Check that every scan file of a raw dataset is whole (compressed "
                                            f"streams complete, voxel data as long as the header says): "
                                            f"{', '.join(DATASET_SUBFOLDERS)}; and that every unlabeled case is "
                                            f"what M3HL training will accept (its files as imagesTr's, read by the "
                                            f"dataset's reader with the channels of dataset.json). Run it next to "
                                            f"nnU-Net's --verify_dataset_integrity, which does not detect truncated "
                                            f"files and does not look at imagesUnlabeledTr.")
    p.add_argument('-d', required=True, help='dataset name or id (in nnUNet_raw)')
    args = p.parse_args()

    def check():
        if nnUNet_raw is None:
            raise FileNotFoundError("nnUNet_raw is not set: export it")
        start = time.time()
        raw = os.path.join(nnUNet_raw, maybe_convert_to_dataset_name(args.d))
        n, problems = check_dataset_files(raw)
        for message in problems:
            print(f"INCOMPLETE: {message}", file=sys.stderr)
        if problems:
            print(f"ERROR: {len(problems)} of {n} files are incomplete; replace them before planning or training",
                  file=sys.stderr)
            sys.exit(2)
        n_unlabeled, unusable = check_unlabeled_dataset(raw)
        for message in unusable:
            print(f"UNUSABLE: {message}", file=sys.stderr)
        if unusable:
            print(f"ERROR: imagesUnlabeledTr cannot be used for M3HL training ({len(unusable)} problem(s)); fix "
                  f"them before training", file=sys.stderr)
            sys.exit(2)
        print(f"{n} files checked in {time.time() - start:.1f} s: all complete"
              + (f"; {n_unlabeled} unlabeled cases readable with the dataset's channels" if n_unlabeled else ''))
    _run(check)


def demo_entry() -> None:
    from nnunetv2_m3hl.demo import main
    _run(main)


def make_ssl_dataset_entry() -> None:
    from dataset_conversion.make_ssl import make_ssl_dataset
    p = argparse.ArgumentParser(description='Turn a fully labeled nnU-Net raw dataset into a semi-supervised one: '
                                            'N labeled cases chosen with a seed, the rest moved to imagesUnlabeledTr/ '
                                            'without labels; test data kept.')
    p.add_argument('-d', required=True, help='source dataset name or id (in nnUNet_raw)')
    p.add_argument('--labeled', type=int, required=True, help='number of labeled cases to keep')
    p.add_argument('-o', type=int, required=True, help='id of the new dataset')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--overwrite', action='store_true')
    args = p.parse_args()
    _run(lambda: make_ssl_dataset(args.d, args.labeled, args.o, seed=args.seed, overwrite=args.overwrite))
