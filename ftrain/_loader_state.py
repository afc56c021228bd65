"""Loaders that keep their own position: saved in checkpoints, restored instead of re-iterated.

A *position keeper* is an object with ``state_dict()`` and ``load_state_dict(d)``: the loader
itself (torchdata's ``StatefulDataLoader``, or any loader with that protocol), or the iterable
dataset of a single-process `DataLoader` (``num_workers=0``: its position lives in this process).

How the position travels, since a checkpoint is written by a callback that sees only the state:

- `train_epoch` calls `attach_loader` first. It records the keeper in ``state.train_loader``
  (never checkpointed itself) and, when ``state.loader_state`` holds a position read by `load`,
  hands it to ``keeper.load_state_dict`` and clears it. The epoch then iterates the loader as it
  is: it continues where the position says, so nothing already trained on is read again.
- `save` asks ``state.train_loader.state_dict()`` (every process its own, gathered to the one
  that writes) and stores the positions by rank; `load` puts this process's back in
  ``state.loader_state``.

Loaders without a keeper are skipped forward by iterating them (`start_epoch`), as before.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch.utils.data import DataLoader, IterableDataset

from ._state import TrainState, set_progress

__all__ = ["attach_loader", "position_keeper"]


def _stateful(obj: object) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(
        getattr(obj, "load_state_dict", None)
    )


def position_keeper(loader: Any) -> Any | None:
    """The object whose ``state_dict()`` is ``loader``'s position, or None when there is none.

    The loader itself when it has ``state_dict``/``load_state_dict``; else the dataset of a
    `DataLoader` with ``num_workers=0`` over an `IterableDataset` that has them (with worker
    processes, the dataset's position lives in the workers, out of reach).
    """
    if _stateful(loader):
        return loader
    if (
        isinstance(loader, DataLoader)
        and loader.num_workers == 0
        and isinstance(loader.dataset, IterableDataset)
        and _stateful(loader.dataset)
    ):
        return loader.dataset
    return None


def attach_loader(state: TrainState, loader: Any) -> tuple[TrainState, bool]:
    """Record ``loader``'s keeper in the state and restore a saved position into it.

    Returns:
        ``(state, positioned)``: ``positioned`` is True when the loader now stands where the run
        does (its position was restored, or it is the keeper that trained the epoch so far), so
        the caller must not skip batches; False for loaders without a keeper, or a new keeper
        met mid-epoch with no position to restore (those are skipped forward by iterating).
    """
    keeper = position_keeper(loader)
    pending = state.loader_state
    if keeper is None:
        if pending is not None:
            warnings.warn(
                "The checkpoint holds the train loader's position, but this loader keeps none "
                f"({type(loader).__name__} has no state_dict()/load_state_dict()); it is skipped "
                "forward by iterating instead.",
                stacklevel=3,
            )
        if pending is None and state.train_loader is None:
            return state, False
        return set_progress(state, train_loader=None, loader_state=None), False
    if pending is not None:
        keeper.load_state_dict(pending)
    elif state.epoch_batch and state.train_loader is keeper:
        # The same loader continues its run in this process: a new iterator would start a new
        # epoch, so hand it its own position back.
        keeper.load_state_dict(keeper.state_dict())
    elif state.epoch_batch:
        return set_progress(state, train_loader=keeper), False
    return set_progress(state, train_loader=keeper, loader_state=None), True
