"""The headline tables of benchmarks/RESULTS.md, one per dataset, generated from the results JSONs of
``real_data.py``: for every method a user would pick (nnU-Net, nnU-Net's self-training, BCP, the default M3HL, the
two-stage recipe), its test Dice over seeds, and its gain against nnU-Net and against the default M3HL of the same
seed (mean ± sd over the seeds both have, cases better / worse pooled over those seeds, the median per-case gain).

    python benchmarks/quality/results_tables.py --write benchmarks/RESULTS.md      # the tables between its markers
    python benchmarks/quality/results_tables.py --summary --write README.md         # the README's one table
    python benchmarks/quality/results_tables.py --check benchmarks/RESULTS.md      # fails when the page differs

Rows whose JSON or model does not exist yet are left out and listed under their table as still to run.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare_models import GROUPINGS, comparison, grouped  # noqa: E402
from real_data import split_scores  # noqa: E402

RESULTS = os.path.join(os.path.dirname(HERE), 'results')

# (row, results JSON, model name in it); the first row of a table is nnU-Net, the row named DEFAULT the default M3HL.
# Self-training has a JSON of its own: its nnUNetTrainer rows are the models that made its pseudo-labels, retrained
# where the table's nnU-Net model of that seed was no longer at hand.
BASELINE, DEFAULT = 'nnU-Net (`nnUNetTrainer`)', 'M3HL, the default (`M3HLTrainer`)'
TABLES = [
    {'title': 'ACDC, 3 labeled patients (5%)', 'test_cases': '40 test frames',
     'budget': 'cpu_long: 2d at 2 mm, narrow U-Net (16..256), batch 8, 5000 iterations per trainer',
     'by': 'acdc-patient',
     'rows': [(BASELINE, 'real_acdc3_cpu_long.json', 'nnUNetTrainer'),
              ("nnU-Net's self-training (`selftraining(nnUNetTrainer)`)", 'real_acdc3_cpu_long_selftraining.json',
               'selftraining(nnUNetTrainer)'),
              ('BCP (`BCPTrainer_pretrain+BCPTrainer`, 2500 + 2500)', 'real_acdc3_cpu_long.json',
               'BCPTrainer_pretrain+BCPTrainer'),
              (DEFAULT, 'default_selection_acdc3_cpu_long.json', 'M3HLTrainer_readyWarmup_uncapped'),
              ('two-stage `nnUNetTrainer>M3HLTrainer` (5000 + 5000)', 'real_acdc3_cpu_long.json',
               'nnUNetTrainer>M3HLTrainer')]},
    {'title': 'ACDC, 7 labeled patients (10%)', 'test_cases': '40 test frames',
     'budget': 'cpu_long: 2d at 2 mm, narrow U-Net (16..256), batch 8, 5000 iterations per trainer',
     'by': 'acdc-patient',
     'rows': [(BASELINE, 'real_acdc7_cpu_long.json', 'nnUNetTrainer'),
              ("nnU-Net's self-training (`selftraining(nnUNetTrainer)`)", 'real_acdc7_cpu_long_selftraining.json',
               'selftraining(nnUNetTrainer)'),
              (DEFAULT, 'real_acdc7_cpu_long.json', 'M3HLTrainer')]},
    {'title': 'LA, 4 labeled scans (5%)', 'test_cases': '20 test scans',
     'budget': 'cpu_long: 3d_fullres at 1.875 mm, narrow U-Net (16..128), batch 2, 3000 iterations per trainer',
     'rows': [(BASELINE, 'real_la4_cpu_long.json', 'nnUNetTrainer'),
              ("nnU-Net's self-training (`selftraining(nnUNetTrainer)`)", 'real_la4_cpu_long_selftraining.json',
               'selftraining(nnUNetTrainer)'),
              (DEFAULT, 'real_la4_cpu_long.json', 'M3HLTrainer')]},
    {'title': 'CVC-ClinicDB, 23 labeled frames (5%)', 'test_cases': '143 test frames of 6 sequences',
     'budget': 'cpu_long: 2d at half resolution (128 x 128), narrow U-Net, batch 8, 5000 iterations per trainer',
     'by': 'cvc-sequence',
     'rows': [(BASELINE, 'real_cvc23_cpu_long.json', 'nnUNetTrainer'),
              ("nnU-Net's self-training (`selftraining(nnUNetTrainer)`)", 'real_cvc23_cpu_long_selftraining.json',
               'selftraining(nnUNetTrainer)'),
              (DEFAULT, 'real_cvc23_cpu_long.json', 'M3HLTrainer')]},
    {'title': 'CVC-ClinicDB, 47 labeled frames (10%)', 'test_cases': '143 test frames of 6 sequences',
     'budget': 'cpu_long: 2d at half resolution (128 x 128), narrow U-Net, batch 8, 5000 iterations per trainer',
     'by': 'cvc-sequence',
     'rows': [(BASELINE, 'real_cvc47_cpu_long.json', 'nnUNetTrainer'),
              (DEFAULT, 'real_cvc47_cpu_long.json', 'M3HLTrainer')]},
]


def load(name: str, results: str = RESULTS) -> Optional[dict]:
    path = os.path.join(results, name)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)['runs']


def test_dice(runs: dict, model: str) -> Dict[str, float]:
    """{seed: test Dice (points)} of the seeds where ``model`` was scored on the test set."""
    return {seed: 100 * split_scores(r['models'][model], 'test')['mean']['dice'] for seed, r in sorted(runs.items())
            if model in r['models'] and split_scores(r['models'][model], 'test')}


def gain_cell(runs: dict, model: str, other_runs: Optional[dict], other: str) -> str:
    c = comparison(runs, model, other_runs, other, 'test') if other_runs else None
    if c is None:
        return ''
    return (f"{spread(np.array(c['gains']), '+')}; {c['better']} / {c['worse']}, median {c['case_median']:+.2f}")


def spread(values: np.ndarray, sign: str = '') -> str:
    """Mean ± sd over seeds (numpy's std), or the one seed's value said to be one."""
    if len(values) == 1:
        return f"{values[0]:{sign}.2f} (one seed)"
    return f"{values.mean():{sign}.2f} ± {values.std():.2f} ({len(values)} seeds)"


def table(spec: dict, results: str = RESULTS) -> str:
    baseline_name, baseline_json, baseline_model = spec['rows'][0]
    default = next((r for r in spec['rows'] if r[0] == DEFAULT), None)
    # each results JSON read once, though several rows (and the per-group line) use it
    runs_in = {j: load(j, results) for j in dict.fromkeys(r[1] for r in spec['rows'])}
    baseline_runs = runs_in[baseline_json]
    default_runs = runs_in[default[1]] if default else None
    lines = [f"**{spec['title']}**: test Dice on {spec['test_cases']}, papers' convention; {spec['budget']}.",
             '', '| method | seeds | test Dice (%) | against nnU-Net: gain (seeds); cases better / worse, median | '
                 'against the default M3HL: gain (seeds); cases better / worse, median |', '|---|---|---|---|---|']
    missing = []
    for name, json_name, model in spec['rows']:
        runs = runs_in[json_name]
        dice = test_dice(runs, model) if runs else {}
        if not dice:
            missing.append(name)
            continue
        values = np.array(list(dice.values()))
        seeds = ', '.join(dice)
        against_nnunet = '' if name == baseline_name else gain_cell(runs, model, baseline_runs, baseline_model)
        against_default = '' if default is None or name in (DEFAULT, baseline_name) else \
            gain_cell(runs, model, default_runs, default[2])
        lines.append(f"| {name} | {seeds} | {spread(values)} | {against_nnunet} | {against_default} |")
    if len(lines) == 4:
        lines = lines[:1]
    elif spec.get('by') and baseline_runs:
        per_group = per_group_line(spec, runs_in, baseline_model)
        lines += ['', per_group] if per_group else []
    if missing:
        lines += ['', f"Not run yet: {', '.join(missing)}."]
    written = [f'`{j}`' for j, runs in runs_in.items() if runs is not None]
    if written:
        lines += ['', 'JSON: ' + ', '.join(written)]
    return '\n'.join(lines)


# how each grouping reads under a table: the group's name and why its frames are not independent cases
GROUP_WORDS = {'cvc-sequence': ('sequence', "its frames are near-duplicates"),
               'acdc-patient': ('patient', "its two frames share the heart and the scan")}


def per_group_line(spec: dict, runs_in: Dict[str, Optional[dict]], baseline_model: str) -> Optional[str]:
    """Against nnU-Net again, each group's mean Dice paired seed by seed: a per-frame count overstates how many
    independent cases agree when frames come in groups (a CVC video sequence, an ACDC patient)."""
    group_of = GROUPINGS[spec['by']]
    noun, why = GROUP_WORDS[spec['by']]
    baseline_groups = grouped(runs_in[spec['rows'][0][1]], group_of)
    parts = []
    for name, json_name, model in spec['rows'][1:]:
        runs = runs_in[json_name]
        c = comparison(grouped(runs, group_of), model, baseline_groups, baseline_model, 'test') if runs else None
        if c:
            parts.append(f"{name.split(' (')[0]} {c['better']} / {c['worse']}, median {c['case_median']:+.2f}")
    if not parts:
        return None
    return (f"Per test {noun} against nnU-Net ({why}; each {noun}'s mean Dice, paired seed by seed; better / worse "
            f"counted over {noun}s and seeds): {'; '.join(parts)}.")


def all_tables(results: str = RESULTS) -> str:
    return '\n\n'.join(table(spec, results) for spec in TABLES)


# the README's one table: a column per method, a row per dataset
SUMMARY_COLUMNS = [BASELINE, "nnU-Net's self-training", 'BCP', DEFAULT, 'two-stage']


def summary_table(results: str = RESULTS) -> str:
    """Test Dice per dataset (rows) and method (columns), mean ± sd over seeds with their count."""
    short = {BASELINE: 'nnU-Net', DEFAULT: 'M3HL (default)'}
    lines = ['| dataset, labeled | ' + ' | '.join(short.get(c, c) for c in SUMMARY_COLUMNS) + ' |',
             '|---' * (len(SUMMARY_COLUMNS) + 1) + '|']
    for spec in TABLES:
        cells = []
        for column in SUMMARY_COLUMNS:
            row = next((r for r in spec['rows'] if r[0] == column or r[0].startswith(column + ' ')), None)
            runs = load(row[1], results) if row else None
            dice = test_dice(runs, row[2]) if runs else {}
            cells.append(spread(np.array(list(dice.values()))).replace(' seeds)', ')').replace('(one seed)', '(1)')
                         if dice else '')
        if any(cells):
            lines.append(f"| {spec['title']} | " + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


MARKERS = {'tables': ('<!-- results_tables.py: begin -->', '<!-- results_tables.py: end -->'),
           'summary': ('<!-- results_tables.py --summary: begin -->', '<!-- results_tables.py --summary: end -->'),
           'budget_curve': ('<!-- budget_curve.py: begin -->', '<!-- budget_curve.py: end -->')}


def replace_block(page: str, kind: str, text: str) -> str:
    begin, end = MARKERS[kind]
    if begin not in page or end not in page:
        raise SystemExit(f"no {begin} ... {end} block")
    head, rest = page.split(begin, 1)
    return f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}"


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--summary', action='store_true', help="the README's table across datasets instead")
    p.add_argument('--check', metavar='MARKDOWN', help='fail when the block in this file differs from the JSONs')
    p.add_argument('--write', metavar='MARKDOWN', help='replace the block in this file')
    args = p.parse_args(argv)
    kind = 'summary' if args.summary else 'tables'
    text = summary_table() if args.summary else all_tables()
    if not (args.check or args.write):
        print(text)
        return
    path = args.check or args.write
    with open(path) as f:
        page = f.read()
    updated = replace_block(page, kind, text)
    if args.check:
        if updated != page:
            raise SystemExit(f"the {kind} block of {path} differs from the results JSONs: run --write {path}")
        print(f"{path}: the {kind} block matches the results JSONs")
        return
    with open(path + '.tmp', 'w') as f:
        f.write(updated)
    os.replace(path + '.tmp', path)


if __name__ == '__main__':
    main()
