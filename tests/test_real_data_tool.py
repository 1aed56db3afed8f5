"""The real-data benchmark's bookkeeping, on made-up results (the benchmark itself needs the datasets)."""
import importlib.util
import json
import os

import numpy as np

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def benchmark_module(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, '..', 'benchmarks', 'quality', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def real_data():
    return benchmark_module('real_data')


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


def test_summary_gives_the_validation_dice_and_its_gain_where_scored(real_data):
    store = {'runs': {'0': {'models': {
        'nnUNetTrainer': dict(model(0.40, {'a': 0.4}), validation=model(0.60, {'v': 0.6})),
        'M3HLTrainer': dict(model(0.50, {'a': 0.5}), validation=model(0.65, {'v': 0.65})),
        'M3HLTrainer_reference': model(0.30, {'a': 0.3})}}}}
    table = real_data.summarize(store, 'acdc', 3).splitlines()
    assert 'validation Dice (%)' in table[0]
    m3hl = next(line for line in table if line.startswith('| M3HLTrainer |'))
    assert m3hl.endswith('| 65.00 ± 0.00 | +5.00 ± 0.00 | 1 / 0 |')
    assert next(line for line in table if line.startswith('| M3HLTrainer_reference |')).endswith('|  |  |  |')
    # a candidate scored on the validation cases only (while settings are chosen) has no test columns
    store['runs']['0']['models']['M3HLTrainer_confidence95'] = {'validation': model(0.70, {'v': 0.7})}
    line = next(line for line in real_data.summarize(store, 'acdc', 3).splitlines()
                if line.startswith('| M3HLTrainer_confidence95 |'))
    assert line.startswith('| M3HLTrainer_confidence95 | 1 |  |')
    assert line.endswith('| 70.00 ± 0.00 | +10.00 ± 0.00 | 1 / 0 |')
    assert real_data.missing_splits(store['runs']['0']['models']['M3HLTrainer_confidence95'],
                                    ['validation', 'test']) == ['test']


def test_the_validation_split_is_fold_0s_validation_cases_linked_from_the_raw_data(real_data, tmp_path):
    import json
    raw, pre = tmp_path / 'raw' / 'Dataset271_ACDC', tmp_path / 'pre' / 'Dataset271_ACDC'
    for folder in (raw / 'imagesTr', raw / 'labelsTr', pre):
        folder.mkdir(parents=True)
    for case in ('p1', 'p2', 'p3'):
        (raw / 'imagesTr' / f'{case}_0000.nii.gz').write_text(case)
        (raw / 'labelsTr' / f'{case}.nii.gz').write_text(case)
    (raw / 'dataset.json').write_text(json.dumps({'file_ending': '.nii.gz', 'channel_names': {'0': 'MRI'}}))
    (pre / 'splits_final.json').write_text(json.dumps([{'train': ['p1'], 'val': ['p2', 'p3']}]))
    env = {'nnUNet_raw': str(tmp_path / 'raw'), 'nnUNet_preprocessed': str(tmp_path / 'pre')}
    images, labels = real_data.validation_split_folders(env, 'Dataset271_ACDC', str(tmp_path / 'work'))
    assert sorted(os.listdir(images)) == ['p2_0000.nii.gz', 'p3_0000.nii.gz']
    assert sorted(os.listdir(labels)) == ['p2.nii.gz', 'p3.nii.gz']
    assert open(os.path.join(labels, 'p3.nii.gz')).read() == 'p3'
    assert real_data.validation_split_folders(env, 'Dataset271_ACDC', str(tmp_path / 'work')) == (images, labels)


def _train_calls(real_data, monkeypatch):
    import json
    calls = []
    monkeypatch.setattr(real_data, 'run', lambda cmd, env, log_file=None: calls.append(
        dict(json.loads(cmd[-1]), results=env['nnUNet_results'])))
    return calls


def _args(tmp_path, budget='cpu'):
    return type('Args', (), {'dataset': 'acdc', 'budget': budget, 'workdir': str(tmp_path), 'iterations': 600,
                             'minutes': None, 'pretrain_fraction': 0.5, 'device': 'cpu'})()


def test_two_stage_specs_split_the_budget(real_data, tmp_path, monkeypatch):
    calls = _train_calls(real_data, monkeypatch)
    models, _ = real_data.train_spec('nnUNetTrainer+M3HLTrainer', _args(tmp_path), 'Dataset271_ACDC', 0)
    assert [(c['trainer'], c['iterations']) for c in calls] == [('nnUNetTrainer', 300), ('M3HLTrainer', 300)]
    assert calls[0]['pretrained'] is None
    assert calls[1]['pretrained'].endswith('nnUNetTrainer__nnUNetPlans_cpu__2d/fold_0/checkpoint_final.pth')
    assert list(models) == ['nnUNetTrainer (first stage of nnUNetTrainer+M3HLTrainer)', 'nnUNetTrainer+M3HLTrainer']
    assert real_data.expected_models('nnUNetTrainer+M3HLTrainer') == list(models)


def test_full_two_stage_spec_reuses_the_first_trainers_own_run(real_data, tmp_path, monkeypatch):
    calls = _train_calls(real_data, monkeypatch)
    args = _args(tmp_path, 'cpu_long')
    real_data.train_spec('nnUNetTrainer', args, 'Dataset271_ACDC', 1)
    lone = calls[-1]
    # the lone run finished: the two-stage spec trains only its second stage, for the whole budget, from it
    fold = os.path.join(lone['results'], 'Dataset271_ACDC', 'nnUNetTrainer__nnUNetPlans_cpu_narrow__2d', 'fold_0')
    os.makedirs(fold)
    open(os.path.join(fold, 'checkpoint_final.pth'), 'w').close()
    models, _ = real_data.train_spec('nnUNetTrainer>M3HLTrainer', args, 'Dataset271_ACDC', 1)
    second = calls[-1]
    assert len(calls) == 2 and second['trainer'] == 'M3HLTrainer' and second['iterations'] == 600
    assert second['pretrained'] == os.path.join(fold, 'checkpoint_final.pth')
    assert second['results'] != lone['results'] and second['validation_batches'] == 20
    assert list(models) == real_data.expected_models('nnUNetTrainer>M3HLTrainer') == ['nnUNetTrainer>M3HLTrainer']


def _self_training_benchmark(tmp_path, name: str = 'Dataset271_ACDC'):
    """The raw and preprocessed folders the self-training recipe starts from: 2 labeled cases (one of them fold 0's
    validation case) and 3 unlabeled scans."""
    raw, pre = tmp_path / 'nnUNet_raw' / name, tmp_path / 'nnUNet_preprocessed' / name
    for folder in ('imagesTr', 'labelsTr', 'imagesUnlabeledTr', 'imagesTs', 'labelsTs'):
        (raw / folder).mkdir(parents=True)
    for case in ('p1', 'p2'):
        (raw / 'imagesTr' / f'{case}_0000.nii.gz').write_text(case)
        (raw / 'labelsTr' / f'{case}.nii.gz').write_text(case)
    for case in ('u1', 'u2', 'u3'):
        (raw / 'imagesUnlabeledTr' / f'{case}_0000.nii.gz').write_text(case)
    (raw / 'dataset.json').write_text(json.dumps({'file_ending': '.nii.gz', 'channel_names': {'0': 'MRI'},
                                                 'labels': {'background': 0, 'a': 1}, 'numTraining': 2}))
    pre.mkdir(parents=True)
    for f in ('nnUNetPlans_cpu_narrow.json', 'dataset_fingerprint.json'):
        (pre / f).write_text('{}')
    (pre / 'splits_final.json').write_text(json.dumps([{'train': ['p1'], 'val': ['p2']}]))
    return raw


def _fake_nnunet(real_data, name: str, write_label):
    """Stands in for nnU-Net's commands: records each call; the predictor writes ``write_label(path)`` for every
    input without an output (all of them unless ``--continue_prediction``), training writes a final checkpoint."""
    calls = []

    def fake_run(cmd, env, log_file=None):
        if cmd[1:2] == ['-c']:
            calls.append(('preprocess', env['nnUNet_preprocessed']))
        elif os.path.basename(cmd[0]) == 'nnUNetv2_predict':
            source, out = cmd[cmd.index('-i') + 1], cmd[cmd.index('-o') + 1]
            calls.append(('predict', source, cmd[cmd.index('-tr') + 1], sorted(os.listdir(out))))
            os.makedirs(out, exist_ok=True)
            for f in os.listdir(source):
                target = os.path.join(out, f.replace('_0000', ''))
                if '--continue_prediction' not in cmd or not os.path.isfile(target):
                    write_label(target)
        else:
            options = json.loads(cmd[-1])
            calls.append(('train', options['trainer'], options['pretrained'], env['nnUNet_results']))
            fold = real_data.fold_folder(env['nnUNet_results'], name, options['trainer'], options['plans'], '2d')
            os.makedirs(fold, exist_ok=True)
            open(os.path.join(fold, 'checkpoint_final.pth'), 'w').close()
    return calls, fake_run


def test_self_training_pseudo_labels_the_unlabeled_scans_and_trains_nnunet_on_all(real_data, tmp_path, monkeypatch):
    """nnU-Net's own recipe: the source model of the seed predicts the unlabeled scans, nnUNetTrainer trains from
    scratch on labeled + pseudo-labeled cases with the same plans, budget and validation cases; a rerun redoes
    nothing."""
    name = 'Dataset271_ACDC'
    raw = _self_training_benchmark(tmp_path, name)
    calls, fake_run = _fake_nnunet(real_data, name, lambda path: open(path, 'w').write('pseudo'))
    monkeypatch.setattr(real_data, 'run', fake_run)
    spec = 'selftraining(nnUNetTrainer)'
    args = _args(tmp_path, 'cpu_long')
    models, env = real_data.train_spec(spec, args, name, 0)
    assert [c[0] for c in calls] == ['train', 'predict', 'preprocess', 'train']
    source_results, st_results = calls[0][3], calls[3][3]
    assert calls[1][1:3] == (str(raw / 'imagesUnlabeledTr'), 'nnUNetTrainer')
    assert calls[3][1:3] == ('nnUNetTrainer', None) and st_results != source_results
    st_raw = os.path.join(env['nnUNet_raw'], name)
    assert sorted(os.listdir(os.path.join(st_raw, 'labelsTr'))) == ['p1.nii.gz', 'p2.nii.gz', 'u1.nii.gz',
                                                                    'u2.nii.gz', 'u3.nii.gz']
    assert open(os.path.join(st_raw, 'labelsTr', 'u2.nii.gz')).read() == 'pseudo'
    assert len(os.listdir(os.path.join(st_raw, 'imagesTr'))) == 5
    split = json.load(open(os.path.join(env['nnUNet_preprocessed'], name, 'splits_final.json')))
    assert split == [{'train': ['p1', 'u1', 'u2', 'u3'], 'val': ['p2']}]
    assert json.load(open(os.path.join(st_raw, 'dataset.json')))['numTraining'] == 5
    assert list(models) == real_data.expected_models(spec) == [spec]
    assert models[spec][0].startswith(st_results)
    assert real_data.spec_slug(spec) == 'selftraining_of_nnUNetTrainer'
    real_data.train_spec(spec, args, name, 0)
    assert len(calls) == 4


def test_a_stopped_pseudo_labelling_resumes_at_the_scans_without_a_readable_label(real_data, tmp_path, monkeypatch):
    """Stopped while exporting, nnU-Net leaves its last file truncated: the rerun removes it and predicts only the
    scans without a readable pseudo-label."""
    import SimpleITK as sitk
    name = 'Dataset271_ACDC'
    _self_training_benchmark(tmp_path, name)

    def write_label(path):
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((1, 8, 8), dtype=np.uint8)), path)
    calls, fake_run = _fake_nnunet(real_data, name, write_label)
    monkeypatch.setattr(real_data, 'run', fake_run)
    args = _args(tmp_path, 'cpu_long')
    pseudo_labels = os.path.join(real_data.self_training_root(str(tmp_path), 0, 'nnUNetTrainer'), 'pseudo_labels')
    os.makedirs(pseudo_labels)
    write_label(os.path.join(pseudo_labels, 'u1.nii.gz'))
    write_label(os.path.join(pseudo_labels, 'u2.nii.gz'))
    whole = open(os.path.join(pseudo_labels, 'u2.nii.gz'), 'rb').read()
    open(os.path.join(pseudo_labels, 'u2.nii.gz'), 'wb').write(whole[:len(whole) // 2])
    u1_written = os.path.getmtime(os.path.join(pseudo_labels, 'u1.nii.gz'))
    real_data.train_spec('selftraining(nnUNetTrainer)', args, name, 0)
    predict = [c for c in calls if c[0] == 'predict']
    assert len(predict) == 1 and predict[0][3] == ['u1.nii.gz']
    assert os.path.getmtime(os.path.join(pseudo_labels, 'u1.nii.gz')) == u1_written
    for case in ('u1', 'u2', 'u3'):
        assert sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(pseudo_labels, f'{case}.nii.gz'))).sum() == 64
    assert real_data.drop_unreadable_labels(pseudo_labels, {'file_ending': '.nii.gz'}) == []


def test_unreadable_labels_are_judged_by_the_reader_the_dataset_json_names(real_data, tmp_path):
    """A 2D TIFF without the spacing file Tiff3DIO needs: nnU-Net's reader for the ending (NaturalImage2DIO) reads
    it, so it stays; a dataset.json that names Tiff3DIO cannot train on it, so it goes."""
    import tifffile
    tifffile.imwrite(tmp_path / 'u1.tif', np.ones((8, 8), dtype=np.uint8))
    assert real_data.drop_unreadable_labels(str(tmp_path), {'file_ending': '.tif'}) == []
    assert os.path.isfile(tmp_path / 'u1.tif')
    named = {'file_ending': '.tif', 'overwrite_image_reader_writer': 'Tiff3DIO'}
    assert real_data.drop_unreadable_labels(str(tmp_path), named) == ['u1.tif']
    assert not os.path.exists(tmp_path / 'u1.tif')


def test_a_fresh_workdir_gets_the_cpu_plans_before_the_narrow_ones(real_data, tmp_path, monkeypatch):
    """The converging budget plans a new workdir at the cpu spacing under the cpu plans' name (nnU-Net's planner
    would otherwise write its native nnUNetPlans), then derives the narrow plans from them."""
    import json
    env = {'nnUNet_raw': str(tmp_path / 'raw'), 'nnUNet_preprocessed': str(tmp_path / 'pre')}
    os.makedirs(tmp_path / 'raw' / 'Dataset271_ACDC')
    pre = tmp_path / 'pre' / 'Dataset271_ACDC'
    planner_calls = []

    def fake_run(cmd, env, log_file=None):
        if 'plan_experiment_entry' in cmd[2]:
            planner_calls.append(cmd[3:])
            name = cmd[cmd.index('-overwrite_plans_name') + 1] if '-overwrite_plans_name' in cmd else 'nnUNetPlans'
            os.makedirs(pre, exist_ok=True)
            arch = {'arch_kwargs': {'features_per_stage': [32, 64, 128, 256, 512]}}
            (pre / f'{name}.json').write_text(json.dumps({'plans_name': name, 'configurations': {'2d': {
                'data_identifier': f'{name}_2d', 'batch_size': 13, 'architecture': arch}}}))
    monkeypatch.setattr(real_data, 'run', fake_run)
    assert real_data.prepare_dataset('acdc', 'unused', 3, str(tmp_path), 'cpu_long', None, env) == 'Dataset271_ACDC'
    assert planner_calls == [['-d', '271', '-overwrite_target_spacing', '10.0', '2.0', '2.0',
                              '-overwrite_plans_name', 'nnUNetPlans_cpu']]
    narrow = json.loads((pre / 'nnUNetPlans_cpu_narrow.json').read_text())['configurations']['2d']
    assert narrow['data_identifier'] == 'nnUNetPlans_cpu_2d' and narrow['batch_size'] == 8
    assert narrow['architecture']['arch_kwargs']['features_per_stage'] == [16, 32, 64, 128, 256]
    assert json.loads((pre / 'nnUNetPlans_cpu.json').read_text())['configurations']['2d']['batch_size'] == 4


def test_plateau_rule(real_data):
    rising = list(np.linspace(0.2, 0.8, 40))
    assert not real_data.plateau(rising)['plateaued']
    flat = rising[:30] + [0.80, 0.81, 0.79, 0.80, 0.80, 0.805, 0.80, 0.795, 0.80, 0.80]
    verdict = real_data.plateau(flat)
    assert verdict['plateaued'] and verdict['epochs_per_window'] == 4 and 'within 1.0 points' in verdict['rule']
    assert not real_data.plateau([0.5])['plateaued']


def test_narrowed_plans_keep_the_data_and_record_the_edit(real_data):
    plans = {'plans_name': 'nnUNetPlans_cpu', 'configurations': {'2d': {
        'data_identifier': 'nnUNetPlans_cpu_2d', 'batch_size': 4,
        'architecture': {'arch_kwargs': {'features_per_stage': [32, 64, 128, 256, 512]}}}}}
    narrow = real_data.narrowed_plans(plans, '2d', 2, 8, 'nnUNetPlans_cpu_narrow')
    c = narrow['configurations']['2d']
    assert c['architecture']['arch_kwargs']['features_per_stage'] == [16, 32, 64, 128, 256]
    assert c['batch_size'] == 8 and c['data_identifier'] == 'nnUNetPlans_cpu_2d'
    assert narrow['m3hl_plans_edit']['features_per_stage']['source'] == [32, 64, 128, 256, 512]
    assert plans['configurations']['2d']['batch_size'] == 4  # the source is not changed


def test_a_stopped_training_resumes_to_the_same_weights_as_an_unstopped_one(real_data, nnunet_env, planned_2d,
                                                                             tmp_path):
    """The benchmark's training is killed after a checkpoint, started again, and ends bit for bit where an
    uninterrupted run of the same seed ends."""
    import json
    import signal
    import subprocess
    import sys
    import time
    import torch
    from nnunetv2_m3hl.checkpointing import load_checkpoint_safely
    script = os.path.join(HERE, '..', 'benchmarks', 'quality', 'real_data.py')
    # 3 epochs of 4 iterations: the first is the supervised warm-up, the other two mix
    options = json.dumps(dict(dataset_id=901, configuration='2d', plans='nnUNetPlans', trainer='M3HLTrainer',
                              iterations=12, minutes=None, seed=3, device='cpu', pretrained=None,
                              iterations_per_epoch=4, validation_batches=1, save_every=1))

    def fold(results):
        return os.path.join(results, planned_2d, 'M3HLTrainer__nnUNetPlans__2d', 'fold_0')

    def train(results, **popen):
        env = dict(os.environ, nnUNet_results=str(results))
        return subprocess.Popen([sys.executable, script, '_train', options], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, **popen)

    assert train(tmp_path / 'whole').wait(timeout=600) == 0
    stopped = tmp_path / 'stopped'
    proc = train(stopped, start_new_session=True)
    latest = os.path.join(fold(stopped), 'checkpoint_latest.pth')
    t0 = time.time()
    while not os.path.isfile(latest) and proc.poll() is None and time.time() - t0 < 600:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert os.path.isfile(latest) and not os.path.isfile(os.path.join(fold(stopped), 'checkpoint_final.pth'))
    stopped_at = load_checkpoint_safely(latest)['current_epoch']
    assert stopped_at in (1, 2)
    assert train(stopped).wait(timeout=600) == 0

    whole = load_checkpoint_safely(os.path.join(fold(tmp_path / 'whole'), 'checkpoint_final.pth'))
    resumed = load_checkpoint_safely(os.path.join(fold(stopped), 'checkpoint_final.pth'))
    assert resumed['current_epoch'] == whole['current_epoch'] == 3
    for key in ('network_weights',):
        for name, value in whole[key].items():
            assert torch.equal(value, resumed[key][name]), name
    for name, value in whole['m3hl']['teacher_weights'].items():
        assert torch.equal(value, resumed['m3hl']['teacher_weights'][name]), name
    for key in ('train_losses', 'mix_losses', 'mean_fg_dice'):
        np.testing.assert_array_equal(whole['logging'][key], resumed['logging'][key])
    log = open(os.path.join(fold(stopped), sorted(f for f in os.listdir(fold(stopped))
                                                 if f.startswith('training_log'))[-1])).read()
    assert 'resuming from checkpoint_latest.pth' in log


def test_curves_png_shows_every_model_of_every_seed(real_data, tmp_path):
    def training(n, m3hl):
        t = {'validation_dice': list(np.linspace(0.1, 0.6, n)),
             'validation_dice_per_class': [[0.1 * i, 0.2, 0.3] for i in range(n)]}
        if m3hl:
            t.update(mix_losses=[float('nan')] * 2 + [0.5] * (n - 2), high_losses=[0.1] * n, low_losses=[0.2] * n,
                     pseudo_fg_share=[0.05] * n)
        return t
    store = {'runs': {s: {'models': {
        'nnUNetTrainer': dict(model(0.4, {}), training=training(10, False)),
        'M3HLTrainer': dict(model(0.5, {}), training=training(10, True)),
        'M3HLTrainer (teacher)': dict(model(0.5, {}), training=training(10, True))}} for s in ('0', '1')}}
    path = tmp_path / 'curves.png'
    real_data.write_curves(store, str(path))
    from PIL import Image
    with Image.open(path) as image:
        assert abs(image.height / image.width - 2 * 4.5 / 18) < 0.01  # one row per seed
    assert not list(tmp_path.glob('*.tmp.png'))
    for seed in store['runs'].values():  # no M3HL model: no empty panel for its terms
        del seed['models']['M3HLTrainer'], seed['models']['M3HLTrainer (teacher)']
    real_data.write_curves(store, str(path))
    with Image.open(path) as image:
        assert abs(image.height / image.width - 2 * 4.5 / 12) < 0.01


def test_mixing_start_epoch_is_the_first_logged_mixing_step(real_data):
    assert real_data.mixing_start_epoch({'mix_losses': [float('nan')] * 3 + [0.4, 0.3]}) == 3
    assert real_data.mixing_start_epoch({'mix_losses': [0.4, 0.3]}) == 0  # a pretrained model mixes at once
    assert real_data.mixing_start_epoch({'mix_losses': [float('nan')] * 4}) is None  # never ready
    assert real_data.mixing_start_epoch({'train_losses': [0.5]}) is None  # nnUNetTrainer


def test_epoch_times_of_the_mixing_epochs_against_nnunet(real_data):
    nnunet = {'epoch_seconds': [10.0] * 8}
    m3hl = {'epoch_seconds': [10.0, 10.0] + [14.0] * 4 + [16.0] * 2,
            'mix_losses': [float('nan')] * 2 + [0.5] * 6}  # two warm-up epochs, then six mixing epochs
    times = real_data.epoch_times(m3hl)
    assert times == {'median': 14.0, 'first_quarter': 14.0, 'last_quarter': 16.0, 'epochs': 6}
    store = {'runs': {'0': {'models': {'nnUNetTrainer': {'training': nnunet}, 'M3HLTrainer': {'training': m3hl},
                                       'M3HLTrainer (teacher)': {'training': m3hl}}}}}
    table = real_data.timing_table(store)
    assert '| 0 | M3HLTrainer | 6 | 14.0 | 14.0 / 16.0 | 1.40 |' in table and '(teacher)' not in table


@pytest.fixture(scope='module')
def compare_models():
    return benchmark_module('compare_models')


def test_two_models_from_two_results_files_are_paired_seed_by_seed(compare_models, tmp_path):
    two_stage = {'0': {'models': {'A>B': model(0.80, {'a': 0.9, 'b': 0.7, 'c': 0.8})}},
                 '1': {'models': {'A>B': model(0.70, {'a': 0.7, 'b': 0.7, 'c': 0.7})}},
                 '2': {'models': {'A>B': model(0.90, {'a': 0.9, 'b': 0.9, 'c': 0.9})}}}
    default = {'0': {'models': {'B': model(0.78, {'a': 0.8, 'b': 0.8, 'c': 0.8})}},
               '1': {'models': {'B': model(0.74, {'a': 0.6, 'b': 0.8, 'c': 0.8})}}}  # seed 2 missing: left out
    c = compare_models.comparison(two_stage, 'A>B', default, 'B', 'test')
    assert c['seeds'] == ['0', '1']
    assert np.allclose(c['gains'], [2.0, -4.0]) and np.isclose(c['mean'], -1.0) and np.isclose(c['sd'], 3.0)
    assert (c['better'], c['worse']) == (2, 3)  # a on both seeds better; b on seed 0, b and c on seed 1 worse
    assert np.isclose(c['case_median'], -5.0) and np.isclose(c['case_max'], 10.0)
    assert compare_models.comparison(two_stage, 'A>B', default, 'B', 'validation') is None
    first, second = tmp_path / 'two_stage.json', tmp_path / 'default.json'
    first.write_text(json.dumps({'runs': two_stage}))
    second.write_text(json.dumps({'runs': default}))
    with pytest.raises(SystemExit, match="no seed has both 'A>B'"):
        compare_models.main([str(first), 'A>B', str(second), 'nnUNetTrainer'])
    with pytest.raises(SystemExit, match='missing.json: not a results JSON'):
        compare_models.main([str(first), 'A>B', str(tmp_path / 'missing.json'), 'B'])


def test_frames_of_one_video_sequence_count_once_when_paired_by_sequence(compare_models, tmp_path, capsys):
    from dataset_conversion.splits import CVC_SEQUENCES
    (a1, a2), (b1, _) = CVC_SEQUENCES[0], CVC_SEQUENCES[1]  # two frames of sequence 1, one of sequence 2
    frames = lambda x, y, z: {f'cvc_{a1}.png': x, f'cvc_{a2}.png': y, f'cvc_{b1}.png': z}  # noqa: E731
    runs = {'0': {'models': {'nnUNetTrainer': dict(model(0.5, frames(0.4, 0.4, 0.7)),
                                                   validation=model(0.5, {f'cvc_{b1}.png': 0.7})),
                             'M3HLTrainer': model(0.6, frames(0.6, 0.5, 0.6))}}}
    by_sequence = compare_models.grouped(runs, compare_models.GROUPINGS['cvc-sequence'])
    assert by_sequence['0']['models']['M3HLTrainer']['per_case_dice'] == {'1': 0.55, '2': 0.6}
    assert by_sequence['0']['models']['nnUNetTrainer']['validation']['per_case_dice'] == {'2': 0.7}
    assert runs['0']['models']['M3HLTrainer']['per_case_dice'][f'cvc_{a1}.png'] == 0.6  # the input is left alone
    c = compare_models.comparison(by_sequence, 'M3HLTrainer', by_sequence, 'nnUNetTrainer', 'test')
    assert (c['better'], c['worse']) == (1, 1) and np.isclose(c['case_median'], 2.5)  # per frame: 2 / 1
    path = tmp_path / 'cvc.json'
    path.write_text(json.dumps({'runs': runs}))
    compare_models.main([str(path), 'M3HLTrainer', str(path), 'nnUNetTrainer', '--by', 'cvc-sequence'])
    assert 'cvc-sequences better / worse 1 / 1' in capsys.readouterr().out
    path.write_text(json.dumps({'runs': {'0': {'models': {m: model(0.5, {'case_1': 0.5})
                                                          for m in ('M3HLTrainer', 'nnUNetTrainer')}}}}))
    with pytest.raises(SystemExit, match='--by cvc-sequence: case_1: not a converted CVC-ClinicDB frame'):
        compare_models.main([str(path), 'M3HLTrainer', str(path), 'nnUNetTrainer', '--by', 'cvc-sequence'])


def test_cvc_and_acdc_tables_read_the_gain_per_sequence_and_per_patient_too(tmp_path):
    results_tables = benchmark_module('results_tables')
    from dataset_conversion.splits import CVC_SEQUENCES
    (a1, a2), (b1, _) = CVC_SEQUENCES[0], CVC_SEQUENCES[1]
    frames = lambda x, y, z: {f'cvc_{a1}.png': x, f'cvc_{a2}.png': y, f'cvc_{b1}.png': z}  # noqa: E731
    runs = {'0': {'models': {'nnUNetTrainer': model(0.5, frames(0.4, 0.4, 0.7)),
                             'M3HLTrainer': model(0.6, frames(0.6, 0.5, 0.6))}}}
    (tmp_path / 'real_cvc23_cpu_long.json').write_text(json.dumps({'runs': runs}))
    spec = next(s for s in results_tables.TABLES if s['title'].startswith('CVC-ClinicDB, 23'))
    text = results_tables.table(spec, str(tmp_path))
    assert '2 / 1, median +10.00' in text  # per frame
    assert 'Per test sequence against nnU-Net' in text and 'M3HL, the default 1 / 1, median +2.50.' in text
    acdc = next(s for s in results_tables.TABLES if s['title'].startswith('ACDC, 7'))
    assert 'Per test' not in results_tables.table(acdc, str(tmp_path))  # nothing to pair yet
    # ACDC: a patient's two frames count once
    frames = lambda x, y, z: {'patient001_ED.nii.gz': x, 'patient001_ES.nii.gz': y, 'patient002_ED.nii.gz': z}  # noqa: E731
    runs = {'0': {'models': {'nnUNetTrainer': model(0.5, frames(0.4, 0.4, 0.7)),
                             'M3HLTrainer': model(0.6, frames(0.6, 0.5, 0.6))}}}
    (tmp_path / 'real_acdc7_cpu_long.json').write_text(json.dumps({'runs': runs}))
    text = results_tables.table(acdc, str(tmp_path))
    assert 'Per test patient against nnU-Net' in text and 'M3HL, the default 1 / 1, median +2.50.' in text
