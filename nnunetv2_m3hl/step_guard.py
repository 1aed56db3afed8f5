"""Skipping steps whose loss is not finite, in agreement across DDP ranks.

A rank that skips ``backward()`` while the others go ahead leaves DDP's gradient all-reduces unmatched: the
run hangs or pairs step k of one rank with step k+1 of another. So every rank runs the backward, the ranks then
agree (one all-reduce of a finiteness flag) and all drop the step's gradients, or all step; the count of skipped
steps in a row, and the stop it triggers, are therefore the same on every rank.
"""
import torch
from torch import distributed as dist


class NonFiniteStepGuard:
    def __init__(self, max_consecutive: int):
        self.max_consecutive = max_consecutive
        self.consecutive = 0

    @staticmethod
    def all_ranks_finite(loss: torch.Tensor) -> bool:
        """True when the loss is finite on this rank and, under DDP, on every other rank."""
        finite = torch.isfinite(loss.detach()).all().to(torch.float32).reshape(1)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item() > 0)

    def step_done(self) -> None:
        self.consecutive = 0

    def step_skipped(self) -> None:
        """Count a skipped step; raise once ``max_consecutive`` were skipped in a row."""
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"{self.consecutive} consecutive steps had a non-finite loss (on this rank or another); training "
                f"stopped. Check the input data (NaN/inf voxels in the preprocessed cases) and lower the learning "
                f"rate, or resume from the last checkpoint with --c.")
