"""Counting the tensor operations a piece of code dispatches: on a GPU each is a kernel launch, so for the
small kernels of the M3HL step's bookkeeping their number, not their size, sets the cost. The count is the same
on any device, so it can be taken on a CPU."""
from collections import defaultdict
from typing import Callable

from torch.utils._python_dispatch import TorchDispatchMode


class OperationCounter(TorchDispatchMode):
    """Counts the operations that reach the backends, views left out (they launch no kernel), under the phase
    label that ``labelled`` functions set while they run."""

    def __init__(self):
        super().__init__()
        self.counts = defaultdict(int)
        self.phase = 'other'

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.counts[self.phase] += 1
        return func(*args, **(kwargs or {}))

    def labelled(self, phase: str, fn: Callable) -> Callable:
        """``fn`` with its operations counted under ``phase``."""
        return in_phase(self, phase, fn)


def in_phase(recorder, phase: str, fn: Callable) -> Callable:
    """``fn`` with ``recorder.phase`` set to ``phase`` while it runs (whatever the recorder counts is then
    attributed to that phase)."""
    def wrapped(*args, **kwargs):
        previous, recorder.phase = recorder.phase, phase
        try:
            return fn(*args, **kwargs)
        finally:
            recorder.phase = previous
    return wrapped


def count_operations(fn: Callable[[], object]) -> int:
    """Operations dispatched by one call of ``fn``."""
    with OperationCounter() as counter:
        fn()
    return counter.count
