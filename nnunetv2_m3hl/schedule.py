"""When the teacher's terms enter the loss, and how fast its EMA moves: pure functions of the mixing step.

The terms that come from the teacher are the pseudo-labeled regions of the mixed targets (weight ``u_weight``)
and the feature consistency (``L_high``, ``L_low``). An untrained teacher's pseudo-labels are noise, so the
schedules here keep those terms small until the teacher has learnt something:

- a sigmoid ramp-up ``exp(-5 (1 - t)^2)`` (Laine & Aila, ICLR 2017; the weight schedule of the mean-teacher
  family, e.g. UA-MT and the SSL4MIS baselines);
- a join step: before it the teacher's terms weigh 0 (the student trains on the labeled regions of the mixed
  images only) while the teacher's EMA already follows the student;
- a warm-started EMA decay ``min(1 - 1 / (step + 1), decay)`` (Tarvainen & Valpola, NeurIPS 2017): the teacher is
  the plain average of the student's iterates until that average spans ``1 / (1 - decay)`` steps, so the random
  weights it started from do not linger (with a constant decay of 0.99 they still make up 37% of the teacher
  after 100 steps).

And when a supervised warm-up may end: once the student knows every class, or supervision has stopped helping.
"""
import math
from typing import Sequence

import numpy as np


def sigmoid_rampup(step: int, ramp_steps: int) -> float:
    """``exp(-5 (1 - t)^2)`` with ``t = step / ramp_steps`` clipped to [0, 1]; 1 when ``ramp_steps`` is 0."""
    if ramp_steps <= 0:
        return 1.0
    t = min(max(step / ramp_steps, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)


def teacher_terms_scale(mixing_step: int, join_step: int = 0, ramp_steps: int = 0) -> float:
    """Factor of the teacher's terms at ``mixing_step`` (0 = the first mixing step): 0 before ``join_step``,
    then a sigmoid ramp over ``ramp_steps`` counted from ``join_step``."""
    if mixing_step < join_step:
        return 0.0
    return sigmoid_rampup(mixing_step - join_step, ramp_steps)


def ema_decay_at(ema_step: int, decay: float, warm_start: bool) -> float:
    """The decay of the EMA update after ``ema_step`` earlier updates: ``decay``, or with ``warm_start``
    ``min(1 - 1 / (ema_step + 1), decay)`` (the first update copies the student)."""
    if not warm_start:
        return decay
    return min(1.0 - 1.0 / (ema_step + 1), decay)


def ema_horizon(decay: float) -> int:
    """Steps an EMA of this decay averages over, ``1 / (1 - decay)`` (100 for 0.99)."""
    return int(round(1.0 / (1.0 - decay)))


def student_is_ready(validation_dice_per_class: Sequence[Sequence[float]], ema_dice: Sequence[float],
                     class_floor: float, patience: int, floor_epochs: int = 1) -> bool:
    """Whether a supervised warm-up may end after the latest epoch: every foreground class of the validation
    pseudo-Dice reaches ``class_floor`` in each of the latest ``floor_epochs`` epochs (the teacher, a copy of this
    student, then knows every class), or nnU-Net's EMA pseudo-Dice has not improved on its best for ``patience``
    epochs (supervision alone has stopped helping). With one foreground class the floor of 0.5 can be passed after
    the first epoch (CVC-ClinicDB); ``floor_epochs`` > 1 asks the student to hold it."""
    if not ema_dice:
        return False
    latest = [np.nan_to_num(np.asarray(d, dtype=float), nan=0.0) for d in validation_dice_per_class[-floor_epochs:]]
    if len(latest) == floor_epochs and all(d.size and np.all(d >= class_floor) for d in latest):
        return True
    ema = np.asarray(ema_dice, dtype=float)
    best_epoch = int(np.nanargmax(ema)) if np.isfinite(ema).any() else 0
    return len(ema) - 1 - best_epoch >= patience
