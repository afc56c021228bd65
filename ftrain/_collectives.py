"""What the epoch functions ask of the processes training together: one sum per log interval,
and an agreement on how many batches each process has."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from ._state import TrainState

__all__ = ["agree_on_batches", "reducer"]


def reducer(state: TrainState) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The strategy's sum over processes, or None on one process (nothing to reduce)."""
    if state.world_size == 1:
        return None
    return state.strategy.reduce_sum


def agree_on_batches(state: TrainState, count: int, where: str, *, equal: bool) -> int:
    """Check across processes that no rank's loader is empty (and, for training, that all have
    the same number of batches, or the collectives would hang); return the largest count."""
    table = torch.tensor([count, -count], dtype=torch.float64, device=state.device)
    # The largest and the smallest count in one collective: MAX over (count, -count).
    dist.all_reduce(table, op=dist.ReduceOp.MAX)
    most, least = int(table[0]), int(-table[1])
    if least == 0:
        msg = (
            f"`loader` passed to `{where}` yields no batches on at least one process (batches "
            f"per process range from {least} to {most}). Every process needs data: use a "
            "DataLoader over a map-style dataset (ftrain splits it) or give each rank its share."
        )
        raise ValueError(msg)
    if equal and least != most:
        msg = (
            f"`loader` passed to `{where}` yields {least} to {most} batches on different "
            "processes; training needs the same count everywhere (collectives would hang). Use a "
            "DataLoader over a map-style dataset so ftrain can split it evenly."
        )
        raise ValueError(msg)
    return most
