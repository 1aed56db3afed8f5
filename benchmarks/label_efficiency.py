"""Label efficiency on the synthetic task: M3HLTrainer vs nnUNetTrainer at equal iterations, for several
labeled counts and seeds; mean and spread of the test Dice.

    python benchmarks/label_efficiency.py --labeled 2 4 8 --seeds 0 1 2 -o results/label_efficiency.json

Each (labeled count, seed) generates its own dataset (the seed also changes the phantoms), trains both
trainers with the same budget and evaluates both on the same test cases. Results are written after
every run, so an interrupted benchmark keeps what it measured.
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def summarize(runs: list) -> list:
    rows = []
    for n in sorted({r['n_labeled'] for r in runs}):
        sel = [r for r in runs if r['n_labeled'] == n]
        m3hl = np.array([r['mean_dice']['M3HLTrainer'] for r in sel])
        base = np.array([r['mean_dice']['nnUNetTrainer'] for r in sel])
        rows.append({'n_labeled': n, 'seeds': len(sel), 'M3HL_mean': float(m3hl.mean()), 'M3HL_std': float(m3hl.std()),
                     'nnUNet_mean': float(base.mean()), 'nnUNet_std': float(base.std()),
                     'gain_points': float(100 * (m3hl - base).mean()),
                     'gain_std_points': float(100 * (m3hl - base).std())})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--labeled', type=int, nargs='+', default=[2, 4, 8])
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--unlabeled', type=int, default=40)
    p.add_argument('--test', type=int, default=12)
    p.add_argument('--epochs', type=int, default=6)
    p.add_argument('--iterations', type=int, default=80)
    p.add_argument('--device', default='cpu')
    p.add_argument('--workdir', default=None)
    p.add_argument('-o', default='label_efficiency.json')
    args = p.parse_args()
    os.environ.setdefault('nnUNet_n_proc_DA', '2')
    os.environ.setdefault('nnUNet_compile', 'f')
    from nnunetv2_m3hl.demo import run_comparison
    workdir = args.workdir or tempfile.mkdtemp(prefix='m3hl-label-eff-')
    runs = json.load(open(args.o))['runs'] if os.path.isfile(args.o) else []
    done = {(r['n_labeled'], r['seed']) for r in runs}
    # seeds outermost: an interrupted benchmark still covers every labeled count
    for seed in args.seeds:
        for n in args.labeled:
            if (n, seed) in done:
                continue
            summary = run_comparison(os.path.join(workdir, f'l{n}_s{seed}'), n, args.unlabeled, args.test,
                                     args.epochs, args.iterations, seed, args.device, overlays=False, verbose=False)
            runs.append({'n_labeled': n, 'seed': seed, **summary})
            result = {'settings': vars(args), 'runs': runs, 'summary': summarize(runs)}
            with open(args.o + '.tmp', 'w') as f:
                json.dump(result, f, indent=1)
            os.replace(args.o + '.tmp', args.o)
            print(f"labeled {n} seed {seed}: M3HL {100 * summary['mean_dice']['M3HLTrainer']:.2f}  "
                  f"nnU-Net {100 * summary['mean_dice']['nnUNetTrainer']:.2f}", flush=True)
    print('| labeled | seeds | M3HL Dice (%) | nnU-Net Dice (%) | gain (points) |')
    print('|---|---|---|---|---|')
    for r in summarize(runs):
        print(f"| {r['n_labeled']} | {r['seeds']} | {100 * r['M3HL_mean']:.2f} ± {100 * r['M3HL_std']:.2f} | "
              f"{100 * r['nnUNet_mean']:.2f} ± {100 * r['nnUNet_std']:.2f} | {r['gain_points']:+.2f} ± "
              f"{r['gain_std_points']:.2f} |")


if __name__ == '__main__':
    main()
