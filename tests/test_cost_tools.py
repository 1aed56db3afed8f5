"""The cost benchmarks run on any plans: memory_breakdown.py, mixing_cost.py, step_operations.py and step_profile.py
(in benchmarks/)."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(script, plans, out, *extra):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'cost', script), '--plans', plans, '-c', '2d',
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
    assert all(r['seconds'] >= 0 for r in parts.values())
    # strided views launch no kernel at all; every other part does
    assert parts['deep-supervision targets (views)']['operators'] == 0
    assert all(r['operators'] > 0 for name, r in parts.items() if name != 'deep-supervision targets (views)')
    assert parts['block masks']['operators'] < parts['block masks (on the device, before)']['operators']
    assert parts['per-pair share']['operators'] < parts['per-pair share (gather and XOR, before)']['operators']


def test_step_operations_counts_every_phase_of_both_steps(nnunet_env, planned_2d, tmp_path):
    plans = str(nnunet_env / 'preprocessed' / planned_2d / 'nnUNetPlans.json')
    result, printed = run_benchmark('step_operations.py', plans, tmp_path / 'ops.json', '--batch', '3')
    base, m3hl = result['operations']['nnUNetTrainer'], result['operations']['M3HLTrainer']
    # the same network and optimiser in both steps: the same operations
    for phase in ('student forward', 'optimizer step', 'gradient clipping'):
        assert base[phase] == m3hl[phase] > 0, phase
    assert base["nnU-Net's loss"] > 0 and 'teacher forward' not in base
    for phase in ('teacher forward', 'pseudo-label cleanup', 'masks', 'mixing', 'mix loss', 'L_high', 'L_low',
                  'EMA update', 'backward'):
        assert m3hl[phase] > 0, phase
    assert result['total_operations']['M3HLTrainer'] == sum(m3hl.values())
    assert result['ratio'] > 1 and 'ratio M3HL / nnU-Net' in printed


def test_step_profile_accounts_for_the_step_by_phase(nnunet_env, planned_2d, tmp_path):
    plans = str(nnunet_env / 'preprocessed' / planned_2d / 'nnUNetPlans.json')
    result, printed = run_benchmark('step_profile.py', plans, tmp_path / 'profile.json', '--batch', '2',
                                    '--warmup', '1', '--steps', '1')
    base, m3hl = result['trainers']['nnUNetTrainer'], result['trainers']['M3HLTrainer']
    assert base['phases']["nnU-Net's loss"]['host_ms'] > 0
    for phase in ('teacher forward', 'pseudo-label cleanup', 'mix loss', 'L_low', 'EMA update', 'backward'):
        assert m3hl['phases'][phase]['host_ms'] > 0, phase
    for row in (base, m3hl):
        # the phases are disjoint ranges of the training thread: together they are the step, never more
        accounted = sum(p['host_ms'] for p in row['phases'].values())
        assert 0.5 * row['wall_ms'] < accounted <= 1.01 * row['wall_ms'], (accounted, row['wall_ms'])
        assert row['costliest'] and 'device_busy_ms' not in row  # no device timeline on the CPU
    assert m3hl['cleanup_mode'] == 'side_stream'
    assert result['wall_ratio'] == m3hl['wall_ms'] / base['wall_ms'] and 'wall ratio' in printed


def test_step_profile_attributes_device_time_by_phase_and_thread():
    """The CUDA side of step_profile.summarize on a hand-made timeline: kernels count for the phase that launched
    them, autograd's device thread counts as the backward, host time only for the training thread, and overlapping
    kernels (two streams) make the device busy once."""
    from types import SimpleNamespace
    sys.path.insert(0, os.path.join(ROOT, 'benchmarks', 'cost'))
    import step_profile
    from torch.autograd import DeviceType

    def host(name, thread, cpu_us, device_us, parent=None):
        return SimpleNamespace(name=name, thread=thread, cpu_parent=parent, cpu_time_total=cpu_us,
                               device_time_total=device_us, self_cpu_time_total=cpu_us, device_type=DeviceType.CPU)

    def kernel(name, start, end):
        return SimpleNamespace(name=name, device_type=DeviceType.CUDA, time_range=SimpleNamespace(
            start=start, end=end, elapsed_us=lambda: end - start))

    forward = host('phase: student forward', 1, 3000, 2000)
    events = [forward, host('aten::conv', 1, 2500, 2000, parent=forward),
              host('phase: pseudo-label cleanup', 7, 900, 400),               # the side stream's worker
              host('autograd::engine::evaluate_function: ConvBackward', 5, 800, 3000),
              host('cudaDeviceSynchronize', 1, 500, 0),
              kernel('conv', 0, 2000), kernel('lcc', 1500, 1900), kernel('conv_bwd', 2500, 5500)]
    result = step_profile.summarize(events, steps=1, wall_s=0.008, top=2)
    phases = result['phases']
    assert phases['student forward'] == {'device_ms': 2.0, 'host_ms': 3.0}
    assert phases['pseudo-label cleanup'] == {'device_ms': 0.4, 'host_ms': 0.0}
    assert phases['backward'] == {'device_ms': 3.0, 'host_ms': 0.0}
    assert phases['other'] == {'device_ms': 0.0, 'host_ms': 0.5}
    assert result['kernel_ms'] == 5.4 and result['device_busy_ms'] == 5.0
    assert abs(result['device_idle_ms'] - 3.0) < 1e-9
    assert [k['name'] for k in result['costliest']] == ['conv_bwd', 'conv']


def test_step_operations_names_a_missing_plans_file(tmp_path):
    missing = tmp_path / 'nnUNetPlans.json'
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'cost', 'step_operations.py'), '--plans',
                           str(missing), '-c', '2d', '-o', str(tmp_path / 'ops.json')],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode != 0 and str(missing) in proc.stderr and 'not found' in proc.stderr
    assert not (tmp_path / 'ops.json').exists()


def test_mixing_cost_names_the_missing_dataset_json(tmp_path):
    plans = tmp_path / 'nnUNetPlans.json'
    plans.write_text(json.dumps({'configurations': {'2d': {'batch_size': 2, 'patch_size': [32, 32]}}}))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'cost', 'mixing_cost.py'), '--plans', str(plans),
                           '-c', '2d'], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode != 0
    assert str(tmp_path / 'dataset.json') in proc.stderr and 'next to its dataset.json' in proc.stderr


def test_a_trimmed_prepared_dataset_measures_without_its_raw_data(nnunet_env, planned_2d, tmp_path):
    """benchmarks/gpu/subset_prepared.py keeps a few cases; step_cost.py then runs on them alone (how a dataset
    travels to a GPU machine)."""
    from nnunetv2_m3hl.unlabeled import preprocess_unlabeled, unlabeled_identifiers
    preprocess_unlabeled(planned_2d, '2d', verbose=False)
    source = nnunet_env / 'preprocessed' / planned_2d
    script = os.path.join(ROOT, 'benchmarks', 'gpu', 'subset_prepared.py')
    carried = tmp_path / 'carried'
    args = [sys.executable, script, str(source), str(carried), '-c', '2d', '--train', '2', '--val', '1',
            '--unlabeled', '2']
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    subset = carried / planned_2d
    split = json.loads((subset / 'splits_final.json').read_text())
    assert split == [{'train': ['lab_000', 'lab_001'], 'val': ['lab_003']}]
    assert sorted(os.listdir(subset / 'nnUNetPlans_2d')) == sorted(
        f'{c}{suffix}' for c in ('lab_000', 'lab_001', 'lab_003') for suffix in ('.b2nd', '.pkl', '_seg.b2nd'))
    assert unlabeled_identifiers(str(subset / 'nnUNetPlans_2d_unlabeled')) == ['unl_000', 'unl_001']
    # an existing destination is refused, and nothing in it is touched
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode != 0 and 'exists' in again.stderr
    assert json.loads((subset / 'splits_final.json').read_text()) == split

    env = dict(os.environ, nnUNet_raw=str(tmp_path / 'no_raw'), nnUNet_preprocessed=str(carried),
               nnUNet_results=str(tmp_path / 'results'))
    out = tmp_path / 'step_cost.json'
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmarks', 'cost', 'step_cost.py'), '--dataset',
                           planned_2d.split('_')[0][len('Dataset'):], '-c', '2d', '--steps', '1', '--warmup', '0',
                           '--skip-memory', '--skip-loading', '--cleanup-modes', 'sync', 'host_thread', '-o', str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())[0]
    assert result['dataset'] == planned_2d and set(result['M3HLTrainer_step_s_by_cleanup_mode']) == {'sync',
                                                                                                      'host_thread'}
    assert result['M3HLTrainer_step_s_without_cleanup'] > 0
    # the carried unlabeled scans were used as they are (no raw folder to preprocess them from)
    kept = sorted(n for n in os.listdir(source / 'nnUNetPlans_2d_unlabeled') if n.startswith(('unl_000', 'unl_001')))
    assert sorted(os.listdir(subset / 'nnUNetPlans_2d_unlabeled')) == sorted(['m3hl_manifest.json'] + kept)
