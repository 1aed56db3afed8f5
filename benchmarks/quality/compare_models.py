"""One model against another, seed by seed, from ``real_data.py`` results JSONs (the same JSON or two).

    python benchmarks/quality/compare_models.py benchmarks/results/real_acdc3_cpu_long.json 'nnUNetTrainer>M3HLTrainer' \
        benchmarks/results/default_selection_acdc3_cpu_long.json M3HLTrainer

For each split both were scored on: the gain per seed (points), its mean ± sd over those seeds (numpy's std, as in
RESULTS), and the per-case gains pooled over the seeds (cases better / worse, median, smallest and largest). The
summary tables of ``real_data.py`` compare every model with nnUNetTrainer; this compares any two, for example the
two-stage recipe with the default, whose runs are stored in different files. ``--by cvc-sequence`` pairs the mean
Dice of each CVC-ClinicDB video sequence instead of each frame, ``--by acdc-patient`` that of each ACDC patient's
two frames.
"""
import argparse
import copy
import json
import os
import sys
from collections import defaultdict
from typing import Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from real_data import paired  # noqa: E402

from dataset_conversion.acdc import acdc_patient_of  # noqa: E402
from dataset_conversion.cvc import cvc_sequence_of  # noqa: E402

# what the per-case Dice may be pooled by before pairing: each group's mean Dice becomes one "case"
GROUPINGS: Dict[str, Callable[[str], object]] = {'cvc-sequence': cvc_sequence_of, 'acdc-patient': acdc_patient_of}


def grouped(runs: dict, group_of: Callable[[str], object]) -> dict:
    """A copy of ``runs`` in which every model's per-case Dice (test and validation) is replaced by the mean Dice of
    each group of cases, such as the frames of one video sequence: near-duplicate frames then count once."""
    out = copy.deepcopy(runs)
    for r in out.values():
        for record in r['models'].values():
            for scored in (record, record.get('validation')):
                if not scored or 'per_case_dice' not in scored:
                    continue
                groups = defaultdict(list)
                for case, dice in scored['per_case_dice'].items():
                    groups[str(group_of(case))].append(dice)
                scored['per_case_dice'] = {g: float(np.mean(v)) for g, v in groups.items()}
    return out


def comparison(runs: dict, model: str, other_runs: dict, other: str, split: str) -> Optional[dict]:
    """``model`` against ``other`` on ``split``; None where no seed has both scored."""
    seeds, gains, case_gains = [], [], []
    for seed in runs:
        seed_gain, seed_case_gains = paired({seed: runs[seed]}, model, other_runs, other, split)
        if seed_gain:
            seeds.append(seed)
            gains += seed_gain
            case_gains += seed_case_gains
    if not gains:
        return None
    return {'split': split, 'seeds': seeds, 'gains': gains, 'mean': float(np.mean(gains)), 'sd': float(np.std(gains)),
            'better': sum(g > 0 for g in case_gains), 'worse': sum(g < 0 for g in case_gains),
            'case_median': float(np.median(case_gains)), 'case_min': float(min(case_gains)),
            'case_max': float(max(case_gains))}


def format_comparison(c: dict, model: str, other: str, unit: str = 'cases') -> str:
    per_seed = ', '.join(f"seed {s} {g:+.2f}" for s, g in zip(c['seeds'], c['gains']))
    return (f"{c['split']}: {model} against {other}: {c['mean']:+.2f} ± {c['sd']:.2f} over {len(c['gains'])} seed(s) "
            f"({per_seed}); {unit} better / worse {c['better']} / {c['worse']}, median {c['case_median']:+.2f} "
            f"(from {c['case_min']:+.2f} to {c['case_max']:+.2f})")


def load_runs(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)['runs']
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"{path}: not a results JSON written by real_data.py ({e}); pass the file given to its -o")


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('json', help='results JSON holding the model')
    p.add_argument('model', help="model name as in the JSON, e.g. 'nnUNetTrainer>M3HLTrainer' or 'M3HLTrainer (teacher)'")
    p.add_argument('other_json', help='results JSON holding the model compared with (may be the same file)')
    p.add_argument('other', help='the model compared with')
    p.add_argument('--splits', nargs='+', choices=('test', 'validation'), default=['test', 'validation'])
    p.add_argument('--by', choices=sorted(GROUPINGS),
                   help="pair each group's mean Dice instead of each case's (cvc-sequence: a CVC-ClinicDB video "
                        "sequence, whose frames are near-duplicates; acdc-patient: an ACDC patient's two frames)")
    args = p.parse_args(argv)
    runs, other_runs = load_runs(args.json), load_runs(args.other_json)
    if args.by:
        try:
            runs, other_runs = grouped(runs, GROUPINGS[args.by]), grouped(other_runs, GROUPINGS[args.by])
        except ValueError as e:
            raise SystemExit(f"--by {args.by}: {e}")
    found = False
    for split in args.splits:
        c = comparison(runs, args.model, other_runs, args.other, split)
        if c:
            found = True
            print(format_comparison(c, args.model, args.other, f'{args.by}s' if args.by else 'cases'))
    if not found:
        raise SystemExit(f"no seed has both {args.model!r} ({args.json}) and {args.other!r} ({args.other_json}) scored "
                         f"on {' or '.join(args.splits)}: check the names against the JSONs' runs")


if __name__ == '__main__':
    main()
