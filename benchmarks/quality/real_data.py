"""M3HL against nnU-Net on real scans (ACDC, LA, CVC-ClinicDB), with the published splits (CVC: the project's) and
the papers' metrics.

    python benchmarks/quality/real_data.py --dataset acdc --data /data/ACDC --labeled 3 --budget cpu \
        --workdir /scratch/acdc3 -o benchmarks/results/real_acdc3_cpu.json
    python benchmarks/quality/real_data.py --dataset la --data "/data/LA/2018LA_Seg_Training Set" --labeled 4 ...

One command per (dataset, labeled count); ``--seeds`` runs several seeds. The data folder is converted with the
package's converter (either ACDC layout, either LA layout, CVC-ClinicDB's images/ + masks/) into ``--workdir``,
which holds its own nnUNet_raw, nnUNet_preprocessed and nnUNet_results. Every trainer of ``--trainers`` is trained
on the same plans with the same budget, the official test set is predicted with ``nnUNetv2_predict`` (an M3HL fold
also with its EMA teacher, ``-chk checkpoint_final_teacher.pth``) and evaluated in the papers' convention against
the original labels at their original resolution. No checkpoint is chosen on the test set: each model is the final
checkpoint. Fold 0's validation cases (ACDC: the protocol's 10 validation patients; LA: the labeled scans; CVC:
nnU-Net's fold 0 of the labeled frames) are predicted and scored the same way; settings are chosen on them.
``--splits validation`` scores candidates there only, and a later call with both splits adds the test scores of the
chosen one without training again.

A trainer spec ``A+B`` is the two-stage recipe at the same total budget: ``A`` trained for
``--pretrain-fraction`` of the iterations, then ``B`` for the rest, started from ``A``'s final checkpoint with
nnU-Net's own ``-pretrained_weights`` path; ``A``'s model is scored as well. ``selftraining(A)`` is nnU-Net's own
self-training recipe: ``A``'s model of the seed pseudo-labels every unlabeled scan, then ``nnUNetTrainer`` trains on
labeled plus pseudo-labeled cases for the whole budget.

Budgets:
- ``cpu``: plans made by nnU-Net's planner with a coarser target spacing (ACDC 2d at 2 mm in plane, LA
  3d_fullres at 1.875 mm isotropic, CVC 2d at half the pixel size) and a smaller batch (``--batch-size``),
  ``--iterations`` per trainer. Predictions are resampled by nnU-Net back to the original geometry. Default
  iterations: ACDC and CVC 600, LA 300.
- ``cpu_long``: the ``cpu`` plans with half the network widths and a larger batch, ACDC and CVC 5000 iterations, LA
  3000.
- ``gpu``: nnU-Net's native plans; each trainer trains until ``--minutes`` of wall-clock time are used (the
  epoch count is fixed after the first epoch from its measured duration).

Results are written to the JSON after every trained model, and a rerun resumes: finished models are skipped,
a trained fold is not retrained, existing predictions are only re-evaluated.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

DATASETS = {
    # id, configuration, target spacing of the CPU budget (numpy axis order), converter
    # cpu_iterations: per trainer spec, sized from measured step times so that two trainers, their predictions and
    # the preparation fit 75 minutes on a 2-core CPU (benchmarks/HISTORY.md)
    'acdc': {'id': 271, 'configuration': '2d', 'cpu_spacing': [10.0, 2.0, 2.0], 'cpu_batch': 4, 'cpu_iterations': 600,
             'cpu_long_batch': 8, 'cpu_long_iterations': 5000},
    'la': {'id': 281, 'configuration': '3d_fullres', 'cpu_spacing': [1.875, 1.875, 1.875], 'cpu_batch': 2,
           'cpu_iterations': 300, 'cpu_long_batch': 2, 'cpu_long_iterations': 3000},
    # RGB frames of 256x256 read by NaturalImage2DIO (spacing 999 x 1 x 1): the cpu plans halve them to 128x128
    'cvc': {'id': 291, 'configuration': '2d', 'cpu_spacing': [999.0, 2.0, 2.0], 'cpu_batch': 4, 'cpu_iterations': 600,
            'cpu_long_batch': 8, 'cpu_long_iterations': 5000, 'name': 'CVCClinicDB'},
}
# the package's converter of each dataset: module of dataset_conversion and function
CONVERTERS = {'acdc': ('acdc', 'convert_acdc'), 'la': ('la', 'convert_la'), 'cvc': ('cvc', 'convert_cvc')}
# published means (Dice %) and their budgets, for scale
ANCHORS = {
    ('acdc', 3): [('BCP (Bai et al., CVPR 2023)', 87.59), ('AD-MT', 88.75)],
    ('acdc', 7): [('BCP (Bai et al., CVPR 2023)', 88.84), ('AD-MT', 89.46)],
    ('la', 4): [('AD-MT', 89.63)],
    ('la', 8): [('AD-MT', 90.55)],
}
ANCHOR_BUDGET = {'acdc': '30k iterations, batch 24 (12 labeled + 12 unlabeled slices), 256x256',
                 'la': '15k iterations, batch 4 + 4 patches of 112x112x80'}
TEACHER_CHECKPOINT = 'checkpoint_final_teacher.pth'
# the converging CPU budget: the cpu plans with the reference code's U-Net widths (16..256 instead of nnU-Net's 32..512
# at these patch sizes) and a larger batch
NARROW_PLANS = 'nnUNetPlans_cpu_narrow'


def log(message: str) -> None:
    print(f"[real_data {time.strftime('%H:%M:%S')}] {message}", flush=True)


def nnunet_env(workdir: str, results_name: str = 'nnUNet_results') -> Dict[str, str]:
    from nnunetv2_m3hl import trainer_path
    env = os.environ.copy()
    env.update({'nnUNet_raw': os.path.join(workdir, 'nnUNet_raw'),
                'nnUNet_preprocessed': os.path.join(workdir, 'nnUNet_preprocessed'),
                'nnUNet_results': os.path.join(workdir, results_name)})
    ext = env.get('nnUNet_extTrainer', '')
    env['nnUNet_extTrainer'] = os.pathsep.join([p for p in (trainer_path(), ext) if p])
    return env


def run(cmd: List[str], env: Dict[str, str], log_file: Optional[str] = None) -> None:
    """A command with its output in ``log_file`` (or ours); fails loudly with the log's tail."""
    if log_file:
        with open(log_file, 'a') as f:
            proc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode != 0:
            with open(log_file) as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}); end of {log_file}:\n{tail}")
    else:
        subprocess.run(cmd, env=env, check=True)


def plans_name(budget: str) -> str:
    return {'gpu': 'nnUNetPlans', 'cpu': 'nnUNetPlans_cpu', 'cpu_long': NARROW_PLANS}[budget]


def narrowed_plans(plans: dict, configuration: str, width_divisor: int, batch_size: int, name: str) -> dict:
    """``plans`` with ``configuration``'s network widths divided by ``width_divisor`` and its batch size set, saved
    under the plans name ``name``. The data identifier stays, so the preprocessed scans (labeled and unlabeled) are
    shared with the source plans; the edit is recorded in the plans under ``m3hl_plans_edit``."""
    out = json.loads(json.dumps(plans))
    c = out['configurations'][configuration]
    c['data_identifier'] = plans['configurations'][configuration]['data_identifier']
    kwargs = c['architecture']['arch_kwargs']
    source_widths = list(kwargs['features_per_stage'])
    kwargs['features_per_stage'] = [max(1, w // width_divisor) for w in source_widths]
    c['batch_size'] = batch_size
    out['plans_name'] = name
    out['m3hl_plans_edit'] = {'source_plans': plans['plans_name'], 'configuration': configuration,
                              'features_per_stage': {'source': source_widths, 'now': kwargs['features_per_stage']},
                              'batch_size': {'source': plans['configurations'][configuration]['batch_size'],
                                             'now': batch_size}}
    return out


def planner_options(dataset: str, plans: str) -> List[str]:
    """nnU-Net planner arguments that make ``plans``: the cpu plans (which the converging budget's narrow plans
    are derived from) at the dataset's coarser spacing, under their own name."""
    if plans != plans_name('cpu'):
        return []
    return ['-overwrite_target_spacing', *map(str, DATASETS[dataset]['cpu_spacing']), '-overwrite_plans_name', plans]


def prepare_dataset(dataset: str, data: str, labeled: int, workdir: str, budget: str, batch_size: Optional[int],
                    env: Dict[str, str]) -> str:
    """Convert, plan and preprocess (labeled and unlabeled scans) once per workdir; returns the dataset name."""
    spec = DATASETS[dataset]
    did, configuration = spec['id'], spec['configuration']
    # the converging budget's plans are derived from the cpu plans and share their preprocessed data
    plans = plans_name('cpu' if budget == 'cpu_long' else budget)
    name = f"Dataset{did:03d}_{spec.get('name', dataset.upper())}"
    raw = os.path.join(env['nnUNet_raw'], name)
    pre = os.path.join(env['nnUNet_preprocessed'], name)
    nnunet = [sys.executable, '-c']
    entry = 'from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import {0} as m; m()'.format
    if not os.path.isdir(raw):
        log(f"converting {data} ({dataset}, {labeled} labeled)")
        module, converter = CONVERTERS[dataset]
        run([sys.executable, '-c', f'from dataset_conversion.{module} import {converter} as c; import sys; '
             f'c(sys.argv[1], {did}, labeled={labeled})', data], env)
    plans_file = os.path.join(pre, f'{plans}.json')
    if not os.path.isfile(plans_file):
        log(f"planning {name} ({plans})")
        run(nnunet + [entry('extract_fingerprint_entry'), '-d', str(did), '-np', '2'], env)
        run(nnunet + [entry('plan_experiment_entry'), '-d', str(did)] + planner_options(dataset, plans), env)
        if plans == plans_name('cpu'):
            # a smaller batch than nnU-Net's GPU-sized one; the planner's patch and network are kept
            content = json.load(open(plans_file))
            cpu_batch = batch_size if budget == 'cpu' and batch_size else spec['cpu_batch']
            content['configurations'][configuration]['batch_size'] = cpu_batch
            with open(plans_file, 'w') as f:
                json.dump(content, f, indent=1)
    marker = os.path.join(pre, f'.{plans}_{configuration}_preprocessed')
    if not os.path.isfile(marker):
        log(f"preprocessing {name} {configuration} ({plans}), labeled and unlabeled")
        run(nnunet + [entry('preprocess_entry'), '-d', str(did), '-plans_name', plans, '-c', configuration,
                      '-np', '2'], env)
        run([sys.executable, '-c', 'from nnunetv2_m3hl.unlabeled import preprocess_unlabeled as p; import sys; '
             'p(int(sys.argv[1]), sys.argv[2], sys.argv[3], num_processes=2)', str(did), configuration, plans], env)
        open(marker, 'w').close()
    if budget == 'cpu_long':
        narrow_file = os.path.join(pre, f'{NARROW_PLANS}.json')
        if not os.path.isfile(narrow_file):
            content = narrowed_plans(json.load(open(plans_file)), configuration, 2,
                                     batch_size or spec['cpu_long_batch'], NARROW_PLANS)
            tmp = narrow_file + '.tmp'
            with open(tmp, 'w') as f:
                json.dump(content, f, indent=1)
            os.replace(tmp, narrow_file)
            log(f"wrote {narrow_file}: {content['m3hl_plans_edit']}")
    return name


# one epoch of the benchmark; nnU-Net's own is 250 iterations
ITERATIONS_PER_EPOCH = 50
# the converging budget validates every epoch on the same 20 batches of the validation cases, a checkpoint every
# 2 epochs (a stopped run loses at most about two epochs)
LONG_VALIDATION_BATCHES, LONG_SAVE_EVERY = 20, 2


def train_one(dataset_id: int, configuration: str, plans: str, trainer: str, iterations: int,
              minutes: Optional[float], seed: int, device: str, pretrained: Optional[str],
              iterations_per_epoch: int = ITERATIONS_PER_EPOCH, validation_batches: int = 5,
              save_every: int = 50) -> None:
    """Fold 0 of one trainer in this process (called through a subprocess with its own nnUNet_results). A fold
    with a ``checkpoint_latest.pth`` and no final checkpoint is resumed as nnU-Net's ``--c`` does; the seeded
    loaders make the resumed run equal to one that was never stopped."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    from nnunetv2_m3hl.determinism import make_loading_deterministic, seed_everything
    # on a GPU, speed as users get it (cuDNN autotuning, as nnU-Net's run_training) over bit-exact repeats
    seed_everything(seed, deterministic_kernels=device == 'cpu')
    if device != 'cpu':
        torch.backends.cudnn.benchmark = True
    t = get_trainer_from_args(str(dataset_id), configuration, 0, trainer, plans, device=torch.device(device))
    make_loading_deterministic(t, seed)
    t.num_iterations_per_epoch = iterations_per_epoch
    t.num_val_iterations_per_epoch = validation_batches
    t.save_every = save_every
    t.num_epochs = max(1, round(iterations / iterations_per_epoch))
    if hasattr(t, 'mixed_sample_png_every'):
        t.mixed_sample_png_every = t.num_epochs
    if minutes is not None:
        # wall-clock budget: after the first epoch, fix the epoch count so that training ends in time
        start, original = time.time(), t.on_epoch_end
        t.num_epochs = 10_000

        def on_epoch_end():
            if t.current_epoch == 0:
                per_epoch = time.time() - start
                t.num_epochs = max(2, int(60 * minutes / per_epoch))
                t.print_to_log_file(f"wall-clock budget {minutes} min: {t.num_epochs} epochs of "
                                    f"{iterations_per_epoch} iterations ({per_epoch:.1f} s for the first)")
            original()
        t.on_epoch_end = on_epoch_end
    resume = os.path.isfile(os.path.join(t.output_folder, 'checkpoint_latest.pth')) and minutes is None
    if resume:
        t.print_to_log_file('resuming from checkpoint_latest.pth')
    maybe_load_checkpoint(t, resume, False, None if resume else pretrained)
    t.run_training()


def plateau(curve: List[float], share: float = 0.1, tolerance: float = 0.01) -> dict:
    """The plateau test of the converging budget: the mean validation Dice of the last ``share`` of the epochs is
    within ``tolerance`` (Dice, 0.01 = 1 point) of the mean of the ``share`` before."""
    values = np.array([v for v in curve if v is not None and np.isfinite(v)], dtype=float)
    n = max(1, int(round(share * len(values))))
    rule = (f"mean validation Dice of the last {100 * share:.0f}% of the epochs within {100 * tolerance:.1f} "
            f"points of the {100 * share:.0f}% before")
    if len(values) < 2 * n:
        return {'rule': rule, 'plateaued': False, 'last': None, 'before': None}
    last, before = float(values[-n:].mean()), float(values[-2 * n:-n].mean())
    return {'rule': rule, 'plateaued': bool(abs(last - before) <= tolerance), 'last': last, 'before': before,
            'epochs_per_window': n}


def trained_iterations(fold: str, checkpoint: str = 'checkpoint_final.pth') -> Optional[dict]:
    """Epochs, the validation Dice per epoch (overall and per class), the epoch times and the logged M3HL terms
    of a finished fold (from its final checkpoint), and the trainer's M3HL settings."""
    from nnunetv2_m3hl.checkpointing import load_checkpoint_safely
    ckpt = load_checkpoint_safely(os.path.join(fold, checkpoint))
    logging = ckpt['logging']
    # an M3HL checkpoint names nnUNetTrainer for inference and keeps its own class under 'm3hl'
    trainer = ckpt.get('m3hl', {}).get('trainer_name', ckpt.get('trainer_name'))
    out = {'epochs': int(ckpt['current_epoch']), 'trainer': trainer}
    for key in ('train_losses', 'mix_losses', 'high_losses', 'low_losses', 'pseudo_fg_share'):
        if key in logging:
            out[key] = [float(v) for v in logging[key]]
    out['validation_dice'] = [float(v) for v in logging.get('mean_fg_dice', [])]
    out['validation_dice_per_class'] = [[float(c) for c in v] for v in logging.get('dice_per_class_or_region', [])]
    starts, ends = logging.get('epoch_start_timestamps', []), logging.get('epoch_end_timestamps', [])
    out['epoch_seconds'] = [float(e - s) for s, e in zip(starts, ends)]
    out['plateau'] = plateau(out['validation_dice'])
    if 'm3hl' in ckpt:
        out['m3hl_settings'] = ckpt['m3hl']['settings']
    return out


def fold_folder(results: str, dataset_name: str, trainer: str, plans: str, configuration: str) -> str:
    return os.path.join(results, dataset_name, f'{trainer}__{plans}__{configuration}', 'fold_0')


def spec_slug(spec: str) -> str:
    source = self_training_source(spec)
    if source:
        return f'{SELF_TRAINING}_of_{spec_slug(source)}'
    return spec.replace('>', '_full_then_').replace('+', '_then_')


def spec_stages(spec: str, iterations: int, minutes: Optional[float], pretrain_fraction: float) -> List[tuple]:
    """(trainer, iterations, minutes, results root slug) of each stage of a spec: ``A``; ``A+B`` (A for
    ``pretrain_fraction`` of the budget, then B for the rest); ``A>B`` (A's own run of the whole budget, shared with
    the spec ``A``, then B for the whole budget again)."""
    if '>' in spec:
        first, second = spec.split('>')
        return [(first, iterations, minutes, spec_slug(first)), (second, iterations, minutes, spec_slug(spec))]
    stages = spec.split('+')
    if len(stages) == 1:
        return [(spec, iterations, minutes, spec_slug(spec))]
    f = pretrain_fraction
    return [(stages[0], round(iterations * f), None if minutes is None else minutes * f, spec_slug(spec)),
            (stages[1], iterations - round(iterations * f), None if minutes is None else minutes * (1 - f),
             spec_slug(spec))]


def training_options(args) -> dict:
    """How ``train_one`` runs under this budget."""
    if args.budget == 'cpu_long':
        return {'validation_batches': LONG_VALIDATION_BATCHES, 'save_every': LONG_SAVE_EVERY}
    return {}


def train_spec(spec: str, args, dataset_name: str, seed: int) -> tuple:
    """Train every stage of a spec that is not trained yet (a stopped stage resumes); returns ({scored model name:
    (fold, checkpoint)}, the spec's nnU-Net environment)."""
    if self_training_source(spec):
        return train_self_training(spec, args, dataset_name, seed)
    cfg = DATASETS[args.dataset]
    plans = plans_name(args.budget)
    stages = spec_stages(spec, args.iterations, args.minutes, args.pretrain_fraction)
    pretrained, models = None, {}
    for stage, iterations, minutes, slug in stages:
        env = nnunet_env(args.workdir, f'nnUNet_results_seed{seed}_{slug}')
        fold = fold_folder(env['nnUNet_results'], dataset_name, stage, plans, cfg['configuration'])
        if not os.path.isfile(os.path.join(fold, 'checkpoint_final.pth')):
            resuming = os.path.isfile(os.path.join(fold, 'checkpoint_latest.pth'))
            log(f"seed {seed}, {spec}: {'resuming' if resuming else 'training'} {stage} ({iterations} iterations"
                + (f", {minutes:.1f} min" if minutes else '') + (", from the previous stage)" if pretrained else ')'))
            os.makedirs(os.path.join(args.workdir, 'logs'), exist_ok=True)
            options = dict(dataset_id=cfg['id'], configuration=cfg['configuration'], plans=plans, trainer=stage,
                           iterations=iterations, minutes=minutes, seed=seed, device=args.device,
                           pretrained=pretrained, **training_options(args))
            run([sys.executable, os.path.abspath(__file__), '_train', json.dumps(options)], env,
                os.path.join(args.workdir, 'logs', f'seed{seed}_{slug}_{stage}.log'))
        pretrained = os.path.join(fold, 'checkpoint_final.pth')
        if '+' in spec and stage != stages[-1][0]:
            # the model the next stage starts from, scored too: how much the later stage adds
            models[stage_name(spec, stage)] = (fold, 'checkpoint_final.pth')
    models[spec] = (fold, 'checkpoint_final.pth')
    if os.path.isfile(os.path.join(fold, TEACHER_CHECKPOINT)):
        models[f'{spec} (teacher)'] = (fold, TEACHER_CHECKPOINT)
    return models, env


SELF_TRAINING = 'selftraining'


def self_training_source(spec: str) -> Optional[str]:
    """The spec whose model labels the unlabeled scans in ``selftraining(SOURCE)``, None for any other spec."""
    if spec.startswith(f'{SELF_TRAINING}(') and spec.endswith(')'):
        return spec[len(SELF_TRAINING) + 1:-1]
    return None


def self_training_root(workdir: str, seed: int, source: str) -> str:
    return os.path.join(workdir, 'selftraining', f'seed{seed}_{spec_slug(source)}')


def write_self_training_dataset(env: Dict[str, str], st_env: Dict[str, str], dataset_name: str, plans: str,
                                pseudo_labels: str) -> int:
    """nnU-Net's raw and preprocessed folders of the self-training dataset: every case of ``imagesTr`` with its
    label plus every unlabeled scan with its pseudo-label (links into the benchmark's raw folder), the benchmark's
    plans and fold 0's validation cases; returns the number of pseudo-labeled cases."""
    raw, st_raw = (os.path.join(e['nnUNet_raw'], dataset_name) for e in (env, st_env))
    pre, st_pre = (os.path.join(e['nnUNet_preprocessed'], dataset_name) for e in (env, st_env))
    dataset = json.load(open(os.path.join(raw, 'dataset.json')))
    ending = dataset['file_ending']
    unlabeled = sorted(f[:-len(ending)] for f in os.listdir(pseudo_labels) if f.endswith(ending))
    if os.path.isdir(st_raw):
        return len(unlabeled)
    tmp = f'{st_raw}.tmp{os.getpid()}'
    for sub in ('imagesTr', 'labelsTr'):
        os.makedirs(os.path.join(tmp, sub))
    for name in os.listdir(os.path.join(raw, 'imagesTr')):
        os.symlink(os.path.join(raw, 'imagesTr', name), os.path.join(tmp, 'imagesTr', name))
    for name in os.listdir(os.path.join(raw, 'labelsTr')):
        os.symlink(os.path.join(raw, 'labelsTr', name), os.path.join(tmp, 'labelsTr', name))
    for name in os.listdir(os.path.join(raw, 'imagesUnlabeledTr')):
        os.symlink(os.path.join(raw, 'imagesUnlabeledTr', name), os.path.join(tmp, 'imagesTr', name))
    for case in unlabeled:
        os.symlink(os.path.join(pseudo_labels, case + ending), os.path.join(tmp, 'labelsTr', case + ending))
    for sub in ('imagesTs', 'labelsTs'):
        os.symlink(os.path.join(raw, sub), os.path.join(tmp, sub))
    dataset['numTraining'] = len(os.listdir(os.path.join(tmp, 'labelsTr')))
    dataset['description'] = (dataset.get('description', '') + f' | self-training: {len(unlabeled)} unlabeled '
                              f'scans with pseudo-labels from {pseudo_labels}').strip(' |')
    with open(os.path.join(tmp, 'dataset.json'), 'w') as f:
        json.dump(dataset, f, indent=1)
    os.makedirs(st_pre, exist_ok=True)
    for name in (f'{plans}.json', 'dataset_fingerprint.json'):
        shutil.copy(os.path.join(pre, name), os.path.join(st_pre, name))
    shutil.copy(os.path.join(tmp, 'dataset.json'), os.path.join(st_pre, 'dataset.json'))
    fold0 = json.load(open(os.path.join(pre, 'splits_final.json')))[0]
    with open(os.path.join(st_pre, 'splits_final.json'), 'w') as f:
        json.dump([{'train': sorted(fold0['train']) + unlabeled, 'val': fold0['val']}], f, indent=1)
    os.makedirs(os.path.dirname(st_raw), exist_ok=True)
    os.replace(tmp, st_raw)
    return len(unlabeled)


def drop_unreadable_labels(folder: str, dataset_json: dict) -> List[str]:
    """Removes the label files of ``folder`` that the dataset's reader (dataset.json's
    ``overwrite_image_reader_writer``, else nnU-Net's choice for its file ending) cannot read and returns their
    names: a prediction stopped while exporting leaves its last files truncated, and ``--continue_prediction``
    would keep them as done."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    # no example file: the one at hand may be the truncated one, which no reader would accept
    reader = determine_reader_writer_from_dataset_json(dataset_json, verbose=False)()
    ending = dataset_json['file_ending']
    dropped = []
    for name in sorted(f for f in os.listdir(folder) if f.endswith(ending)):
        try:
            reader.read_seg(os.path.join(folder, name))
        except Exception:
            os.remove(os.path.join(folder, name))
            dropped.append(name)
    return dropped


def train_self_training(spec: str, args, dataset_name: str, seed: int) -> tuple:
    """nnU-Net's own answer to unlabeled scans, as its maintainers describe it (MIC-DKFZ/nnUNet issues #2338,
    #2233): the SOURCE model of this seed (trained if it is not there yet) predicts every unlabeled scan with
    ``nnUNetv2_predict`` (final checkpoint, hard labels), and ``nnUNetTrainer`` trains from scratch on the labeled
    plus pseudo-labeled cases with the same plans, budget and validation cases. Every step is skipped when its
    output is complete, so a stopped run resumes; a stopped pseudo-labelling goes on with the scans that have no
    readable label yet."""
    source = self_training_source(spec)
    cfg = DATASETS[args.dataset]
    plans = plans_name(args.budget)
    source_models, source_env = train_spec(source, args, dataset_name, seed)
    fold, checkpoint = source_models[source]
    root = self_training_root(args.workdir, seed, source)
    pseudo_labels = os.path.join(root, 'pseudo_labels')
    unlabeled_images = os.path.join(source_env['nnUNet_raw'], dataset_name, 'imagesUnlabeledTr')
    dataset_json = json.load(open(os.path.join(source_env['nnUNet_raw'], dataset_name, 'dataset.json')))
    ending = dataset_json['file_ending']
    expected = {f[:-len(ending) - 5] + ending for f in os.listdir(unlabeled_images) if f.endswith(ending)}
    os.makedirs(pseudo_labels, exist_ok=True)
    if not expected <= set(os.listdir(pseudo_labels)):
        truncated = drop_unreadable_labels(pseudo_labels, dataset_json)
        left = expected - set(os.listdir(pseudo_labels))
        log(f"seed {seed}, {spec}: {source} predicts {len(left)} of the {len(expected)} unlabeled scans "
            f"(pseudo-labels)" + (f"; removed unreadable: {', '.join(truncated)}" if truncated else ''))
        os.makedirs(os.path.join(args.workdir, 'logs'), exist_ok=True)
        trainer = os.path.basename(os.path.dirname(fold)).split('__')[0]
        run([os.path.join(os.path.dirname(sys.executable), 'nnUNetv2_predict'), '-i', unlabeled_images,
             '-o', pseudo_labels, '-d', str(cfg['id']), '-c', cfg['configuration'], '-f', '0', '-tr', trainer,
             '-p', plans, '-chk', checkpoint, '-device', args.device, '-npp', '1', '-nps', '1',
             '--continue_prediction', '--disable_progress_bar'], source_env,
            os.path.join(args.workdir, 'logs', f'pseudolabel_seed{seed}_{spec_slug(source)}.log'))
    env = nnunet_env(root)
    n = write_self_training_dataset(source_env, env, dataset_name, plans, pseudo_labels)
    marker = os.path.join(env['nnUNet_preprocessed'], dataset_name, f'.{plans}_{cfg["configuration"]}_preprocessed')
    if not os.path.isfile(marker):
        log(f"seed {seed}, {spec}: preprocessing the labeled and {n} pseudo-labeled cases ({plans})")
        run([sys.executable, '-c', 'from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import '
             'preprocess_entry as m; m()', '-d', str(cfg['id']), '-plans_name', plans, '-c', cfg['configuration'],
             '-np', '2'], env, os.path.join(args.workdir, 'logs', f'preprocess_seed{seed}_{spec_slug(spec)}.log'))
        open(marker, 'w').close()
    fold = fold_folder(env['nnUNet_results'], dataset_name, 'nnUNetTrainer', plans, cfg['configuration'])
    if not os.path.isfile(os.path.join(fold, 'checkpoint_final.pth')):
        log(f"seed {seed}, {spec}: training nnUNetTrainer on the labeled and pseudo-labeled cases "
            f"({args.iterations} iterations)")
        options = dict(dataset_id=cfg['id'], configuration=cfg['configuration'], plans=plans,
                       trainer='nnUNetTrainer', iterations=args.iterations, minutes=args.minutes, seed=seed,
                       device=args.device, pretrained=None, **training_options(args))
        run([sys.executable, os.path.abspath(__file__), '_train', json.dumps(options)], env,
            os.path.join(args.workdir, 'logs', f'seed{seed}_{spec_slug(spec)}.log'))
    return {spec: (fold, 'checkpoint_final.pth')}, env


def stage_name(spec: str, stage: str) -> str:
    return f'{stage} (first stage of {spec})'


def expected_models(spec: str) -> List[str]:
    if '>' in spec or self_training_source(spec):
        return [spec]
    stages = spec.split('+')
    return [stage_name(spec, s) for s in stages[:-1]] + [spec]


def validation_split_folders(env: Dict[str, str], dataset_name: str, workdir: str) -> tuple:
    """(images, labels) folders of fold 0's validation cases (ACDC: the protocol's validation patients; LA:
    nnU-Net's fold 0), as links into nnUNet_raw, made once."""
    folder = os.path.join(workdir, 'validation_split')
    images, labels = os.path.join(folder, 'images'), os.path.join(folder, 'labels')
    if os.path.isdir(folder):
        return images, labels
    raw = os.path.join(env['nnUNet_raw'], dataset_name)
    splits = json.load(open(os.path.join(env['nnUNet_preprocessed'], dataset_name, 'splits_final.json')))
    dataset = json.load(open(os.path.join(raw, 'dataset.json')))
    ending, channels = dataset['file_ending'], len(dataset['channel_names'])
    tmp = f'{folder}.tmp{os.getpid()}'
    os.makedirs(os.path.join(tmp, 'images'))
    os.makedirs(os.path.join(tmp, 'labels'))
    for case in splits[0]['val']:
        for c in range(channels):
            name = f'{case}_{c:04d}{ending}'
            os.symlink(os.path.join(raw, 'imagesTr', name), os.path.join(tmp, 'images', name))
        os.symlink(os.path.join(raw, 'labelsTr', case + ending), os.path.join(tmp, 'labels', case + ending))
    os.replace(tmp, folder)
    return images, labels


def predict_and_score(model: str, fold: str, checkpoint: str, env: Dict[str, str], args, dataset_name: str,
                      seed: int, split: str = 'test') -> dict:
    """Predict ``split`` (the official test set, or fold 0's validation cases) with one model and evaluate it in the
    papers' convention."""
    from nnunetv2_m3hl.evaluation import evaluate_folders
    cfg = DATASETS[args.dataset]
    raw = os.path.join(env['nnUNet_raw'], dataset_name)
    if split == 'test':
        images, labels = os.path.join(raw, 'imagesTs'), os.path.join(raw, 'labelsTs')
    else:
        images, labels = validation_split_folders(env, dataset_name, args.workdir)
    slug = spec_slug(model).replace(' (teacher)', '_teacher').replace(' (first stage of ', '_stage1_of_') \
        .rstrip(')')
    out = os.path.join(args.workdir, 'predictions', plans_name(args.budget), split, f'seed{seed}', slug)
    expected = sorted(os.listdir(labels))
    if not all(os.path.isfile(os.path.join(out, f)) for f in expected):
        log(f"seed {seed}: predicting the {split} cases with {model}")
        trainer = os.path.basename(os.path.dirname(fold)).split('__')[0]
        run([os.path.join(os.path.dirname(sys.executable), 'nnUNetv2_predict'), '-i', images,
             '-o', out, '-d', str(cfg['id']), '-c', cfg['configuration'], '-f', '0', '-tr', trainer,
             '-p', plans_name(args.budget), '-chk', checkpoint, '-device', args.device, '-npp', '1', '-nps', '1',
             '--disable_progress_bar'], env,
            os.path.join(args.workdir, 'logs', f'predict_{split}_seed{seed}_{slug}.log'))
    metrics = evaluate_folders(labels, out, os.path.join(out, 'metrics.json'),
                               convention='paper', largest_component=args.dataset == 'la', verbose=False)
    return metrics


def split_scores(record: dict, split: str) -> dict:
    """A model's scores on ``split`` (test scores sit at the top of its record); empty where it was not scored."""
    scored = record if split == 'test' else record.get('validation', {})
    return scored if 'mean' in scored else {}


def missing_splits(record: dict, splits: List[str]) -> List[str]:
    """Of ``splits``, those a model's record has no scores for."""
    return [split for split in splits if not split_scores(record, split)]


def scores(metrics: dict) -> dict:
    """What the results JSON keeps of one evaluation."""
    return {'mean': metrics['mean'], 'per_class': metrics['per_class'],
            'per_case_dice': {case: float(np.mean([v['dice'] for v in per_class.values()]))
                              for case, per_class in metrics['per_case'].items()}}


def paired(runs: dict, model: str, other_runs: dict, other: str, split: str) -> tuple:
    """``model`` of ``runs`` against ``other`` of ``other_runs`` (two results JSONs' ``runs``, or one twice), seed by
    seed on ``split``: the Dice gains (points), one per seed where both were scored, and the per-case Dice gains
    (points) pooled over those seeds."""
    gains, case_gains = [], []
    for seed, r in runs.items():
        mine = split_scores(r['models'].get(model, {}), split)
        theirs = split_scores(other_runs.get(seed, {}).get('models', {}).get(other, {}), split)
        if not mine or not theirs:
            continue
        gains.append(100 * (mine['mean']['dice'] - theirs['mean']['dice']))
        a, b = mine['per_case_dice'], theirs['per_case_dice']
        case_gains += [100 * (a[c] - b[c]) for c in sorted(a) if c in b]
    return gains, case_gains


def paired_with_baseline(runs: dict, model: str, split: str) -> tuple:
    """``model`` against nnUNetTrainer of the same seed on ``split``: the Dice gains (points), one per seed where
    both were scored, and the cases better and worse over those seeds."""
    if model == 'nnUNetTrainer':
        return [], 0, 0
    gains, case_gains = paired(runs, model, runs, 'nnUNetTrainer', split)
    return gains, sum(g > 0 for g in case_gains), sum(g < 0 for g in case_gains)


def summarize(store: dict, dataset: str, labeled: int) -> str:
    """Markdown table: per model, mean ± std over seeds of the four test metrics and of the Dice gain, and the Dice
    on the validation cases (what a setting is chosen on) with its gain and the cases better / worse there."""
    runs = store['runs']
    models = sorted({m for r in runs.values() for m in r['models']}, key=lambda m: (m != 'nnUNetTrainer', m))
    lines = ["| model | seeds | Dice (%) | Jaccard (%) | 95HD (voxels) | ASD (voxels) | Dice gain over "
             "nnUNetTrainer (points) | cases better / worse | Dice per class (%) | validation Dice (%) | "
             "validation gain (points) | validation cases better / worse |", '|---' * 12 + '|']
    fmt = lambda v, s=100: f"{s * v.mean():.2f} ± {s * v.std():.2f}" if len(v) else ''  # noqa: E731
    gain = lambda g: f"{np.mean(g):+.2f} ± {np.std(g):.2f}" if g else ''  # noqa: E731
    for m in models:
        scored = [r['models'][m] for r in runs.values() if m in r['models']]
        per_seed = [split_scores(p, 'test') for p in scored if split_scores(p, 'test')]
        values = {k: np.array([p['mean'][k] for p in per_seed]) for k in ('dice', 'jaccard', 'hd95', 'asd')}
        gains, better, worse = paired_with_baseline(runs, m, 'test')
        cases = f"{better} / {worse}" if gains else ''
        classes = sorted({c for p in per_seed for c in p.get('per_class', {})}, key=int)
        per_class = ' / '.join(f"{100 * np.mean([p['per_class'][c]['dice'] for p in per_seed]):.1f}" for c in classes)
        validation = np.array([split_scores(p, 'validation')['mean']['dice'] for p in scored
                               if split_scores(p, 'validation')])
        validation_gains, validation_better, validation_worse = paired_with_baseline(runs, m, 'validation')
        validation_cases = f"{validation_better} / {validation_worse}" if validation_gains else ''
        lines.append(f"| {m} | {len(scored)} | {fmt(values['dice'])} | {fmt(values['jaccard'])} | "
                     f"{fmt(values['hd95'], 1)} | {fmt(values['asd'], 1)} | {gain(gains)} | {cases} | {per_class} | "
                     f"{fmt(validation)} | {gain(validation_gains)} | {validation_cases} |")
    for name, dice in ANCHORS.get((dataset, labeled), []):
        lines.append(f"| {name}, published ({ANCHOR_BUDGET[dataset]}) | | {dice:.2f} | | | | | | | | | |")
    return '\n'.join(lines)


def epoch_times(training: dict) -> Optional[dict]:
    """Median epoch time of a model's training (s) over its M3HL epochs (finite mix loss), or over all epochs for
    other trainers, and the medians of the first and the last quarter of those epochs: is the cost flat?"""
    seconds = np.array(training.get('epoch_seconds', []), dtype=float)
    if not len(seconds):
        return None
    mix = np.array(training.get('mix_losses', [np.nan] * len(seconds)), dtype=float)[:len(seconds)]
    chosen = seconds[np.isfinite(mix)] if np.isfinite(mix).any() else seconds
    quarter = max(1, len(chosen) // 4)
    return {'median': float(np.median(chosen)), 'first_quarter': float(np.median(chosen[:quarter])),
            'last_quarter': float(np.median(chosen[-quarter:])), 'epochs': int(len(chosen))}


def timing_table(store: dict) -> str:
    """Markdown table: per seed and model, the epoch times and their ratio to nnUNetTrainer's median."""
    lines = ["| seed | model | epochs timed | median epoch (s) | first / last quarter (s) | ratio to nnUNetTrainer |",
             '|---' * 6 + '|']
    for seed in sorted(store['runs'], key=int):
        models = store['runs'][seed]['models']
        base = epoch_times(models['nnUNetTrainer'].get('training', {})) if 'nnUNetTrainer' in models else None
        for m, v in models.items():
            t = epoch_times(v.get('training', {}))
            if t is None or '(teacher)' in m:
                continue
            ratio = f"{t['median'] / base['median']:.2f}" if base else ''
            lines.append(f"| {seed} | {m} | {t['epochs']} | {t['median']:.1f} | {t['first_quarter']:.1f} / "
                         f"{t['last_quarter']:.1f} | {ratio} |")
    return '\n'.join(lines)


def package_commit() -> str:
    """The package's git commit, with ``+changes`` when the working tree differs from it."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'
    return commit + ('+changes' if dirty else '')


def mixing_start_epoch(training: dict) -> Optional[int]:
    """The first epoch with an M3HL mixing step (the supervised warm-up logs its terms as absent), or None for a
    trainer that never mixed."""
    finite = np.flatnonzero(np.isfinite(np.array(training.get('mix_losses', []), dtype=float)))
    return int(finite[0]) if len(finite) else None


M3HL_TERMS = (('mix_losses', '-'), ('high_losses', '--'), ('low_losses', ':'), ('pseudo_fg_share', '-.'))


def logged_m3hl_terms(training: dict) -> List[tuple]:
    """The (key, line style) pairs of M3HL_TERMS that ``training`` logged at least once."""
    return [(key, style) for key, style in M3HL_TERMS
            if np.isfinite(np.array(training.get(key, []), dtype=float)).any()]


def write_curves(store: dict, path: str) -> None:
    """One row per seed: every model's validation Dice per epoch (the same validation patches for all), the Dice
    per class, and M3HL's logged terms where a model logged them; a dotted line marks the epoch at which a model's
    mixing started."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    seeds = sorted(store['runs'], key=int)
    if not seeds:
        return
    columns = 3 if any(logged_m3hl_terms(v.get('training', {})) for seed in seeds
                       for v in store['runs'][seed]['models'].values()) else 2
    fig, axes = plt.subplots(len(seeds), columns, figsize=(6 * columns, 4.5 * len(seeds)), squeeze=False)
    for row, seed in zip(axes, seeds):
        models = {m: v['training'] for m, v in store['runs'][seed]['models'].items()
                  if '(teacher)' not in m and v.get('training', {}).get('validation_dice')}
        for i, (model, training) in enumerate(models.items()):
            colour = f'C{i}'
            row[0].plot(100 * np.array(training['validation_dice']), color=colour, label=model)
            start = mixing_start_epoch(training)
            if start is not None:
                for ax in row:
                    ax.axvline(start, color=colour, linestyle=':', linewidth=1)
                row[0].annotate(f'{model}: mixing from epoch {start}', (start, 0), xycoords=('data', 'axes fraction'),
                                xytext=(3, 3 + 10 * i), textcoords='offset points', fontsize=6, color=colour)
            per_class = np.array(training['validation_dice_per_class'], dtype=float)
            for c, style in zip(range(per_class.shape[1] if per_class.ndim == 2 else 0), ('-', '--', ':', '-.')):
                row[1].plot(100 * per_class[:, c], color=colour, linestyle=style,
                            label=f'{model}, class {c + 1}')
            for key, style in logged_m3hl_terms(training):
                row[2].plot(training[key], color=colour, linestyle=style, label=f'{model}: {key}')
        row[0].set_title(f'seed {seed}: validation pseudo-Dice (%) per epoch')
        row[1].set_title(f'seed {seed}: validation Dice per class (%)')
        if columns == 3:
            row[2].set_title(f'seed {seed}: M3HL terms per epoch')
        for ax in row:
            ax.set_xlabel('epoch')
            if ax.lines:
                ax.legend(fontsize=6)
    fig.tight_layout()
    tmp = path + '.tmp.png'
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def save(store: dict, path: str) -> None:
    tmp = f'{path}.tmp'
    with open(tmp, 'w') as f:
        json.dump(store, f, indent=1)
    os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', choices=sorted(DATASETS), required=True)
    p.add_argument('--data', required=True, help='ACDC root (official or SSL4MIS h5), LA case folder or CVC-ClinicDB '
                                                 'folder (images/, masks/)')
    p.add_argument('--labeled', type=int, required=True,
                   help='labeled patients (ACDC), scans (LA) or frames (CVC: 23 = 5%%, 47 = 10%%)')
    p.add_argument('--workdir', required=True, help='folder for the converted data, plans, models and predictions')
    p.add_argument('-o', '--output', required=True, help='results JSON (read first when it exists: resume)')
    p.add_argument('--budget', choices=('cpu', 'cpu_long', 'gpu'), default='cpu')
    p.add_argument('--trainers', nargs='+', default=['nnUNetTrainer', 'M3HLTrainer'],
                   help="trainer specs; 'A+B' = A then B from A's weights at the same total budget; "
                        "'selftraining(A)' = nnU-Net's self-training: A's model pseudo-labels the unlabeled scans, "
                        "then nnUNetTrainer trains on labeled + pseudo-labeled cases")
    p.add_argument('--seeds', nargs='+', type=int, default=[0])
    p.add_argument('--iterations', type=int, default=None,
                   help='iterations per trainer spec (cpu default: ACDC 600, LA 300; gpu: bounded by --minutes)')
    p.add_argument('--minutes', type=float, default=None, help='wall-clock minutes per trainer spec (gpu: 4.5)')
    p.add_argument('--pretrain-fraction', type=float, default=0.5, help="share of an 'A+B' spec's budget spent on A")
    p.add_argument('--batch-size', type=int, default=None, help='batch size of the cpu plans (ACDC 4, LA 2)')
    p.add_argument('--splits', nargs='+', choices=('validation', 'test'), default=['validation', 'test'],
                   help="what to predict and score: fold 0's validation cases (settings are chosen there) and the "
                        "official test set (reported once a setting is chosen)")
    p.add_argument('--device', default=None)
    p.add_argument('--prepare-only', action='store_true', help='convert, plan and preprocess, then stop')
    args = p.parse_args(argv)
    if args.budget == 'gpu':
        args.minutes = args.minutes or 4.5
        args.iterations = args.iterations or 10_000
    args.iterations = args.iterations or DATASETS[args.dataset]['cpu_long_iterations' if args.budget == 'cpu_long' else 'cpu_iterations']
    if args.device is None:
        import torch
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    args.workdir = os.path.abspath(args.workdir)
    os.makedirs(args.workdir, exist_ok=True)
    os.environ.setdefault('nnUNet_compile', 'f' if args.device == 'cpu' else 't')
    os.environ.setdefault('nnUNet_n_proc_DA', '2' if args.device == 'cpu' else '8')
    env = nnunet_env(args.workdir)
    dataset_name = prepare_dataset(args.dataset, args.data, args.labeled, args.workdir, args.budget,
                                   args.batch_size, env)
    if args.prepare_only:
        print(f"{dataset_name} prepared in {args.workdir}")
        return
    store = json.load(open(args.output)) if os.path.isfile(args.output) else {'runs': {}}
    settings = {'dataset': args.dataset, 'labeled': args.labeled, 'budget': args.budget,
                'configuration': DATASETS[args.dataset]['configuration'], 'plans': plans_name(args.budget),
                'iterations_per_trainer': args.iterations, 'minutes_per_trainer': args.minutes,
                'pretrain_fraction': args.pretrain_fraction, 'device': args.device}
    plans = json.load(open(os.path.join(env['nnUNet_preprocessed'], dataset_name, f"{settings['plans']}.json")))
    c = plans['configurations'][settings['configuration']]
    settings.update({'patch_size': c['patch_size'], 'batch_size': c['batch_size'], 'spacing': c['spacing']})
    if store.get('settings', settings) != settings:
        raise SystemExit(f"{args.output} holds results of other settings ({store['settings']}); use another -o")
    store['settings'] = settings
    # what produced the numbers: a model keeps the commit it was trained under, the file every commit it was run at
    store.setdefault('code', {})[package_commit()] = time.strftime('%Y-%m-%d %H:%M:%S')
    for seed in args.seeds:
        entry = store['runs'].setdefault(str(seed), {'models': {}})
        for spec in args.trainers:
            if all(m in entry['models'] and not missing_splits(entry['models'][m], args.splits)
                   for m in expected_models(spec)):
                continue
            t0 = time.time()
            # the code the model is trained with, read before a change made while it trains can reach the record
            training_commit = package_commit()
            models, spec_env = train_spec(spec, args, dataset_name, seed)
            train_seconds = time.time() - t0
            for model, (fold, checkpoint) in models.items():
                record = entry['models'].get(model)
                if record is None:
                    record = {'training': trained_iterations(fold), 'train_seconds_this_call': train_seconds,
                              'code': training_commit}
                    source = self_training_source(model)
                    if source:
                        pseudo_labels = os.path.join(self_training_root(args.workdir, seed, source), 'pseudo_labels')
                        record['self_training'] = {
                            'source_model': source, 'pseudo_labels': 'final checkpoint, hard labels (nnUNetv2_predict)',
                            'pseudo_labeled_cases': len([f for f in os.listdir(pseudo_labels)
                                                         if not f.endswith('.json')])}
                elif not missing_splits(record, args.splits):
                    continue
                # a model scored before on fewer splits is scored on the missing ones only
                for split in missing_splits(record, args.splits):
                    result = scores(predict_and_score(model, fold, checkpoint, spec_env, args, dataset_name, seed,
                                                      split))
                    if split == 'test':
                        record.update(result)
                    else:
                        record['validation'] = result
                entry['models'][model] = record
                log(f"seed {seed}: {model}: " + '  '.join(
                    f"{split} Dice {100 * scored['mean']['dice']:.2f} per class "
                    f"{[round(100 * v['dice'], 1) for v in scored['per_class'].values()]}"
                    for split in ('test', 'validation') for scored in [split_scores(record, split)] if scored))
                verdict = entry['models'][model]['training']['plateau']
                if verdict['last'] is not None and '(teacher)' not in model:
                    log(f"seed {seed}: {model}: {'plateaued' if verdict['plateaued'] else 'NOT plateaued'} "
                        f"({verdict['rule']}: {100 * verdict['last']:.2f} against {100 * verdict['before']:.2f})")
            store['table'] = summarize(store, args.dataset, args.labeled)
            store['timing_table'] = timing_table(store)
            save(store, args.output)
            write_curves(store, os.path.splitext(args.output)[0] + '_curves.png')
    print(summarize(store, args.dataset, args.labeled))
    print(timing_table(store))


if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == '_train':
        train_one(**json.loads(sys.argv[2]))
    else:
        main()
