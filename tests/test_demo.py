"""The newcomer's command, end to end on a tiny budget (CPU)."""
import json
import os

import pytest

from conftest import run_cli

# two augmentation workers, so that the determinism check covers nnU-Net's multi-process data loading
DEMO_ARGS = ['--labeled', 2, '--unlabeled', 4, '--test', 2, '--epochs', 1, '--iterations', 6, '--device', 'cpu',
             '--seed', 3]


def run_demo(out):
    env = dict(os.environ, nnUNet_n_proc_DA='2', nnUNet_compile='f')
    return run_cli(['nnUNetv2_m3hl_demo', '-o', out] + DEMO_ARGS, env=env)


@pytest.fixture(scope='module')
def first_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo') / 'first'
    return out, run_demo(out)


def test_demo_trains_both_trainers_and_reports(first_demo):
    out, proc = first_demo
    summary = json.load(open(out / 'summary.json'))
    models = ['M3HLTrainer', 'M3HLTrainer (teacher)', 'nnUNetTrainer']
    assert sorted(summary['mean_dice']) == models
    for name in models:
        assert f'| {name} |' in proc.stdout
        assert 0 <= summary['mean_dice'][name] <= 1
        assert sorted(summary['per_case_dice'][name]) == ['test_000.nii.gz', 'test_001.nii.gz']
        assert len(os.listdir(out / 'predictions' / name)) >= 2
    assert summary['settings']['seed'] == 3 and summary['settings']['n_labeled'] == 2
    assert (out / 'overlays.png').stat().st_size > 0
    # the output is the demo's summary; nnU-Net's own epoch and per-case lines go to the log it names
    log = out / 'nnunet_log.txt'
    assert str(log) in proc.stdout and 'Epoch 0' in log.read_text()
    assert 'Epoch 0' not in proc.stdout and 'train_loss' not in proc.stdout
    assert len(os.listdir(out / 'nnUNet_raw' / 'Dataset990_M3HLPhantom' / 'imagesUnlabeledTr')) == 4


def test_same_seed_gives_identical_numbers(first_demo, tmp_path):
    first = json.load(open(first_demo[0] / 'summary.json'))
    run_demo(tmp_path / 'second')
    second = json.load(open(tmp_path / 'second' / 'summary.json'))
    for key in ('mean_dice', 'per_class_dice', 'per_case_dice'):
        assert first[key] == second[key], key
