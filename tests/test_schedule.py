"""Schedules of the teacher's terms and of its EMA: the pure functions, and what they do inside the step."""
import copy
import math

import numpy as np
import pytest
import torch

from nnunetv2_m3hl.schedule import ema_decay_at, ema_horizon, sigmoid_rampup, teacher_terms_scale
from test_trainer_step import batches, make_trainer


def test_sigmoid_rampup_runs_from_exp_minus_5_to_1():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(100, 100) == 1.0 and sigmoid_rampup(500, 100) == 1.0
    assert sigmoid_rampup(0, 0) == 1.0
    values = [sigmoid_rampup(s, 40) for s in range(41)]
    assert all(b > a for a, b in zip(values, values[1:]))


def test_teacher_terms_wait_for_the_join_then_ramp():
    assert [teacher_terms_scale(s, join_step=3) for s in range(5)] == [0, 0, 0, 1, 1]
    assert teacher_terms_scale(2, join_step=3, ramp_steps=10) == 0
    assert teacher_terms_scale(3, join_step=3, ramp_steps=10) == pytest.approx(math.exp(-5))
    assert teacher_terms_scale(13, join_step=3, ramp_steps=10) == 1.0
    assert teacher_terms_scale(0) == 1.0  # the reference step


def test_warm_started_ema_averages_the_student_iterates():
    assert ema_decay_at(0, 0.99, warm_start=False) == 0.99
    assert ema_decay_at(0, 0.99, warm_start=True) == 0.0  # the first update copies the student
    assert ema_decay_at(9, 0.99, warm_start=True) == pytest.approx(0.9)
    assert ema_decay_at(1000, 0.99, warm_start=True) == 0.99
    # with these decays the teacher is exactly the mean of the student's iterates
    teacher, iterates = 0.0, [3.0, 5.0, 10.0, -2.0]
    for step, student in enumerate(iterates):
        d = ema_decay_at(step, 0.99, warm_start=True)
        teacher = d * teacher + (1 - d) * student
    assert teacher == pytest.approx(np.mean(iterates))
    assert ema_horizon(0.99) == 100


def _student_after_one_step(trainer, labeled, unlabeled, teacher_noise: float):
    with torch.no_grad():
        for p in trainer.teacher.parameters():
            p.add_(teacher_noise * torch.randn_like(p))
    torch.manual_seed(1)  # same masks in both runs
    out = trainer.m3hl_step(labeled['data'], labeled['target'], unlabeled)
    return [p.detach().clone() for p in trainer.network.parameters()], out


@pytest.mark.parametrize('join_steps', [0, 1])
def test_before_the_join_the_teacher_cannot_move_the_student(nnunet_env, planned_2d, join_steps):
    trainer = make_trainer(planned_2d)
    labeled, unlabeled = batches(trainer)
    trainer.teacher_join_steps = join_steps
    start = [copy.deepcopy(m.state_dict()) for m in (trainer.network, trainer.teacher, trainer.optimizer)]
    students = []
    for noise in (0.0, 0.5):
        for m, state in zip((trainer.network, trainer.teacher, trainer.optimizer), start):
            m.load_state_dict(copy.deepcopy(state))
        trainer.mixing_step = 0
        students.append(_student_after_one_step(trainer, labeled, unlabeled, noise)[0])
    same = all(torch.equal(a, b) for a, b in zip(*students))
    assert same == (join_steps == 1)


def test_late_teacher_variant_starts_from_the_student_and_joins_after_one_horizon(nnunet_env, planned_2d):
    trainer = make_trainer(planned_2d, 'M3HLTrainer_test_lateTeacher')
    assert trainer.teacher_join_steps == 100 and trainer.teacher_ema_warm_start
    labeled, unlabeled = batches(trainer)
    _, out = _student_after_one_step(trainer, labeled, unlabeled, teacher_noise=0.5)
    assert np.isfinite(out['loss'])
    student = trainer.network.state_dict()
    # the warm-started EMA's first update is a copy: nothing of the (perturbed) start is left
    assert all(torch.equal(v, student[k]) for k, v in trainer.teacher.state_dict().items())
    assert trainer.mixing_step == 1 and trainer.teacher_terms_scale() == 0.0
    trainer.mixing_step = 100
    assert trainer.teacher_terms_scale() == 1.0


def test_schedule_position_follows_the_epoch_after_a_resume(nnunet_env, planned_2d):
    trainer = make_trainer(planned_2d)
    trainer.num_epochs, trainer.num_iterations_per_epoch = 10, 7
    trainer.supervised_warmup_fraction = 0.2
    trainer.teacher_rampup_fraction = 0.5
    trainer.dataloader_train = trainer.dataloader_val = None
    trainer.current_epoch = 5
    trainer.on_train_epoch_start()
    assert trainer.mixing_step == 3 * 7
    ramp_steps = round(0.5 * 8 * 7)
    assert trainer.teacher_terms_scale() == pytest.approx(sigmoid_rampup(21, ramp_steps))



def test_the_default_warms_up_until_ready_and_the_compared_schedules_keep_their_own(nnunet_env, planned_2d):
    from nnunetv2.run.run_training import get_trainer_from_args
    names = ('M3HLTrainer', 'M3HLTrainer_readyWarmup', 'M3HLTrainer_readyWarmup_uncapped', 'M3HLTrainer_reference',
             'M3HLTrainer_warmup', 'M3HLTrainer_warmup10', 'M3HLTrainer_rampup', 'M3HLTrainer_lateTeacher',
             'M3HLTrainer_confidence95', 'M3HLTrainer_weakTeacherView', 'M3HLTrainer_2epochs', 'BCPTrainer')
    trainers = {n: get_trainer_from_args('901', '2d', 0, n, device=torch.device('cpu')) for n in names}
    # until the student is ready, the warm-up's cap: all of nnU-Net's 1000 epochs for the default, half for the
    # capped variant; the fixed schedules their share
    assert {n: t.supervised_warmup_epochs for n, t in trainers.items()} == {
        'M3HLTrainer': 1000, 'M3HLTrainer_readyWarmup': 500, 'M3HLTrainer_readyWarmup_uncapped': 1000,
        'M3HLTrainer_reference': 0, 'M3HLTrainer_warmup': 200, 'M3HLTrainer_warmup10': 100, 'M3HLTrainer_rampup': 0,
        'M3HLTrainer_lateTeacher': 0, 'M3HLTrainer_confidence95': 200, 'M3HLTrainer_weakTeacherView': 200,
        'M3HLTrainer_2epochs': 1, 'BCPTrainer': 0}
    assert trainers['M3HLTrainer'].m3hl_settings() == trainers['M3HLTrainer_readyWarmup_uncapped'].m3hl_settings()
    assert trainers['M3HLTrainer_rampup'].teacher_rampup_fraction == 0.5
    assert trainers['M3HLTrainer_lateTeacher'].teacher_join_steps == 100
    default = trainers['M3HLTrainer']
    assert default.mixing_steps_before(1000) == 0  # a student that never gets ready trains as nnU-Net
    default.warmup_ended_at = 30
    assert default.supervised_warmup_epochs == 30 and default.mixing_steps_before(31) == default.num_iterations_per_epoch


def test_the_student_is_ready_when_every_class_knows_or_supervision_stalls():
    from nnunetv2_m3hl.schedule import student_is_ready
    assert not student_is_ready([], [], 0.5, 3)
    assert student_is_ready([[0.2, 0.3], [0.6, 0.7]], [0.1, 0.2], 0.5, 3)
    assert not student_is_ready([[0.2, 0.3], [0.0, 0.9]], [0.1, 0.2], 0.5, 3)  # one class not learnt yet
    assert not student_is_ready([[0.0, 0.9]] * 4, [0.1, 0.3, 0.29, 0.28], 0.5, 3)  # best 2 epochs ago
    assert student_is_ready([[0.0, 0.9]] * 5, [0.1, 0.3, 0.29, 0.28, 0.27], 0.5, 3)
    assert not student_is_ready([[float('nan'), 0.9]], [0.4], 0.5, 3)


def test_a_held_floor_needs_every_class_at_the_floor_for_that_many_epochs():
    from nnunetv2_m3hl.schedule import student_is_ready
    stalled_never = [0.1, 0.2, 0.3]  # a new best every epoch: only the floor can end the warm-up
    assert student_is_ready([[0.1], [0.6], [0.7]], stalled_never, 0.5, 5, floor_epochs=1)
    assert not student_is_ready([[0.1], [0.6], [0.7]], stalled_never, 0.5, 5, floor_epochs=3)  # the first is below
    assert student_is_ready([[0.6], [0.6], [0.7]], stalled_never, 0.5, 5, floor_epochs=3)
    assert not student_is_ready([[0.6], [0.7]], stalled_never[:2], 0.5, 5, floor_epochs=3)  # too few epochs yet
    assert not student_is_ready([[0.6], [0.7], [0.4]], stalled_never, 0.5, 5, floor_epochs=2)  # dropped below
    # the patience rule is unchanged by a held floor
    assert student_is_ready([[0.1]] * 6, [0.3, 0.2, 0.2, 0.2, 0.2, 0.2], 0.5, 5, floor_epochs=5)
