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
    flat = torch.cat([p.flatten() for p in teacher.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        torch.save(torch.stack(gathered), result_file)
    dist.destroy_process_group()


def test_teachers_stay_identical_across_ranks(tmp_path):
    result = str(tmp_path / 'teachers.pt')
    mp.spawn(_worker, args=(2, _free_port(), result), nprocs=2, join=True)
    teachers = torch.load(result)
    assert torch.equal(teachers[0], teachers[1])
