"""Run state beyond the model and optimizer: averaged weights, the train loader's position by
rank, and the history of `fit`.

Averages are stored like the model: whole tensors on the CPU in a checkpoint file (gathered from
their shards under FSDP), or each process's shards in a shard directory, beside the model's.
`load` rebuilds every average as a copy of the template's model (so on the template's placement)
and fills it. Loader positions are plain data, one per rank: every process's position is
gathered to the one that writes, and each process takes its own back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .._averaging import KINDS, WeightAverage
from .._errors import CheckpointError
from ._records import decode, encode

if TYPE_CHECKING:
    from .._state import TrainState

__all__ = ["restore_runstate", "runstate_record"]


def runstate_record(state: TrainState, *, full: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The record's run-state entries, and (for a shard directory) the averages' shards.

    Every process must call it: gathering loader positions and whole tensors are collectives.
    """
    positions = _gather_positions(state)
    record: dict[str, Any] = {
        "history": encode(list(state.history), "history"),
        "loader": None if positions is None else encode(positions, "train loader position"),
        "averages": {},
    }
    shards: dict[str, Any] = {}
    for name in sorted(state.averages):
        average = state.averages[name]
        entry: dict[str, Any] = {"kind": average.kind, "count": average.count}
        if full:
            entry["tensors"] = {k: _whole(v) for k, v in average.tensors.items()}
        else:
            shards[name] = dict(average.tensors)
        record["averages"][name] = entry
    return record, shards


def restore_runstate(
    state: TrainState, data: dict[str, Any], where: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `advance` changes that restore ``data``'s run state into the template ``state``, and
    the averages a shard directory's load fills in place.

    Raises:
        CheckpointError: an average does not fit the template's model, or the loader positions
            were saved by another number of processes.
    """
    position = _rank_position(data.get("loader"), state, where)
    averages: dict[str, WeightAverage] = {}
    for name, saved in data.get("averages", {}).items():
        if saved.get("kind") not in KINDS:
            msg = f"Checkpoint {where!r} holds an average {name!r} of unknown kind."
            raise CheckpointError(msg)
        average = WeightAverage.of(state.model, saved["kind"])
        average.count = int(saved["count"])
        if "tensors" in saved:
            _fill(average, saved["tensors"], where, name)
        averages[name] = average
    changes = {
        "history": tuple(decode(data.get("history", []), "history")),
        "averages": averages,
        "loader_state": position,
        "train_loader": None,
    }
    return changes, {name: a.tensors for name, a in averages.items()}


def _whole(t: torch.Tensor) -> torch.Tensor:
    full = t.full_tensor() if hasattr(t, "full_tensor") else t  # a DTensor's shards, gathered
    return full.detach().cpu()


def _fill(average: WeightAverage, saved: dict[str, torch.Tensor], where: str, name: str) -> None:
    if set(saved) != set(average.tensors):
        diff = sorted(set(saved) ^ set(average.tensors))[:5]
        msg = (
            f"Checkpoint {where!r}: the average {name!r} does not fit the template's model "
            f"(entries in one and not the other: {diff})."
        )
        raise CheckpointError(msg)
    with torch.no_grad():
        for k, t in average.tensors.items():
            value = saved[k]
            if tuple(value.shape) != tuple(t.shape):
                msg = (
                    f"Checkpoint {where!r}: the average {name!r} has {k} of shape "
                    f"{tuple(value.shape)}, the template's model {tuple(t.shape)}."
                )
                raise CheckpointError(msg)
            if hasattr(t, "device_mesh"):  # a DTensor: this process keeps its own shard
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(
                    value.to(t.device),
                    t.device_mesh,
                    t.placements,  # type: ignore[attr-defined]
                    src_data_rank=None,
                )
            t.copy_(value)


def _gather_positions(state: TrainState) -> list[Any] | None:
    """Every process's train loader position, by rank; None when the loader keeps none."""
    keeper = state.train_loader
    position = None if keeper is None else keeper.state_dict()
    if state.world_size == 1:
        return None if position is None else [position]
    import torch.distributed as dist

    positions: list[Any] = [None] * state.world_size
    dist.all_gather_object(positions, position)
    return None if all(p is None for p in positions) else positions


def _rank_position(positions: list[Any] | None, state: TrainState, where: str) -> Any:
    if positions is None:
        return None
    if len(positions) != state.world_size:
        msg = (
            f"Checkpoint {where!r} holds the train loader positions of {len(positions)} "
            f"process(es), but this run has {state.world_size}: each position belongs to one "
            "rank's share of the data. Resume on the same number of processes."
        )
        raise CheckpointError(msg)
    return positions[state.rank]
