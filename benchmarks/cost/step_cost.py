"""Per-iteration cost of M3HLTrainer vs nnUNetTrainer on identical plans and batches, data loading
excluded, measured side by side (interleaved) in one process.

    python benchmarks/cost/step_cost.py                      # CPU, 2d and 3d_fullres
    python benchmarks/cost/step_cost.py --device cuda        # on a GPU
    python benchmarks/cost/step_cost.py --dataset 271 -c 2d [-p nnUNetPlans]   # any planned dataset

Without ``--dataset`` it writes a synthetic dataset into a temporary nnU-Net environment (or --workdir) and
plans it; with ``--dataset`` it uses the dataset as planned and preprocessed in the current nnUNet_raw /
nnUNet_preprocessed (its unlabeled scans are preprocessed first when needed), e.g. the converted ACDC (2d) and LA
(3d_fullres) benchmark datasets at their native plans.

For each configuration it reports: mean step time of both trainers and their ratio; a
breakdown of the M3HL step (teacher forward, pseudo-labels with connected components, masks and
mixing, student forward+backward, EMA); peak memory of each trainer (the process's peak RSS on the
CPU, max_memory_allocated during the steps on CUDA); and the batch throughput of the labeled+unlabeled loading pipeline vs
nnU-Net's labeled-only one with the same worker count.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))


# the function behind nnUNetv2_plan_and_preprocess, callable where console scripts are not installed
PLAN_AND_PREPROCESS = ('from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import '
                       'plan_and_preprocess_entry as main; main()')


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize()


def prepare(args, configuration: str) -> int:
    """The dataset id to measure on, planned and with its unlabeled scans preprocessed."""
    from nnunetv2_m3hl.unlabeled import preprocess_unlabeled
    if args.dataset is not None:
        from nnunetv2.paths import nnUNet_raw
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        if os.path.isdir(os.path.join(nnUNet_raw or '', maybe_convert_to_dataset_name(args.dataset))):
            preprocess_unlabeled(args.dataset, configuration, args.plans, num_processes=2, verbose=False)
        # else: a dataset carried as preprocessed only (benchmarks/gpu/subset_prepared.py), used as it is
        return int(args.dataset) if str(args.dataset).isdigit() else args.dataset
    return prepare_synthetic(args.workdir, configuration)


def prepare_synthetic(workdir: str, configuration: str) -> int:
    from dataset_conversion.synthetic import make_synthetic_dataset
    from nnunetv2_m3hl import trainer_path
    os.environ.update({'nnUNet_raw': f'{workdir}/raw', 'nnUNet_preprocessed': f'{workdir}/preprocessed',
                       'nnUNet_results': f'{workdir}/results', 'nnUNet_compile': os.environ.get('nnUNet_compile', 'f'),
                       'nnUNet_extTrainer': trainer_path()})
    dataset_id, shape = (931, (160, 160)) if configuration == '2d' else (932, (64, 64, 64))
    name = f'Dataset{dataset_id}_M3HLPhantom'
    if not os.path.isdir(f'{workdir}/preprocessed/{name}/nnUNetPlans_{configuration}'):
        if not os.path.isdir(f'{workdir}/raw/{name}'):
            make_synthetic_dataset(f'{workdir}/raw', dataset_id, n_labeled=5, n_unlabeled=8, n_test=0, shape=shape)
        subprocess.run([sys.executable, '-c', PLAN_AND_PREPROCESS, '-d', str(dataset_id), '-c', configuration,
                        '-np', '2', '-npfp', '2'], check=True, capture_output=True)
    from nnunetv2_m3hl.unlabeled import preprocess_unlabeled
    preprocess_unlabeled(dataset_id, configuration, num_processes=2, verbose=False)
    return dataset_id


def make_trainer(dataset_id, configuration, name, device, plans='nnUNetPlans'):
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args(str(dataset_id), configuration, 0, name, plans, device=device)
    trainer.initialize()
    trainer.network.train()
    return trainer


def timed(fn, device):
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def breakdown(trainer, x_l, target, x_u, device, repeats):
    """Time the phases of one M3HL step with the same package functions the trainer composes."""
    from nnunetv2_m3hl.features import high_level_loss, low_level_loss, unwrap_network
    from nnunetv2_m3hl.mixing import downsample_for_deep_supervision, mutual_mix, number_of_couples
    from nnunetv2_m3hl.teacher import ema_update, pseudo_labels_from_logits
    y_l = target[0]
    phases = {k: [] for k in ('teacher forward', 'pseudo-labels + LCC', 'masks + mixing',
                              'student forward + backward', 'EMA update')}
    for _ in range(repeats):
        state = {}

        def teacher():
            with torch.no_grad(), trainer._autocast():
                state['logits'] = trainer.teacher_network(x_u)
                state['t'] = trainer.teacher_tap.pop()

        def pseudo():
            state['pseudo'] = pseudo_labels_from_logits(state['logits'], trainer.largest_component)[1]

        def mix():
            masks = trainer.make_masks(number_of_couples(x_l.shape[0]), x_l.shape[2:], device)
            # targets and regions converted once, as the trainer does
            state['mixed'] = mutual_mix(x_l, y_l.long(), x_u, state['pseudo'], masks)
            state['ds'] = downsample_for_deep_supervision(
                [state['mixed'].targets, state['mixed'].from_unlabeled.bool()], trainer._get_deep_supervision_scales())

        def student():
            trainer.optimizer.zero_grad(set_to_none=True)
            with trainer._autocast():
                out = trainer.network(state['mixed'].images)
                s_high, s_low = trainer.student_tap.pop()
                t, r = [a for a, _ in state['ds']], [b for _, b in state['ds']]
                loss = trainer.mix_loss(out, t, r) + (high_level_loss(s_high, state['t'][0])
                                                      + low_level_loss(s_low, state['t'][1])) / 2
            (trainer.grad_scaler.scale(loss) if trainer.grad_scaler is not None else loss).backward()
            trainer.optimizer.zero_grad(set_to_none=True)  # timing only: no update

        def ema():
            ema_update(trainer.teacher, unwrap_network(trainer.network), trainer.ema_decay)

        for (name, fn) in zip(phases, (teacher, pseudo, mix, student, ema)):
            phases[name].append(timed(fn, device))
    return {k: float(np.median(v)) for k, v in phases.items()}


def peak_memory_child(args, trainer_name, cleanup_mode=None):
    """Peak memory of the steps of one trainer, measured in a fresh process so that the two don't mix."""
    cmd = [sys.executable, __file__, '--workdir', args.workdir, '--device', args.device, '--configurations',
           args.current, '--memory-of', trainer_name, '--steps', str(args.memory_steps), '-p', args.plans]
    if cleanup_mode is not None:
        cmd += ['--memory-cleanup-mode', cleanup_mode]
    if args.dataset is not None:
        cmd += ['--dataset', str(args.dataset)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])['peak_bytes']


def memory_of(args):
    device = torch.device(args.device)
    dataset_id = prepare(args, args.current)
    torch.backends.cudnn.benchmark = True
    trainer = make_trainer(dataset_id, args.current, args.memory_of, device, args.plans)
    if args.memory_cleanup_mode is not None:
        from nnunetv2_m3hl.overlap import PseudoLabelCleanup
        trainer.pseudo_label_cleanup = PseudoLabelCleanup(args.memory_cleanup_mode)
    labeled, unlabeled = fixed_batches(trainer)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    for _ in range(args.steps):
        step(trainer, labeled, unlabeled)
    sync(device)
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated() - base_cuda
    else:
        # whole-process peak RSS: the same setup for both trainers, so the ratio compares what the steps add
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({'peak_bytes': int(peak)}))


def fixed_batches(trainer):
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    labeled = next(trainer.dataloader_train)
    unlabeled = next(trainer.dataloader_unlabeled)['data'] if hasattr(trainer, 'dataloader_unlabeled') else None
    for loader in (trainer.dataloader_train, trainer.dataloader_val, getattr(trainer, 'dataloader_unlabeled', None)):
        if hasattr(loader, '_finish'):
            loader._finish()
    return labeled, unlabeled


def step(trainer, labeled, unlabeled):
    if unlabeled is None:
        return trainer.train_step(labeled)
    return trainer.m3hl_step(labeled['data'], labeled['target'], unlabeled)


def loader_throughput(trainer, n_batches):
    """Batches per second of the trainer's training pipeline (M3HL: one labeled + one unlabeled batch)."""
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    loaders = [trainer.dataloader_train] + ([trainer.dataloader_unlabeled]
                                            if hasattr(trainer, 'dataloader_unlabeled') else [])
    for loader in loaders:
        next(loader)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        for loader in loaders:
            next(loader)
    rate = n_batches / (time.perf_counter() - t0)
    for loader in loaders + [trainer.dataloader_val]:
        if hasattr(loader, '_finish'):
            loader._finish()
    return rate


def benchmark(args, configuration):
    from nnunetv2_m3hl.features import is_compiled
    device = torch.device(args.device)
    dataset_id = prepare(args, configuration)
    torch.backends.cudnn.benchmark = True  # as nnUNetv2_train sets it; the warm-up steps pay for the autotuning
    torch.manual_seed(0)
    base = make_trainer(dataset_id, configuration, 'nnUNetTrainer', device, args.plans)
    m3hl = make_trainer(dataset_id, configuration, 'M3HLTrainer', device, args.plans)
    labeled, unlabeled = fixed_batches(m3hl)
    for _ in range(args.warmup):
        step(base, labeled, None)
        step(m3hl, labeled, unlabeled)
    from nnunetv2_m3hl.overlap import PseudoLabelCleanup
    cleanups = {mode: PseudoLabelCleanup(mode) for mode in args.cleanup_modes}
    teacher_in_line = PseudoLabelCleanup('sync')
    t_base, t_by_mode, t_without_cleanup = [], {mode: [] for mode in cleanups}, []
    for _ in range(args.steps):  # interleaved, so that load on the machine hits all alike
        t_base.append(timed(lambda: step(base, labeled, None), device))
        for mode, cleanup in cleanups.items():
            m3hl.pseudo_label_cleanup = cleanup
            t_by_mode[mode].append(timed(lambda: step(m3hl, labeled, unlabeled), device))
        # the same step without the largest-component cleanup (the teacher in line): what a perfectly hidden
        # cleanup would cost
        m3hl.pseudo_label_cleanup = teacher_in_line
        m3hl.largest_component = False
        t_without_cleanup.append(timed(lambda: step(m3hl, labeled, unlabeled), device))
        m3hl.largest_component = True
    for cleanup in cleanups.values():
        cleanup.close()
    m3hl.pseudo_label_cleanup = teacher_in_line
    t_m3hl = t_by_mode[args.cleanup_modes[0]]
    x_l = labeled['data'].to(device)
    target = [t.to(device) for t in labeled['target']] if isinstance(labeled['target'], list) \
        else [labeled['target'].to(device)]
    phases = breakdown(m3hl, x_l, target, unlabeled.to(device), device, max(3, args.steps // 2))
    result = {
        'dataset': 'synthetic' if args.dataset is None else m3hl.plans_manager.dataset_name,
        'plans': args.plans, 'configuration': configuration, 'device': args.device,
        'patch_size': list(m3hl.configuration_manager.patch_size), 'batch_size': m3hl.batch_size,
        'torch_compile': {'nnUNetTrainer': is_compiled(base.network), 'M3HLTrainer student': is_compiled(m3hl.network),
                          'M3HLTrainer teacher': is_compiled(m3hl.teacher_network)},
        'nnUNetTrainer_step_s': float(np.median(t_base)), 'M3HLTrainer_step_s': float(np.median(t_m3hl)),
        'step_ratio': float(np.median(t_m3hl) / np.median(t_base)),
        'M3HLTrainer_step_s_by_cleanup_mode': {m: float(np.median(t)) for m, t in t_by_mode.items()},
        'step_ratio_by_cleanup_mode': {m: float(np.median(t) / np.median(t_base)) for m, t in t_by_mode.items()},
        'M3HLTrainer_step_s_without_cleanup': float(np.median(t_without_cleanup)),
        # the share of each mode's step that its cleanup still adds (0: completely hidden)
        'visible_cleanup_share_by_mode': {m: float(1 - np.median(t_without_cleanup) / np.median(t))
                                          for m, t in t_by_mode.items()},
        'breakdown_s': phases,
        'breakdown_share': {k: v / sum(phases.values()) for k, v in phases.items()},
    }
    args.current = configuration
    if not args.skip_memory:
        mem_base = peak_memory_child(args, 'nnUNetTrainer')
        mem_m3hl = peak_memory_child(args, 'M3HLTrainer')
        result.update({'peak_memory_nnUNetTrainer_MB': mem_base / 2 ** 20,
                       'peak_memory_M3HLTrainer_MB': mem_m3hl / 2 ** 20, 'memory_ratio': mem_m3hl / mem_base})
        by_mode = {mode: peak_memory_child(args, 'M3HLTrainer', mode) for mode in args.memory_cleanup_modes}
        if by_mode:
            result['memory_ratio_by_cleanup_mode'] = {mode: peak / mem_base for mode, peak in by_mode.items()}
    if not args.skip_loading:
        result['loading_batches_per_s_nnUNetTrainer'] = loader_throughput(base, args.loader_batches)
        result['loading_batches_per_s_M3HLTrainer'] = loader_throughput(m3hl, args.loader_batches)
        result['nnUNet_n_proc_DA'] = os.environ.get('nnUNet_n_proc_DA')
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    p.add_argument('--configurations', '-c', nargs='+', default=['2d', '3d_fullres'])
    p.add_argument('--dataset', default=None, help='a planned dataset (name or id) instead of the synthetic one')
    p.add_argument('-p', '--plans', default='nnUNetPlans', help='plans identifier (with --dataset)')
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--cleanup-modes', nargs='+', default=['sync'],
                   help="pseudo-label cleanup modes to time (sync, side_stream, host_thread); the first one gives "
                        "the headline ratio")
    p.add_argument('--memory-steps', type=int, default=3)
    p.add_argument('--memory-cleanup-modes', nargs='*', default=[],
                   help="cleanup modes whose peak memory is measured too (besides the trainer's default)")
    p.add_argument('--memory-cleanup-mode', default=None, help=argparse.SUPPRESS)
    p.add_argument('--loader-batches', type=int, default=20)
    p.add_argument('--workdir', default=None, help='reuse an nnU-Net environment across runs')
    p.add_argument('--skip-memory', action='store_true')
    p.add_argument('--skip-loading', action='store_true')
    p.add_argument('--memory-of', default=None, help=argparse.SUPPRESS)
    p.add_argument('-o', default=None, help='write the results as JSON')
    args = p.parse_args()
    os.environ.setdefault('nnUNet_n_proc_DA', '2')
    args.workdir = args.workdir or tempfile.mkdtemp(prefix='m3hl-step-cost-')
    if args.memory_of:
        args.current = args.configurations[0]
        memory_of(args)
        return
    results = []
    for configuration in args.configurations:
        r = benchmark(args, configuration)
        results.append(r)
        print(json.dumps(r, indent=1), flush=True)
    print('\n| dataset | config | device | patch x batch | nnUNetTrainer s/step | M3HLTrainer s/step | ratio | teacher fwd | '
          'pseudo+LCC | masks+mix | student f+b | EMA | memory ratio |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    for r in results:
        s = r['breakdown_share']
        print(f"| {r['dataset']} | {r['configuration']} | {r['device']} | {r['patch_size']} x {r['batch_size']} | "
              f"{r['nnUNetTrainer_step_s']:.3f} | {r['M3HLTrainer_step_s']:.3f} | {r['step_ratio']:.2f} | "
              f"{s['teacher forward']:.1%} | {s['pseudo-labels + LCC']:.1%} | {s['masks + mixing']:.1%} | "
              f"{s['student forward + backward']:.1%} | {s['EMA update']:.1%} | "
              f"{r.get('memory_ratio', float('nan')):.2f} |")
    if args.o:
        with open(args.o, 'w') as f:
            json.dump(results, f, indent=1)


if __name__ == '__main__':
    main()
