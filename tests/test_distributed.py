"""What multi-GPU training relies on, checked with two CPU processes and the gloo backend."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from nnunetv2_m3hl.teacher import broadcast_teacher, ema_update, make_teacher


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _end_rank() -> None:
    """Ends a rank whose results are written. No rank tears gloo down while another still works (a rank that exits
    early can abort the other's teardown), and the process leaves without the interpreter's teardown: after a clean
    ``destroy_process_group`` gloo on the CPU still aborts there now and then ('terminate called without an active
    exception', about 1 run in 15 here, with this package's code or without), which says nothing about the ranks."""
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def _save_every_ranks_parameters(parameters: list, world_size: int, rank: int, result_file: str) -> None:
    """Gather the flattened parameters of every rank; rank 0 saves them stacked. Ends the rank."""
    flat = torch.cat([p.flatten() for p in parameters])
    gathered = [torch.zeros_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        torch.save(torch.stack(gathered), result_file)
    _end_rank()


def _worker(rank: int, world_size: int, port: int, result_file: str):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    torch.manual_seed(rank)  # different initial weights on every rank
    student = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Conv2d(1, 4, 3), nn.InstanceNorm2d(4, affine=True),
                                                                nn.Conv2d(4, 2, 1)))
    teacher = make_teacher(student.module)
    teacher.apply(lambda m: [p.data.add_(rank) for p in m.parameters(recurse=False)])  # make them differ
    broadcast_teacher(teacher)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    for _ in range(3):
        x = torch.randn(2, 1, 8, 8) + rank  # every rank sees other data
        opt.zero_grad()
        student(x).pow(2).mean().backward()
        opt.step()
        ema_update(teacher, student.module, 0.99)
    _save_every_ranks_parameters(list(teacher.parameters()), world_size, rank, result_file)


def test_teachers_stay_identical_across_ranks(tmp_path):
    result = str(tmp_path / 'teachers.pt')
    mp.spawn(_worker, args=(2, _free_port(), result), nprocs=2, join=True)
    teachers = torch.load(result)
    assert torch.equal(teachers[0], teachers[1])


def _guarded_worker(rank: int, world_size: int, port: int, result_folder: str, nan_steps: tuple,
                    die_at_step: int, max_consecutive: int):
    """A DDP training loop with the trainer's guard; rank 1 sees NaN inputs at ``nan_steps``."""
    import datetime
    import json
    from nnunetv2_m3hl.step_guard import NonFiniteStepGuard
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=30))
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = NonFiniteStepGuard(max_consecutive)
    record = {'skipped': [], 'stopped_at': None}
    for step in range(8):
        if rank == 1 and step == die_at_step:
            os._exit(3)
        x = torch.randn(2, 1, 8, 8) + rank
        if rank == 1 and step in nan_steps:
            x[:] = float('nan')
        opt.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()  # on every rank, as in the trainer, so that DDP's all-reduces stay matched
        if not guard.all_ranks_finite(loss):
            record['skipped'].append(step)
            try:
                guard.step_skipped()
            except RuntimeError:
                record['stopped_at'] = step
                break
            continue
        guard.step_done()
        opt.step()
    record['weights'] = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
    with open(os.path.join(result_folder, f'rank{rank}.json'), 'w') as f:
        json.dump(record, f)
    _end_rank()


def _run_ranks(tmp_path, nan_steps=(), die_at_step=-1, max_consecutive=3, timeout=90):
    """Two gloo ranks; fails the test if they do not finish within ``timeout`` seconds."""
    import json
    import time
    context = mp.start_processes(_guarded_worker, args=(2, _free_port(), str(tmp_path), tuple(nan_steps),
                                                        die_at_step, max_consecutive),
                                 nprocs=2, join=False, start_method='spawn')
    deadline = time.time() + timeout
    try:
        while not context.join(timeout=1):
            assert time.time() < deadline, 'the ranks hang'
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
    return [json.load(open(tmp_path / f'rank{r}.json')) for r in range(2)]


def test_one_ranks_nan_makes_every_rank_skip_that_step(tmp_path):
    ranks = _run_ranks(tmp_path, nan_steps=(2, 5))
    assert ranks[0]['skipped'] == ranks[1]['skipped'] == [2, 5]
    assert ranks[0]['weights'] == ranks[1]['weights']  # no divergence: every update was the same all-reduce
    assert all(torch.isfinite(torch.tensor(r['weights'])).all() for r in ranks)


def test_every_rank_stops_at_the_same_step(tmp_path):
    ranks = _run_ranks(tmp_path, nan_steps=(1, 2, 3, 4), max_consecutive=3)
    assert ranks[0]['stopped_at'] == ranks[1]['stopped_at'] == 3


def test_a_dying_rank_ends_the_run_instead_of_hanging(tmp_path):
    """What nnU-Net's multi-GPU launch (torch.multiprocessing.spawn, join=True) meets when one rank dies: the
    join raises, the other rank is terminated while it waits in a collective; nothing hangs."""
    import pytest
    import time
    start = time.time()
    with pytest.raises(mp.ProcessExitedException, match='exit code 3'):
        _run_ranks(tmp_path, die_at_step=2)
    assert time.time() - start < 60


def _pretrained_start_worker(rank: int, world_size: int, port: int, pretrained_file: str, result_file: str):
    """Each rank starts from the same pretrained file the way the trainer does (whole model into student and
    teacher), then the teacher broadcast of on_train_start runs."""
    from nnunetv2_m3hl.pretrained import whole_model_state
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    torch.manual_seed(rank)  # every rank starts from other random weights
    student = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 1))
    teacher = make_teacher(student)
    state, _ = whole_model_state(torch.load(pretrained_file), student.state_dict(), {'background': 0, 'x': 1})
    student.load_state_dict(state)
    teacher.load_state_dict(student.state_dict())
    broadcast_teacher(teacher)
    _save_every_ranks_parameters(list(student.parameters()) + list(teacher.parameters()), world_size, rank,
                                 result_file)


def test_pretrained_start_is_the_same_on_every_rank(tmp_path):
    torch.manual_seed(99)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 2, 1))
    pretrained = tmp_path / 'pretrained.pth'
    torch.save({'network_weights': model.state_dict(),
                'init_args': {'dataset_json': {'labels': {'background': 0, 'x': 1}}}}, pretrained)
    result = str(tmp_path / 'states.pt')
    mp.spawn(_pretrained_start_worker, args=(2, _free_port(), str(pretrained), result), nprocs=2, join=True)
    states = torch.load(result)
    expected = torch.cat([p.flatten() for p in model.parameters()] * 2)
    assert torch.equal(states[0], expected) and torch.equal(states[1], expected)
