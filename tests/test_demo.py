"""The newcomer's command, end to end on a tiny budget (CPU)."""
import json
import os

from conftest import run_cli


def test_demo_trains_both_trainers_and_reports(tmp_path):
    env = dict(os.environ, nnUNet_n_proc_DA='1', nnUNet_compile='f')
    out = tmp_path / 'demo'
    proc = run_cli(['nnUNetv2_m3hl_demo', '-o', out, '--labeled', 2, '--unlabeled', 3, '--test', 2, '--epochs', 1,
                    '--iterations', 2, '--device', 'cpu', '--seed', 1], env=env)
    summary = json.load(open(out / 'summary.json'))
    models = ['M3HLTrainer', 'M3HLTrainer (teacher)', 'nnUNetTrainer']
    assert sorted(summary['mean_dice']) == models
    for name in models:
        assert f'| {name} |' in proc.stdout
        assert 0 <= summary['mean_dice'][name] <= 1
        assert sorted(summary['per_case_dice'][name]) == ['test_000.nii.gz', 'test_001.nii.gz']
        assert len(os.listdir(out / 'predictions' / name)) >= 2
    assert summary['settings']['seed'] == 1 and summary['settings']['n_labeled'] == 2
    assert (out / 'overlays.png').stat().st_size > 0
    # the output is the demo's summary; nnU-Net's own epoch and per-case lines go to the log it names
    log = out / 'nnunet_log.txt'
    assert str(log) in proc.stdout and 'Epoch 0' in log.read_text()
    assert 'Epoch 0' not in proc.stdout and 'train_loss' not in proc.stdout
    assert len(os.listdir(out / 'nnUNet_raw' / 'Dataset990_M3HLPhantom' / 'imagesUnlabeledTr')) == 3


def test_same_seed_gives_identical_numbers(tmp_path):
    env = dict(os.environ, nnUNet_n_proc_DA='2', nnUNet_compile='f')
    summaries = []
    for run in ('a', 'b'):
        out = tmp_path / run
        run_cli(['nnUNetv2_m3hl_demo', '-o', out, '--labeled', 2, '--unlabeled', 4, '--test', 2, '--epochs', 1,
                 '--iterations', 6, '--device', 'cpu', '--seed', 3], env=env)
        summaries.append(json.load(open(out / 'summary.json')))
    for key in ('mean_dice', 'per_class_dice', 'per_case_dice'):
        assert summaries[0][key] == summaries[1][key], key
