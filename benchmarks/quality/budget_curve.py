"""Does M3HL's gain survive a longer budget? nnU-Net and the default M3HL on ACDC with 3 labeled patients, seed 0, at
5000, 10000 and 20000 iterations of the same plans: test and validation Dice against the iterations, as a table and
one PNG. Every point is a separate run of ``real_data.py --budget cpu_long --iterations N`` (its own learning-rate
schedule, not a checkpoint of a longer run):

    python benchmarks/quality/real_data.py --dataset acdc --data /data/ACDC --labeled 3 --budget cpu_long \
        --iterations 20000 --seeds 0 --trainers nnUNetTrainer M3HLTrainer --workdir /scratch/acdc3_20k \
        -o benchmarks/results/real_acdc3_cpu_long_20000.json
    python benchmarks/quality/budget_curve.py -o benchmarks/results/budget_curve_acdc3.png --write benchmarks/RESULTS.md

Points whose JSON or model does not exist yet are left out and listed.
"""
import argparse
import os
import sys
from typing import List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from real_data import split_scores  # noqa: E402
from results_tables import RESULTS, load, replace_block  # noqa: E402

SEED = '0'
# (iterations, results JSON, model name in it) of each trainer's points
POINTS = {
    'nnUNetTrainer': [(5000, 'real_acdc3_cpu_long.json', 'nnUNetTrainer'),
                      (10000, 'real_acdc3_cpu_long_nnunet_10000.json', 'nnUNetTrainer'),
                      (20000, 'real_acdc3_cpu_long_20000.json', 'nnUNetTrainer')],
    'M3HLTrainer (default)': [(5000, 'default_selection_acdc3_cpu_long.json', 'M3HLTrainer_readyWarmup_uncapped'),
                              (10000, 'real_acdc3_cpu_long_10000.json', 'M3HLTrainer'),
                              (20000, 'real_acdc3_cpu_long_20000.json', 'M3HLTrainer')],
}


def measured(results: str = RESULTS) -> tuple:
    """({trainer: [(iterations, test Dice, validation Dice)]} in points, [missing points])."""
    curves, missing = {}, []
    for trainer, points in POINTS.items():
        for iterations, json_name, model in points:
            runs = load(json_name, results)
            record = (runs or {}).get(SEED, {}).get('models', {}).get(model, {})
            test, validation = split_scores(record, 'test'), split_scores(record, 'validation')
            if not test:
                missing.append(f'{trainer} at {iterations}')
                continue
            curves.setdefault(trainer, []).append(
                (iterations, 100 * test['mean']['dice'], 100 * validation['mean']['dice'] if validation else None))
    return curves, missing


def markdown(curves: dict, missing: List[str]) -> str:
    iterations = sorted({i for points in curves.values() for i, _, _ in points})
    lines = ['| trainer | ' + ' | '.join(f'{i} iterations: test / validation' for i in iterations) + ' |',
             '|---' * (len(iterations) + 1) + '|']
    for trainer, points in curves.items():
        by_iterations = {i: (t, v) for i, t, v in points}
        cells = [f"{by_iterations[i][0]:.2f} / {by_iterations[i][1]:.2f}" if i in by_iterations else ''
                 for i in iterations]
        lines.append(f"| {trainer} | " + ' | '.join(cells) + ' |')
    if missing:
        lines += ['', f"Not run yet: {', '.join(missing)}."]
    return '\n'.join(lines)


def plot(curves: dict, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for colour, (trainer, points) in zip(('C0', 'C1'), curves.items()):
        x = [i for i, _, _ in points]
        ax.plot(x, [t for _, t, _ in points], 'o-', color=colour, label=f'{trainer}: test')
        ax.plot(x, [v for _, _, v in points], 's--', color=colour, label=f'{trainer}: validation')
    ax.set_xscale('log', base=2)
    ax.set_xticks([5000, 10000, 20000], ['5000', '10000', '20000'])
    ax.set_xlabel('training iterations (batch 8)')
    ax.set_ylabel('Dice (%)')
    ax.set_title('ACDC, 3 labeled patients, seed 0, cpu_long plans')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + '.tmp.png', dpi=90)
    plt.close(fig)
    os.replace(path + '.tmp.png', path)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('-o', '--output', help='the PNG to write')
    p.add_argument('--write', metavar='MARKDOWN', help="replace the table between this file's budget_curve markers")
    args = p.parse_args(argv)
    curves, missing = measured()
    if args.output:
        plot(curves, args.output)
    text = markdown(curves, missing)
    print(text)
    if args.write:
        with open(args.write) as f:
            page = replace_block(f.read(), 'budget_curve', text)
        with open(args.write + '.tmp', 'w') as f:
            f.write(page)
        os.replace(args.write + '.tmp', args.write)


if __name__ == '__main__':
    main()
