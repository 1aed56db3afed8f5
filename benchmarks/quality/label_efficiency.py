"""Label efficiency on the synthetic task: M3HL trainers vs nnUNetTrainer at equal iterations, for several
labeled counts and seeds; mean and spread of the test Dice.

    python benchmarks/quality/label_efficiency.py --labeled 2 4 8 --seeds 0 1 2 -o results/label_efficiency.json

Each (labeled count, seed) generates its own dataset (the seed also changes the phantoms), trains every
trainer with the same budget and evaluates all of them on the same test cases; an M3HL trainer is scored
twice, with its student (the default checkpoint) and with its EMA teacher. Results are written after every
(labeled count, seed), so an interrupted benchmark keeps what it measured, and a rerun with more
``--trainers`` adds only what is missing (the datasets are regenerated identically from the seed).
"""
import argparse
import copy
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

BASELINE = 'nnUNetTrainer'


def summarize(runs: list) -> list:
    """Per labeled count and scored model: mean and spread over seeds of the Dice and of the gain over the
    baseline on the same (labeled count, seed); and the per-case gains pooled over seeds (median, wins,
    Wilcoxon signed-rank p-value), which show whether a mean difference is carried by a few cases."""
    from scipy.stats import wilcoxon
    rows = []
    for n in sorted({r['n_labeled'] for r in runs}):
        sel = [r for r in runs if r['n_labeled'] == n]
        names = sorted({k for r in sel for k in r['mean_dice']}, key=lambda k: (k != BASELINE, k))
        for name in names:
            with_both = [r for r in sel if name in r['mean_dice'] and BASELINE in r['mean_dice']]
            dice = np.array([r['mean_dice'][name] for r in sel if name in r['mean_dice']])
            gain = np.array([r['mean_dice'][name] - r['mean_dice'][BASELINE] for r in with_both])
            case_gain = np.array([100 * (r['per_case_dice'][name][c] - r['per_case_dice'][BASELINE][c])
                                  for r in with_both if name in r.get('per_case_dice', {})
                                  for c in r['per_case_dice'][name]])
            row = {'n_labeled': n, 'model': name, 'seeds': len(dice), 'dice_mean': float(dice.mean()),
                   'dice_std': float(dice.std()), 'paired_seeds': len(gain),
                   'gain_points': float(100 * gain.mean()) if len(gain) else None,
                   'gain_std_points': float(100 * gain.std()) if len(gain) else None,
                   'paired_cases': len(case_gain)}
            if name != BASELINE and len(case_gain):
                row.update({'case_gain_median_points': float(np.median(case_gain)),
                            'cases_better': int((case_gain > 0).sum()), 'cases_worse': int((case_gain < 0).sum()),
                            'wilcoxon_p': float(wilcoxon(case_gain).pvalue) if np.any(case_gain) else 1.0})
            rows.append(row)
    return rows


def format_summary(rows: list) -> str:
    lines = ['| labeled | model | seeds | Dice (%) | gain over nnUNetTrainer (points) | test cases | '
             'median gain per case | better / worse | Wilcoxon p |', '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        gain = '' if r['model'] == BASELINE or r['gain_points'] is None else \
            f"{r['gain_points']:+.2f} ± {r['gain_std_points']:.2f}"
        cases = '| | | | |' if 'wilcoxon_p' not in r else \
            f"| {r['paired_cases']} | {r['case_gain_median_points']:+.2f} | " \
            f"{r['cases_better']} / {r['cases_worse']} | {r['wilcoxon_p']:.3g} |"
        lines.append(f"| {r['n_labeled']} | {r['model']} | {r['seeds']} | {100 * r['dice_mean']:.2f} ± "
                     f"{100 * r['dice_std']:.2f} | {gain} {cases}")
    return '\n'.join(lines)


def merge_run(runs: list, run: dict) -> None:
    """Add one (labeled count, seed) result; models measured again replace their earlier numbers."""
    for r in runs:
        if (r['n_labeled'], r['seed']) == (run['n_labeled'], run['seed']):
            added = sorted(set(run['mean_dice']) - set(r['mean_dice']))
            for key in ('mean_dice', 'per_class_dice', 'per_case_dice'):
                r.setdefault(key, {}).update(run.get(key, {}))
            if added and 'seconds' in run:
                r.setdefault('seconds_of_later_calls', {})[', '.join(added)] = run['seconds']
            return
    runs.append(run)


def complete_from_workdir(workdir: str, runs: list, device: str) -> None:
    """For runs measured before the teachers and the per-case numbers were recorded: score the EMA teachers
    of the M3HL folds still in ``workdir`` and read the per-case Dice from the metrics files there."""
    from nnunetv2_m3hl.demo import TEACHER_SUFFIX, per_case_mean_dice, predict, use_nnunet_folders
    from nnunetv2_m3hl.evaluation import evaluate_folders
    for r in runs:
        folder = os.path.join(workdir, f"l{r['n_labeled']}_s{r['seed']}")
        teachers = [f'{t}{TEACHER_SUFFIX}' for t in r['mean_dice'] if t != BASELINE and TEACHER_SUFFIX not in t]
        for name, (fold, checkpoint) in trained_folds(folder, [t for t in teachers if t not in r['mean_dice']]).items():
            use_nnunet_folders(folder)
            raw = os.path.join(folder, 'nnUNet_raw', os.path.basename(os.path.dirname(os.path.dirname(fold))))
            predictions = os.path.join(folder, 'predictions', name)
            predict(fold, os.path.join(raw, 'imagesTs'), predictions, device, checkpoint)
            metrics = evaluate_folders(os.path.join(raw, 'labelsTs'), predictions,
                                       os.path.join(folder, f'metrics_{name}.json'), verbose=False)
            r['mean_dice'][name] = metrics['mean']['dice']
            r['per_class_dice'][name] = {c: m['dice'] for c, m in metrics['per_class'].items()}
            print(f"labeled {r['n_labeled']} seed {r['seed']}: {name} {100 * r['mean_dice'][name]:.2f}", flush=True)
        for name in r['mean_dice']:
            metrics_file = os.path.join(folder, f'metrics_{name}.json')
            if name not in r.setdefault('per_case_dice', {}) and os.path.isfile(metrics_file):
                with open(metrics_file) as f:
                    metrics = json.load(f)
                # only numbers of this very run: the file must reproduce the recorded mean
                if abs(metrics['mean']['dice'] - r['mean_dice'][name]) < 1e-9:
                    r['per_case_dice'][name] = per_case_mean_dice(metrics)


def trained_folds(folder: str, models) -> dict:
    """Model name -> (fold folder, checkpoint) of the folds trained in one (labeled count, seed) folder."""
    from nnunetv2_m3hl.demo import TEACHER_SUFFIX
    from nnunetv2_m3hl.trainers.m3hl_trainer import TEACHER_CHECKPOINT
    results = os.path.join(folder, 'nnUNet_results')
    found = {}
    for dataset in (os.listdir(results) if os.path.isdir(results) else []):
        for name in models:
            trainer, checkpoint = (name[:-len(TEACHER_SUFFIX)], TEACHER_CHECKPOINT) \
                if name.endswith(TEACHER_SUFFIX) else (name, 'checkpoint_final.pth')
            fold = os.path.join(results, dataset, f'{trainer}__nnUNetPlans__2d', 'fold_0')
            if os.path.isfile(os.path.join(fold, checkpoint)):
                found[name] = (fold, checkpoint)
    return found


def retest(workdir: str, runs: list, n_test: int, device: str, done: list) -> list:
    """Score every trained model of ``runs`` (still in ``workdir``) on a larger test set of the same seed,
    except those already in ``done`` (earlier retest runs). The synthetic generator draws test cases last,
    so the training data and the first test cases are the ones the models were measured on; this is checked
    before anything is predicted."""
    import SimpleITK as sitk
    from dataset_conversion.synthetic import make_synthetic_dataset
    from nnunetv2_m3hl.demo import DEMO_DATASET_ID, per_case_mean_dice, predict, use_nnunet_folders
    from nnunetv2_m3hl.evaluation import evaluate_folders
    out = []
    for r in runs:
        folder = os.path.join(workdir, f"l{r['n_labeled']}_s{r['seed']}")
        if not os.path.isdir(os.path.join(folder, 'nnUNet_results')):
            sys.exit(f"{folder} holds no trained models: --workdir must be the folder the runs were trained in")
        use_nnunet_folders(folder)
        settings = r['settings']
        raw = make_synthetic_dataset(os.path.join(folder, f'retest{n_test}'), DEMO_DATASET_ID, r['n_labeled'],
                                     settings['n_unlabeled'], n_test, shape=settings['shape'], seed=r['seed'],
                                     overwrite=True)
        trained_on = os.path.join(folder, 'nnUNet_raw', os.path.basename(raw))
        for sub, case in (('imagesTr', 'lab_000_0000.nii.gz'), ('imagesTs', 'test_000_0000.nii.gz')):
            a, b = (sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(d, sub, case))) for d in (raw, trained_on))
            if not np.array_equal(a, b):
                raise RuntimeError(f'{folder}: the regenerated dataset differs from the one trained on')
        run = {'n_labeled': r['n_labeled'], 'seed': r['seed'], 'settings': dict(settings, n_test=n_test),
               'mean_dice': {}, 'per_class_dice': {}, 'per_case_dice': {}}
        scored = next((set(d['mean_dice']) for d in done if (d['n_labeled'], d['seed']) == (r['n_labeled'], r['seed'])),
                      set())
        for name, (fold, checkpoint) in trained_folds(folder, [m for m in r['mean_dice'] if m not in scored]).items():
            predictions = os.path.join(folder, f'retest{n_test}', 'predictions', name)
            predict(fold, os.path.join(raw, 'imagesTs'), predictions, device, checkpoint)
            metrics = evaluate_folders(os.path.join(raw, 'labelsTs'), predictions,
                                       os.path.join(folder, f'retest{n_test}', f'metrics_{name}.json'), verbose=False)
            run['mean_dice'][name] = metrics['mean']['dice']
            run['per_class_dice'][name] = {c: m['dice'] for c, m in metrics['per_class'].items()}
            run['per_case_dice'][name] = per_case_mean_dice(metrics)
            print(f"labeled {r['n_labeled']} seed {r['seed']}: {name} on {n_test} test cases "
                  f"{100 * run['mean_dice'][name]:.2f}", flush=True)
        out.append(run)
    return out


def write_result(path: str, settings: dict, runs: list, merge: bool = True) -> None:
    """Merge ``runs`` into what the file holds now (another process may have added runs since it was
    read), or replace its runs with ``merge=False``."""
    before = json.load(open(path)) if merge and os.path.isfile(path) else {}
    merged = before.get('runs', [])
    for run in runs:
        merge_run(merged, copy.deepcopy(run))
    # a note on trainer names that changed meaning stays with the runs it is about
    notes = {'trainer_names': before['trainer_names']} if 'trainer_names' in before else {}
    with open(path + '.tmp', 'w') as f:
        json.dump({**notes, 'settings': settings, 'runs': merged, 'summary': summarize(merged)}, f, indent=1)
    os.replace(path + '.tmp', path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--labeled', type=int, nargs='+', default=[2, 4, 8])
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--trainers', nargs='+', default=['M3HLTrainer', BASELINE])
    p.add_argument('--unlabeled', type=int, default=40)
    p.add_argument('--test', type=int, default=12)
    p.add_argument('--epochs', type=int, default=6)
    p.add_argument('--iterations', type=int, default=80)
    p.add_argument('--device', default='cpu')
    p.add_argument('--workdir', default=None)
    p.add_argument('--complete-from-workdir', action='store_true',
                   help='only add what earlier runs did not record (teacher scores, per-case Dice) from the folds '
                        'and metrics files still in --workdir')
    p.add_argument('--retest', type=int, default=None, metavar='N',
                   help='only score the models already trained in --workdir on N test cases of the same seeds '
                        '(the first ones are the original test set); written to -o with _testN appended')
    p.add_argument('-o', default='label_efficiency.json')
    args = p.parse_args()
    os.environ.setdefault('nnUNet_n_proc_DA', '2')
    os.environ.setdefault('nnUNet_compile', 'f')
    from nnunetv2_m3hl.demo import run_comparison
    workdir = args.workdir or tempfile.mkdtemp(prefix='m3hl-label-eff-')
    previous = json.load(open(args.o)) if os.path.isfile(args.o) else {'runs': []}
    runs = previous['runs']
    for key in ('unlabeled', 'test', 'epochs', 'iterations'):
        if key in previous.get('settings', {}) and previous['settings'][key] != getattr(args, key):
            sys.exit(f"{args.o} was measured with --{key} {previous['settings'][key]}, not {getattr(args, key)}: "
                     f"write to another file with -o, or rerun with the same settings")
    if args.complete_from_workdir:
        if args.workdir is None:
            sys.exit('--complete-from-workdir needs the --workdir of the earlier runs')
        complete_from_workdir(args.workdir, runs, args.device)
        write_result(args.o, previous.get('settings', vars(args)), runs, merge=False)
        print(format_summary(summarize(runs)))
        return
    if args.retest:
        if args.workdir is None:
            sys.exit('--retest needs the --workdir of the earlier runs')
        path = f"{os.path.splitext(args.o)[0]}_test{args.retest}.json"
        done = json.load(open(path))['runs'] if os.path.isfile(path) else []
        retested = retest(args.workdir, [r for r in runs if r['n_labeled'] in args.labeled and r['seed'] in args.seeds],
                          args.retest, args.device, done)
        write_result(path, dict(vars(args), test=args.retest), retested)
        print(format_summary(summarize(json.load(open(path))['runs'])))
        return
    # seeds outermost: an interrupted benchmark still covers every labeled count
    for seed in args.seeds:
        for n in args.labeled:
            done = next((set(r['mean_dice']) for r in runs if (r['n_labeled'], r['seed']) == (n, seed)), set())
            missing = [t for t in args.trainers if t not in done]
            if not missing:
                continue
            summary = run_comparison(os.path.join(workdir, f'l{n}_s{seed}'), n, args.unlabeled, args.test,
                                     args.epochs, args.iterations, seed, args.device, trainers=missing,
                                     overlays=False, verbose=False)
            run = {'n_labeled': n, 'seed': seed, **summary}
            merge_run(runs, copy.deepcopy(run))
            write_result(args.o, vars(args), [run])
            print(f"labeled {n} seed {seed}: " + '  '.join(f"{k} {100 * v:.2f}" for k, v in
                                                            summary['mean_dice'].items()), flush=True)
    print(format_summary(summarize(runs)))


if __name__ == '__main__':
    main()
