"""What the epoch functions ask of the processes training together: one sum per log interval,
and an agreement on how many batches each process has."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from ._state import TrainState

__all__ = ["agree_on_batches", "in_lockstep", "reducer"]

_END = object()


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


def in_lockstep(state: TrainState, batches: Iterable[Any], where: str) -> Iterator[Any]:
    """Yield ``batches`` while every process still has one, for a loader without a length.

    Such a loader cannot be counted up front, so before each batch the processes agree that all
    of them have one: one scalar collective and one host read per batch, paid only by loaders
    without ``len()`` on several processes. When some run out and others do not, every process
    raises the same clear error, instead of the collectives hanging or gloo aborting.
    """
    index = 0
    iterator = iter(batches)
    while True:
        batch = next(iterator, _END)
        have = 0.0 if batch is _END else 1.0
        table = torch.tensor([have, -have], dtype=torch.float64, device=state.device)
        dist.all_reduce(table, op=dist.ReduceOp.MAX)  # the most and the least, in one collective
        most, least = float(table[0]), -float(table[1])
        if most == 0.0:
            return
        if least == 0.0:
            msg = (
                f"`loader` passed to `{where}` has no len() and ran out after {index} batches on "
                "some processes but not on others; training needs the same number of batches on "
                "every process (its collectives would hang). Give every process an equal share, "
                "or use a DataLoader over a map-style dataset, which ftrain splits evenly."
            )
            raise ValueError(msg)
        index += 1
        yield batch
