"""The cost benchmarks run on any plans: benchmarks/memory_breakdown.py and benchmarks/mixing_cost.py."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(script, plans, out, *extra):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', script), '--plans', plans, '-c', '2d',
                           '-o', str(out), *extra], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout


def test_memory_breakdown_names_what_m3hl_adds(nnunet_env, planned_2d, tmp_path):
    plans = str(nnunet_env / 'preprocessed' / planned_2d / 'nnUNetPlans.json')
    result, printed = run_benchmark('memory_breakdown.py', plans, tmp_path / 'memory.json', '--batch', '2')
    base, m3hl = result['bytes']['nnUNetTrainer'], result['bytes']['M3HLTrainer']
    assert base['weights_grads_momentum'] == m3hl['weights_grads_momentum'] == 3 * m3hl['teacher_weights']
    assert base['student forward'] == m3hl['student forward'] > 0
    # L_low holds the teacher's last decoder map, (2, 32, 64, 64) float32, and nothing else
    assert m3hl['low feature term'] == 2 * 32 * 64 * 64 * 4
    assert m3hl['mix loss'] > 0 and base["nnU-Net's loss"] > 0
    assert result['ratio'] == sum(m3hl.values()) / sum(base.values()) > 1
    assert 'ratio M3HL / nnU-Net' in printed


def test_mixing_cost_checks_both_forms_and_counts_operators(nnunet_env, planned_2d, tmp_path):
    plans = str(nnunet_env / 'preprocessed' / planned_2d / 'nnUNetPlans.json')
    result, _ = run_benchmark('mixing_cost.py', plans, tmp_path / 'mixing.json', '--repeats', '2')
    parts = result['parts']
    assert set(parts) >= {'block masks', 'mixing (select)', 'mixing (blend, before)',
                          'deep-supervision targets (views)', 'deep-supervision targets (interpolation, before)'}
    assert all(r['operators'] > 0 and r['seconds'] >= 0 for r in parts.values())
    assert parts['deep-supervision targets (views)']['operators'] < \
        parts['deep-supervision targets (interpolation, before)']['operators']
