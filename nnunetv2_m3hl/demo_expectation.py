"""What one demo run can and cannot show: its Dice difference to nnU-Net against the gains that the demo's own
command gave over several seeds.

The reference (``demo_reference.json`` next to this file) is written by ``benchmarks/quality/demo_reference.py``,
which runs ``nnUNetv2_m3hl_demo --seed S`` as a user does; it holds every seed's mean Dice per trained model, the
command, the commit and the machine.
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
    """How to read one run's gain against the gains the reference measured over seeds with the same command.

    A run outside the reference's range is said to be outside it, plainly: the demo then did not reproduce the
    reference (another machine, library or code). Inside it, a difference names a winner only when the
    reference's mean gain is more than two standard errors from 0, and this run's gain has its sign and is larger
    than twice the seed-to-seed standard deviation (sample standard deviation, ``ddof=1``)."""
    n = len(reference_gains)
    if n < 2:
        return "no spread over seeds is known for these settings, so one run cannot name a winner"
    mean, spread = float(np.mean(reference_gains)), float(np.std(reference_gains, ddof=1))
    low, high = min(reference_gains), max(reference_gains)
    seen = f"over {n} seeds of this command the gain was {mean:+.2f} ± {spread:.2f} points (range {low:+.2f} to " \
           f"{high:+.2f})"
    if not low <= gain_points <= high:
        side = 'below' if gain_points < low else 'above'
        return (f"{seen}: this run's {gain_points:+.2f} lies outside that range, {side} every seed, so this run did "
                f"not reproduce the reference (compare the machine, the installed libraries and the code with the "
                f"reference's)")
    if abs(mean) <= 2 * spread / np.sqrt(n):
        return f"{seen}, not distinguishable from 0, so this run's {gain_points:+.2f} names no winner"
    if abs(gain_points) <= 2 * spread or np.sign(gain_points) != np.sign(mean):
        return f"{seen}: this run's {gain_points:+.2f} lies within that range but not beyond twice the spread, " \
               f"so it names no winner"
    return f"{seen}: this run's {gain_points:+.2f} is beyond twice that spread, in the reference's direction"


def environment() -> Dict[str, str]:
    """The versions that decide a run's floating-point arithmetic: the same code and seed on another torch build
    trains to other weights."""
    import platform
    from importlib.metadata import PackageNotFoundError, version
    found = {'python': platform.python_version(), 'machine': platform.machine()}
    for package in ('torch', 'nnunetv2', 'nnunetv2-m3hl', 'numpy'):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = 'not installed'
    return found


def differences(mine: Optional[Dict[str, str]], theirs: Optional[Dict[str, str]]) -> List[str]:
    """``name mine (reference: theirs)`` for every version that differs between two environments."""
    if not mine or not theirs:
        return []
    return [f"{k} {mine[k]} (reference: {theirs[k]})" for k in sorted(set(mine) & set(theirs)) if mine[k] != theirs[k]]


def describe(mean_dice: Dict[str, float], settings: dict, reference: Optional[dict],
             run_environment: Optional[Dict[str, str]] = None) -> List[str]:
    """One line per model of this run that can be compared with nnU-Net; where a run lies outside the reference's
    range, the versions in which this run's environment differs from the reference's."""
    matching = reference_for(settings, reference)
    lines, outside = [], False
    for model, dice in mean_dice.items():
        if model == BASELINE or BASELINE not in mean_dice:
            continue
        gain = 100 * (dice - mean_dice[BASELINE])
        gains = gains_over_seeds(matching, model) if matching else []
        text = verdict(gain, gains)
        outside = outside or 'outside that range' in text
        lines.append(f"{model} - {BASELINE}: {gain:+.2f} Dice points; {text}.")
    if matching is None:
        lines.append("The seed-to-seed spread was measured for the default settings only "
                     "(benchmarks/quality/demo_reference.py).")
    elif outside:
        changed = differences(run_environment, matching.get('environment'))
        lines.append(f"This run's environment differs from the reference's in: {', '.join(changed)}." if changed else
                     "This run's environment has the reference's versions; compare the code "
                     f"(the reference: commit {matching.get('code', 'unknown')}).")
    return lines
