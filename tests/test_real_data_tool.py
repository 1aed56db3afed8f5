"""The real-data benchmark's bookkeeping, on made-up results (the benchmark itself needs the datasets)."""
import importlib.util
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope='module')
def real_data():
    spec = importlib.util.spec_from_file_location('real_data', os.path.join(HERE, '..', 'benchmarks', 'real_data.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model(dice, per_case):
    return {'mean': {'dice': dice, 'jaccard': dice - 0.1, 'hd95': 5.0, 'asd': 1.0}, 'per_case_dice': per_case}


def test_summary_pairs_models_with_the_baseline_per_seed(real_data):
    store = {'runs': {
        '0': {'models': {'nnUNetTrainer': model(0.40, {'a': 0.4, 'b': 0.4}),
                         'M3HLTrainer': model(0.50, {'a': 0.6, 'b': 0.3})}},
        '1': {'models': {'nnUNetTrainer': model(0.60, {'a': 0.6, 'b': 0.6}),
                         'M3HLTrainer': model(0.62, {'a': 0.7, 'b': 0.6})}}}}
    table = real_data.summarize(store, 'acdc', 3).splitlines()
    baseline = next(line for line in table if line.startswith('| nnUNetTrainer |'))
    m3hl = next(line for line in table if line.startswith('| M3HLTrainer |'))
    assert '| 2 | 50.00 ± 10.00 |' in baseline
    assert '| 2 | 56.00 ± 6.00 |' in m3hl and '+6.00 ± 4.00' in m3hl
    assert '| 2 / 1 |' in m3hl  # a better on seeds 0 and 1, b worse on seed 0, equal on seed 1
    assert any('BCP' in line and '87.59' in line for line in table)


def test_two_stage_specs_split_the_budget(real_data, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(real_data, 'run', lambda cmd, env, log_file=None: calls.append(cmd))
    args = type('Args', (), {'dataset': 'acdc', 'budget': 'cpu', 'workdir': str(tmp_path), 'iterations': 600,
                             'minutes': None, 'pretrain_fraction': 0.5, 'device': 'cpu'})()
    models, _ = real_data.train_spec('nnUNetTrainer+M3HLTrainer', args, 'Dataset271_ACDC', 0)
    assert [(c[6], c[7]) for c in calls] == [('nnUNetTrainer', '300'), ('M3HLTrainer', '300')]
    assert calls[0][-1] == 'None'
    assert calls[1][-1].endswith('nnUNetTrainer__nnUNetPlans_cpu__2d/fold_0/checkpoint_final.pth')
    assert list(models) == ['nnUNetTrainer (first stage of nnUNetTrainer+M3HLTrainer)', 'nnUNetTrainer+M3HLTrainer']
    assert real_data.expected_models('nnUNetTrainer+M3HLTrainer') == list(models)
