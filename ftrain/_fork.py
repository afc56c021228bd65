"""`fork`: an independent deep copy of a state, with a lineage of its own."""

from __future__ import annotations

import copy
from typing import Any

import attrs

from ._errors import PlacementError
from ._state import Lineage, TrainState, check_live

__all__ = ["fork"]


def fork(state: TrainState) -> TrainState:
    """Return an independent deep copy of ``state``: model, optimizers, schedulers, scaler, memory,
    extras, carry and averaged weights.

    The copy and the original can be trained separately; neither consumes the other. Use it to
    keep a snapshot before a step (``before = fork(state)``) or to branch an experiment.

    Args:
        state: a live state.

    Returns:
        A new live state with its own weights and optimizer buffers; ``state`` is not consumed.

    Example:
        >>> import torch, ftrain
        >>> state = ftrain.testing.toy_state()
        >>> snapshot = ftrain.fork(state)
        >>> state, _ = ftrain.train_step(state, ftrain.testing.toy_batch())
        >>> snapshot.is_live, snapshot.step, state.step
        (True, 0, 1)
    """
    check_live(state, "fork")
    if state.world_size > 1:
        msg = (
            "`fork` of a distributed state is not supported: its model is wrapped or sharded "
            f"by {state.strategy!r}. Fork before `place`, or save a checkpoint instead."
        )
        raise PlacementError(msg)
    memo: dict[int, Any] = {}
    model, phases, scaler, cb_state, extras, carry, averages = copy.deepcopy(
        (
            state.model,
            state.phases,
            state.scaler,
            dict(state.callback_state),
            dict(state.extras),
            state.carry,
            dict(state.averages),
        ),
        memo,
    )
    wrapped = None if state.wrapped is None else state.strategy.rewrap(model)
    if wrapped is None and state.wrapped is not None:
        msg = f"`fork` cannot re-create the wrapper of a state placed with {state.strategy!r}."
        raise PlacementError(msg)
    return attrs.evolve(
        state,
        model=model,
        phases=phases,
        scaler=scaler,
        callback_state=cb_state,
        extras=extras,
        carry=carry,
        averages=averages,  # type: ignore[arg-type]
        wrapped=wrapped,
        _lineage=Lineage(),
        _version=0,
    )
