"""The bookkeeping of benchmarks/quality/label_efficiency.py: merging of resumed runs and the paired summary."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks', 'quality'))
import label_efficiency as le  # noqa: E402


def run(n, seed, dice_by_model, seconds=10.0):
    """A run whose per-case Dice of each model is the given list."""
    return {'n_labeled': n, 'seed': seed, 'seconds': seconds,
            'mean_dice': {m: sum(d) / len(d) for m, d in dice_by_model.items()},
            'per_class_dice': {m: {} for m in dice_by_model},
            'per_case_dice': {m: {f'case{i}': v for i, v in enumerate(d)} for m, d in dice_by_model.items()}}


def test_summary_pairs_models_with_the_baseline_per_seed_and_per_case():
    runs = [run(2, 0, {'nnUNetTrainer': [0.5, 0.9, 0.9], 'M3HLTrainer': [0.8, 0.9, 0.88]}),
            run(2, 1, {'nnUNetTrainer': [0.7, 0.9, 0.9], 'M3HLTrainer': [0.9, 0.91, 0.9]})]
    rows = {r['model']: r for r in le.summarize(runs)}
    m3hl = rows['M3HLTrainer']
    assert m3hl['seeds'] == 2 and m3hl['paired_cases'] == 6
    assert m3hl['gain_points'] == pytest.approx(100 * ((0.86 - 0.7667) + (0.9033 - 0.8333)) / 2, abs=0.01)
    assert (m3hl['cases_better'], m3hl['cases_worse']) == (3, 1)
    assert m3hl['case_gain_median_points'] == pytest.approx(0.5, abs=1e-6)
    assert 0 < m3hl['wilcoxon_p'] <= 1
    assert 'wilcoxon_p' not in rows['nnUNetTrainer']
    table = le.format_summary(le.summarize(runs)).splitlines()
    assert len({line.count('|') for line in table}) == 1  # every row has all columns


def test_results_of_another_call_are_merged_not_lost(tmp_path):
    path = str(tmp_path / 'le.json')
    le.write_result(path, {}, [run(8, 0, {'nnUNetTrainer': [0.9], 'M3HLTrainer': [0.8]})])
    noted = dict(json.load(open(path)), trainer_names='M3HLTrainer here is an older schedule')
    json.dump(noted, open(path, 'w'))
    # a later call adds a variant to the same (labeled count, seed) and a new seed
    le.write_result(path, {}, [run(8, 0, {'M3HLTrainer_noHL': [0.85]}, seconds=5.0),
                               run(8, 1, {'nnUNetTrainer': [0.9]})])
    runs = json.load(open(path))['runs']
    assert [(r['n_labeled'], r['seed']) for r in runs] == [(8, 0), (8, 1)]
    assert sorted(runs[0]['mean_dice']) == ['M3HLTrainer', 'M3HLTrainer_noHL', 'nnUNetTrainer']
    assert runs[0]['seconds'] == 10.0 and runs[0]['seconds_of_later_calls'] == {'M3HLTrainer_noHL': 5.0}
    assert json.load(open(path))['trainer_names'] == 'M3HLTrainer here is an older schedule'
    assert not os.path.exists(path + '.tmp')


def test_demo_reference_names_the_trainers_its_runs_measured(tmp_path):
    from nnunetv2_m3hl.demo import DEFAULT_SETTINGS
    demo_settings = {'n_labeled': DEFAULT_SETTINGS['n_labeled'], 'n_unlabeled': DEFAULT_SETTINGS['n_unlabeled'],
                     'n_test': DEFAULT_SETTINGS['n_test'], 'epochs': DEFAULT_SETTINGS['epochs'],
                     'iterations': DEFAULT_SETTINGS['iterations'], 'shape': DEFAULT_SETTINGS['shape']}
    demo_run = {'n_labeled': DEFAULT_SETTINGS['n_labeled'], 'seed': 0, 'settings': demo_settings,
                'mean_dice': {'nnUNetTrainer': 0.9, 'M3HLTrainer': 0.91, 'M3HLTrainer (teacher)': 0.9,
                              'M3HLTrainer_warmup': 0.92}}
    other_run = dict(demo_run, n_labeled=8, settings=dict(demo_settings, n_labeled=8))
    # the last call measured another labeled count with fewer trainers: its settings are the file's
    path = tmp_path / 'results.json'
    path.write_text(json.dumps({'settings': {'epochs': 5, 'iterations': 60, 'device': 'cpu',
                                             'trainers': ['nnUNetTrainer', 'M3HLTrainer']},
                                'runs': [demo_run, other_run]}))
    le.export_demo_reference(str(path), str(tmp_path / 'reference.json'))
    reference = json.loads((tmp_path / 'reference.json').read_text())
    assert [r['seed'] for r in reference['runs']] == [0]
    assert reference['command'].endswith('--trainers nnUNetTrainer M3HLTrainer M3HLTrainer_warmup')


def test_demo_reference_can_store_a_variant_under_the_default_name(tmp_path):
    from nnunetv2_m3hl.demo import DEFAULT_SETTINGS
    settings = {k: DEFAULT_SETTINGS[k] for k in ('n_labeled', 'n_unlabeled', 'n_test', 'epochs', 'iterations', 'shape')}
    run = {'n_labeled': DEFAULT_SETTINGS['n_labeled'], 'seed': 1, 'settings': settings,
           'mean_dice': {'nnUNetTrainer': 0.9, 'M3HLTrainer': 0.91, 'M3HLTrainer (teacher)': 0.89,
                         'M3HLTrainer_warmup': 0.93, 'M3HLTrainer_warmup (teacher)': 0.92}}
    path = tmp_path / 'results.json'
    path.write_text(json.dumps({'settings': {'epochs': 5, 'iterations': 60, 'device': 'cpu'}, 'runs': [run]}))
    renamed = {'M3HLTrainer_warmup': 'M3HLTrainer', 'M3HLTrainer': 'M3HLTrainer_reference'}
    le.export_demo_reference(str(path), str(tmp_path / 'reference.json'), renamed)
    reference = json.loads((tmp_path / 'reference.json').read_text())
    assert reference['runs'][0]['mean_dice'] == {
        'nnUNetTrainer': 0.9, 'M3HLTrainer_reference': 0.91, 'M3HLTrainer_reference (teacher)': 0.89,
        'M3HLTrainer': 0.93, 'M3HLTrainer (teacher)': 0.92}
    assert reference['renamed'] == renamed
    # the command names the trainers as they were measured, so that it reproduces the runs
    assert reference['command'].endswith('--trainers nnUNetTrainer M3HLTrainer M3HLTrainer_warmup')
