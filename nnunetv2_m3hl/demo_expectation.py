"""What one demo run can and cannot show: its Dice difference to nnU-Net against the seed-to-seed spread that
the label-efficiency benchmark measured with the demo's own settings.

The reference (``demo_reference.json`` next to this file) is written by
``benchmarks/quality/label_efficiency.py --export-demo-reference`` from runs with exactly the demo's default settings;
it holds every seed's mean Dice per trained model and the command that measured them.
"""
import json
import os
from typing import Dict, List, Optional

import numpy as np

BASELINE = 'nnUNetTrainer'
REFERENCE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'demo_reference.json')
# the settings a reference must share with a demo run to describe it (the device changes times, not the task)
COMPARED_SETTINGS = ('n_labeled', 'n_unlabeled', 'n_test', 'epochs', 'iterations', 'shape')


def load_reference(path: str = REFERENCE_FILE) -> Optional[dict]:
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def reference_for(settings: dict, reference: Optional[dict]) -> Optional[dict]:
    """The reference when it was measured with these settings, else None."""
    if reference is None:
        return None
    same = all(list(np.atleast_1d(reference['settings'][k])) == list(np.atleast_1d(settings[k]))
               for k in COMPARED_SETTINGS)
    return reference if same else None


def gains_over_seeds(reference: dict, model: str) -> List[float]:
    """Dice gain over nnU-Net in points of ``model`` on every seed of the reference that has both."""
    return [100 * (r['mean_dice'][model] - r['mean_dice'][BASELINE]) for r in reference['runs']
            if model in r['mean_dice'] and BASELINE in r['mean_dice']]


def verdict(gain_points: float, reference_gains: List[float]) -> str:
    """How to read one run's gain. A difference names a winner only when the benchmark's mean gain is more than
    two standard errors from 0, and this run's gain has its sign and is larger than twice the seed-to-seed
    standard deviation (sample standard deviation, ``ddof=1``)."""
    n = len(reference_gains)
    if n < 2:
        return "no spread over seeds is known for these settings, so one run cannot name a winner"
    mean, spread = float(np.mean(reference_gains)), float(np.std(reference_gains, ddof=1))
    seen = (f"over {n} seeds with these settings the gain was {mean:+.2f} ± {spread:.2f} points "
            f"(range {min(reference_gains):+.2f} to {max(reference_gains):+.2f})")
    if abs(mean) <= 2 * spread / np.sqrt(n):
        return f"{seen}, not distinguishable from 0, so this run's {gain_points:+.2f} names no winner"
    if abs(gain_points) <= 2 * spread or np.sign(gain_points) != np.sign(mean):
        return f"{seen}: this run's {gain_points:+.2f} lies within that noise, so it names no winner"
    return f"{seen}: this run's {gain_points:+.2f} is beyond twice that spread, in the benchmark's direction"


def describe(mean_dice: Dict[str, float], settings: dict, reference: Optional[dict]) -> List[str]:
    """One line per model of this run that can be compared with nnU-Net."""
    matching = reference_for(settings, reference)
    lines = []
    for model, dice in mean_dice.items():
        if model == BASELINE or BASELINE not in mean_dice:
            continue
        gain = 100 * (dice - mean_dice[BASELINE])
        gains = gains_over_seeds(matching, model) if matching else []
        lines.append(f"{model} - {BASELINE}: {gain:+.2f} Dice points; {verdict(gain, gains)}.")
    if matching is None:
        lines.append("The seed-to-seed spread was measured for the default settings only "
                     "(benchmarks/RESULTS.md, 'Which schedule is the default?').")
    return lines
