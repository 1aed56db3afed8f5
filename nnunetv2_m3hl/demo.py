"""``nnUNetv2_m3hl_demo``: M3HL against plain nnU-Net on a synthetic semi-supervised task, end to end.

Generates cardiac-like phantoms (few labeled, many unlabeled, a labeled test set), plans and preprocesses
them with nnU-Net, trains M3HLTrainer and nnUNetTrainer with the same budget, predicts the test set (with
M3HL's EMA teacher too), evaluates every prediction (the papers' convention) and writes PNG overlays.
Everything lives in the output folder, with its own nnUNet_raw / nnUNet_preprocessed / nnUNet_results.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional

import numpy as np

DEMO_DATASET_ID = 990
# chosen for what they show: with 2 labeled cases the benchmark's gain of the default over nnU-Net lies beyond its
# seed-to-seed spread (+6.36 points over 3 seeds, ahead on every seed; benchmarks/HISTORY.md), which is what
# semi-supervised learning is for; 5 x 60 iterations per trainer keep the whole demo within 15 minutes on a 2-core CPU
DEFAULT_SETTINGS = {'n_labeled': 2, 'n_unlabeled': 40, 'n_test': 12, 'epochs': 5, 'iterations': 60,
                    'shape': [96, 96]}
NNUNET_LOG = 'nnunet_log.txt'


@contextmanager
def output_to(log_file: str) -> Iterator[None]:
    """This process's standard output and error, and its workers', appended to ``log_file`` (nnU-Net's own epoch and
    per-case lines), so that the demo's output stays its summary."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_file, 'a') as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
TEACHER_SUFFIX = ' (teacher)'


def use_nnunet_folders(output_folder: str) -> Dict[str, str]:
    """Point nnU-Net at folders inside ``output_folder`` (for this process and its children)."""
    from nnunetv2_m3hl import trainer_path
    paths = {'nnUNet_raw': os.path.join(output_folder, 'nnUNet_raw'),
             'nnUNet_preprocessed': os.path.join(output_folder, 'nnUNet_preprocessed'),
             'nnUNet_results': os.path.join(output_folder, 'nnUNet_results')}
    os.environ.update(paths)
    ext = os.environ.get('nnUNet_extTrainer', '')
    if trainer_path() not in ext.split(os.pathsep):
        os.environ['nnUNet_extTrainer'] = os.pathsep.join([p for p in (trainer_path(), ext) if p])
    return paths


def plan_and_preprocess(dataset_id: int, configuration: str = '2d', num_processes: int = 2) -> None:
    cmd = [sys.executable, '-c', 'from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import '
           'plan_and_preprocess_entry as main; main()', '-d', str(dataset_id), '-c', configuration,
           '-np', str(num_processes), '-npfp', str(num_processes)]  # nnU-Net's default spawns 8 fingerprint workers
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nnU-Net planning failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def write_single_fold_split(dataset_name: str, train: List[str], val: List[str]) -> None:
    folder = os.path.join(os.environ['nnUNet_preprocessed'], dataset_name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'splits_final.json'), 'w') as f:
        json.dump([{'train': train, 'val': val}], f)


def train(dataset_id: int, trainer_name: str, epochs: int, iterations: int, device: str, seed: int,
          configuration: str = '2d') -> str:
    """Train fold 0 in this process with an explicit budget, reproducibly for a given seed; returns the fold
    folder."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2_m3hl.determinism import make_loading_deterministic, seed_everything
    seed_everything(seed)
    trainer = get_trainer_from_args(str(dataset_id), configuration, 0, trainer_name, device=torch.device(device))
    make_loading_deterministic(trainer, seed)
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = max(2, iterations // 10)
    if hasattr(trainer, 'mixed_sample_png_every'):
        trainer.mixed_sample_png_every = max(1, epochs)
    trainer.run_training()
    return trainer.output_folder


def predict(fold_folder: str, input_folder: str, output_folder: str, device: str,
            checkpoint_name: str = 'checkpoint_final.pth') -> None:
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(device=torch.device(device), verbose=False, verbose_preprocessing=False,
                                allow_tqdm=False, perform_everything_on_device=device == 'cuda')
    predictor.initialize_from_trained_model_folder(os.path.dirname(fold_folder), use_folds=(0,),
                                                   checkpoint_name=checkpoint_name)
    predictor.predict_from_files(input_folder, output_folder, save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=1, num_processes_segmentation_export=1)


def save_overlays(raw_dataset: str, predictions: Dict[str, str], output_png: str, n_cases: int = 4) -> None:
    """Rows of test cases: image, ground truth and each trainer's prediction."""
    import matplotlib
    matplotlib.use('agg')
    import matplotlib.pyplot as plt
    import SimpleITK as sitk
    cases = sorted(f[:-7] for f in os.listdir(os.path.join(raw_dataset, 'labelsTs')))[:n_cases]
    columns = ['image', 'ground truth'] + list(predictions)
    fig, axes = plt.subplots(len(cases), len(columns), figsize=(2.6 * len(columns), 2.6 * len(cases)), squeeze=False)
    for row, case in zip(axes, cases):
        arrays = [sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(raw_dataset, 'imagesTs', f'{case}_0000.nii.gz'))),
                  sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(raw_dataset, 'labelsTs', f'{case}.nii.gz')))]
        arrays += [sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(p, f'{case}.nii.gz'))) for p in predictions.values()]
        for ax, title, arr in zip(row, columns, arrays):
            middle = arr[arr.shape[0] // 2]
            ax.imshow(arrays[0][arrays[0].shape[0] // 2], cmap='gray')
            if title != 'image':
                ax.imshow(np.ma.masked_equal(middle, 0), cmap='jet', vmin=0, vmax=3, alpha=0.5, interpolation='nearest')
            ax.set_title(f'{case}: {title}', fontsize=8)
            ax.axis('off')
    plt.tight_layout()
    fig.savefig(output_png, dpi=90)
    plt.close(fig)


def per_case_mean_dice(metrics: dict) -> Dict[str, float]:
    """Mean Dice over classes of every case of an ``evaluate_folders`` result."""
    return {case: float(np.mean([m['dice'] for m in per_class.values()]))
            for case, per_class in metrics['per_case'].items()}


def run_comparison(output_folder: str, n_labeled: int, n_unlabeled: int, n_test: int, epochs: int, iterations: int,
                   seed: int, device: str, shape=tuple(DEFAULT_SETTINGS['shape']),
                   trainers=('M3HLTrainer', 'nnUNetTrainer'),
                   dataset_id: int = DEMO_DATASET_ID, overlays: bool = True, verbose: bool = True) -> dict:
    """One synthetic task, every trainer with the same budget; returns the metrics per trainer."""
    from dataset_conversion.synthetic import make_synthetic_dataset
    from nnunetv2_m3hl.demo_expectation import environment
    from nnunetv2_m3hl.evaluation import evaluate_folders
    from nnunetv2_m3hl.trainers.m3hl_trainer import TEACHER_CHECKPOINT
    from nnunetv2_m3hl.unlabeled import preprocess_unlabeled
    log = (lambda *a, **k: print(*a, **k, flush=True)) if verbose else (lambda *a, **k: None)
    os.makedirs(output_folder, exist_ok=True)
    nnunet_log = os.path.join(output_folder, NNUNET_LOG)
    use_nnunet_folders(output_folder)
    raw = make_synthetic_dataset(os.environ['nnUNet_raw'], dataset_id, n_labeled, n_unlabeled, n_test, shape=shape,
                                 seed=seed, overwrite=True)
    dataset_name = os.path.basename(raw)
    t0 = time.time()
    log(f"[demo] planning and preprocessing {dataset_name} ({n_labeled} labeled, {n_unlabeled} unlabeled, "
        f"{n_test} test)")
    plan_and_preprocess(dataset_id)
    labeled = [f'lab_{i:03d}' for i in range(n_labeled)]
    # all labeled cases train every trainer alike; nnU-Net's per-epoch validation reuses one of them
    write_single_fold_split(dataset_name, labeled, labeled[:1])
    preprocess_unlabeled(dataset_id, '2d', num_processes=2, verbose=verbose)
    log(f"[demo] nnU-Net's own output goes to {nnunet_log}")
    results, predictions = {}, {}
    for trainer_name in trainers:
        log(f"[demo] training {trainer_name}: {epochs} epochs x {iterations} iterations on {device}")
        t = time.time()
        with output_to(nnunet_log):
            fold = train(dataset_id, trainer_name, epochs, iterations, device, seed)
        # an M3HL fold also holds its EMA teacher, which nnUNetv2_predict -chk can use instead of the student
        checkpoints = {trainer_name: 'checkpoint_final.pth'}
        if os.path.isfile(os.path.join(fold, TEACHER_CHECKPOINT)):
            checkpoints[f'{trainer_name}{TEACHER_SUFFIX}'] = TEACHER_CHECKPOINT
        for name, checkpoint in checkpoints.items():
            predictions[name] = os.path.join(output_folder, 'predictions', name)
            with output_to(nnunet_log):
                predict(fold, os.path.join(raw, 'imagesTs'), predictions[name], device, checkpoint)
            metrics = evaluate_folders(os.path.join(raw, 'labelsTs'), predictions[name],
                                       os.path.join(output_folder, f'metrics_{name}.json'), verbose=False)
            metrics['train_and_predict_seconds'] = time.time() - t
            results[name] = metrics
            log(f"[demo] {name}: mean Dice {100 * metrics['mean']['dice']:.2f}%")
    if overlays:
        save_overlays(raw, predictions, os.path.join(output_folder, 'overlays.png'))
    summary = {'settings': {'n_labeled': n_labeled, 'n_unlabeled': n_unlabeled, 'n_test': n_test, 'epochs': epochs,
                            'iterations': iterations, 'seed': seed, 'device': device, 'shape': list(shape)},
               'mean_dice': {k: v['mean']['dice'] for k, v in results.items()},
               'per_class_dice': {k: {c: m['dice'] for c, m in v['per_class'].items()} for k, v in results.items()},
               'per_case_dice': {k: per_case_mean_dice(v) for k, v in results.items()},
               'seconds': time.time() - t0, 'environment': environment()}
    with open(os.path.join(output_folder, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1)
    return summary


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-o', '--output', default='m3hl_demo', help='output folder (default: ./m3hl_demo)')
    d = DEFAULT_SETTINGS
    p.add_argument('--labeled', type=int, default=d['n_labeled'],
                   help=f"labeled training cases (default {d['n_labeled']})")
    p.add_argument('--unlabeled', type=int, default=d['n_unlabeled'],
                   help=f"unlabeled scans (default {d['n_unlabeled']})")
    p.add_argument('--test', type=int, default=d['n_test'], help=f"labeled test cases (default {d['n_test']})")
    p.add_argument('--epochs', type=int, default=d['epochs'], help=f"epochs per trainer (default {d['epochs']})")
    p.add_argument('--iterations', type=int, default=d['iterations'],
                   help=f"iterations per epoch (default {d['iterations']})")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--device', default=None, help='cpu or cuda (default: cuda when available)')
    args = p.parse_args(argv)
    import torch
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    os.environ.setdefault('nnUNet_n_proc_DA', '2')
    os.environ.setdefault('nnUNet_compile', 'f' if device == 'cpu' else 't')
    summary = run_comparison(os.path.abspath(args.output), args.labeled, args.unlabeled, args.test, args.epochs,
                             args.iterations, args.seed, device)
    print('\n| trainer | mean Dice (%) | ' + ' | '.join(f'class {c}' for c in
                                                       next(iter(summary['per_class_dice'].values()))) + ' |')
    print('|---|---|' + '---|' * len(next(iter(summary['per_class_dice'].values()))))
    for name, dice in summary['mean_dice'].items():
        per_class = ' | '.join(f'{100 * v:.2f}' for v in summary['per_class_dice'][name].values())
        print(f'| {name} | {100 * dice:.2f} | {per_class} |')
    from nnunetv2_m3hl.demo_expectation import describe, load_reference
    print('\n' + '\n'.join(describe(summary['mean_dice'], summary['settings'], load_reference(),
                                     summary['environment'])))
    print(f"\nOverlays: {os.path.join(os.path.abspath(args.output), 'overlays.png')}; nnU-Net's own output: "
          f"{os.path.join(os.path.abspath(args.output), NNUNET_LOG)}; took {summary['seconds']:.0f} s")


if __name__ == '__main__':
    main()
