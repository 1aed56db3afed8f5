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


def test_demo_reference_reads_the_demos_own_outputs_and_resumes(tmp_path, monkeypatch):
    """The reference comes from `nnUNetv2_m3hl_demo --seed S` as a user runs it; a seed whose folder holds a
    summary of the default settings is read, not run again."""
    import importlib.util
    from nnunetv2_m3hl.demo import DEFAULT_SETTINGS
    spec = importlib.util.spec_from_file_location('demo_reference', os.path.join(
        os.path.dirname(os.path.abspath(__file__)), '..', 'benchmarks', 'quality', 'demo_reference.py'))
    dr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dr)
    ran = []

    def fake_run(command, **kwargs):
        seed, folder = int(command[command.index('--seed') + 1]), command[command.index('-o') + 1]
        ran.append((os.path.basename(command[0]), seed))
        settings = dict(DEFAULT_SETTINGS, seed=seed, device='cpu')
        with open(os.path.join(folder, 'summary.json'), 'w') as f:
            json.dump({'settings': settings, 'mean_dice': {'nnUNetTrainer': 0.8, 'M3HLTrainer': 0.8 + seed / 100}}, f)
    monkeypatch.setattr(dr.subprocess, 'run', fake_run)
    monkeypatch.setattr(dr, 'package_commit', lambda: 'abc')
    out = tmp_path / 'reference.json'
    dr.main(['--seeds', '0', '1', '--workdir', str(tmp_path / 'work'), '-o', str(out)])
    assert ran == [('nnUNetv2_m3hl_demo', 0), ('nnUNetv2_m3hl_demo', 1)]
    reference = json.loads(out.read_text())
    assert reference['command'] == 'nnUNetv2_m3hl_demo --seed S --device cpu, S = 0 1'
    assert [r['mean_dice']['M3HLTrainer'] for r in reference['runs']] == [0.8, 0.81]
    from nnunetv2_m3hl.demo_expectation import gains_over_seeds, reference_for
    assert reference_for(DEFAULT_SETTINGS, reference) is reference
    assert gains_over_seeds(reference, 'M3HLTrainer') == pytest.approx([0.0, 1.0])
    dr.main(['--seeds', '0', '1', '--workdir', str(tmp_path / 'work'), '-o', str(out)])
    assert len(ran) == 2
