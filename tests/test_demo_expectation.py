"""How the demo reads one run against the spread measured over seeds."""
import json

import pytest

from nnunetv2_m3hl.demo import DEFAULT_SETTINGS
from nnunetv2_m3hl.demo_expectation import REFERENCE_FILE, describe, gains_over_seeds, load_reference, \
    reference_for, verdict


def reference(gains_points, settings=DEFAULT_SETTINGS):
    return {'settings': dict(settings), 'runs': [
        {'seed': i, 'mean_dice': {'nnUNetTrainer': 0.80, 'M3HLTrainer': 0.80 + g / 100}}
        for i, g in enumerate(gains_points)]}


def test_a_difference_inside_the_spread_names_no_winner():
    assert 'names no winner' in verdict(+1.5, [3.0, -1.0, 1.0])       # sd 2: within 4 points
    assert 'beyond twice that spread' in verdict(+4.5, [3.0, 5.0, 4.0, 4.6])
    assert 'names no winner' in verdict(+3.2, [3.0, 5.0, 4.0, 0.4])   # within the range, not beyond twice sd
    assert 'cannot name a winner' in verdict(+6.0, [3.0])
    # a reference whose own mean is within two standard errors of 0 backs no single run
    assert 'not distinguishable from 0' in verdict(+3.0, [4.0, -2.0, 1.0])


@pytest.mark.parametrize('gain,side', [(-0.96, 'below'), (+9.0, 'above')])
def test_a_run_outside_the_references_range_is_said_to_be_outside_it(gain, side):
    text = verdict(gain, [2.18, 2.41, 2.49])
    assert 'outside that range' in text and f'{side} every seed' in text and 'did not reproduce' in text
    assert 'within' not in text and 'winner' not in text


def test_only_a_reference_with_the_same_settings_is_used():
    ref = reference([1.0, 2.0, 3.0])
    assert reference_for(DEFAULT_SETTINGS, ref) is ref
    assert reference_for(dict(DEFAULT_SETTINGS, n_labeled=8), ref) is None
    assert reference_for(DEFAULT_SETTINGS, None) is None
    assert gains_over_seeds(ref, 'M3HLTrainer') == pytest.approx([1.0, 2.0, 3.0])


def test_describe_says_what_it_compared_with():
    run = {'nnUNetTrainer': 0.80, 'M3HLTrainer': 0.81, 'M3HLTrainer (teacher)': 0.79}
    lines = describe(run, dict(DEFAULT_SETTINGS, seed=0, device='cpu'), reference([1.0, 2.0, 3.0]))
    assert lines[0].startswith('M3HLTrainer - nnUNetTrainer: +1.00') and 'over 3 seeds' in lines[0]
    assert 'cannot name a winner' in lines[1]  # the teacher has no reference runs
    lines = describe(run, dict(DEFAULT_SETTINGS, n_labeled=8), reference([1.0, 2.0, 3.0]))
    assert all('over 3 seeds' not in line for line in lines) and 'default settings only' in lines[-1]


def test_the_shipped_reference_holds_the_demo_settings_and_its_command():
    shipped = load_reference()
    assert shipped is not None, REFERENCE_FILE
    assert reference_for(DEFAULT_SETTINGS, shipped) is shipped
    assert shipped['command'].startswith('nnUNetv2_m3hl_demo --seed S') and len(shipped['runs']) >= 3
    json.dumps(shipped)


def test_a_run_outside_the_range_names_what_differs_from_the_references_environment():
    ref = dict(reference([2.18, 2.41, 2.49]), environment={'torch': '2.14.1', 'numpy': '2.3.0'}, code='abc1234')
    run = {'nnUNetTrainer': 0.8527, 'M3HLTrainer': 0.8431}
    lines = describe(run, dict(DEFAULT_SETTINGS, seed=0), ref, {'torch': '2.13.0', 'numpy': '2.3.0'})
    assert 'outside that range' in lines[0]
    assert lines[-1] == "This run's environment differs from the reference's in: torch 2.13.0 (reference: 2.14.1)."
    lines = describe(run, dict(DEFAULT_SETTINGS, seed=0), ref, {'torch': '2.14.1', 'numpy': '2.3.0'})
    assert 'commit abc1234' in lines[-1]
    # inside the range nothing more is said
    inside = {'nnUNetTrainer': 0.80, 'M3HLTrainer': 0.8241}
    assert len(describe(inside, dict(DEFAULT_SETTINGS, seed=0), ref, {'torch': '2.13.0'})) == 1
