"""The lineage of a `TrainState`'s weights and the hot path's unvalidated record copies.

Every record that holds the same live weights shares one `Lineage`; `advance` consumes a record
(bumping the version, so every older record is stale) and `set_progress` changes only the loop's
bookkeeping. Both copy the record without validation (see `_copy`). `TrainState` itself, and
`check_live`, are in ``_state.py``, which re-exports these names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._errors import StaleStateError

if TYPE_CHECKING:
    from ._state import TrainState

__all__ = ["Lineage", "advance", "raise_stale", "set_progress"]


class Lineage:
    """The version counter shared by every record that holds the same live weights.

    Records made by `replace` share it with their source and stay live together; a function that
    advances the weights bumps `version`, which makes every record of the older version stale.
    """

    __slots__ = ("consumed_at_step", "consumed_by", "version")

    def __init__(self) -> None:
        self.version = 0
        self.consumed_by = ""
        self.consumed_at_step = -1


# The hot path's copy of the record: every step makes a new record, and attrs.evolve re-runs all
# validators (~6 us). `_copy` copies the instance dict instead (~0.6 us), skipping validation,
# because only ftrain's own code calls it, with values it computed itself; users go through
# `replace`. The record is a dict-backed (not slotted) frozen class so that this copy is one
# C-level dict update; writing `new.__dict__` directly bypasses the frozen `__setattr__` (as
# attrs' own generated __init__ does).
_new = object.__new__


def _copy(state: TrainState, changes: Mapping[str, Any]) -> TrainState:
    """The one unvalidated copy of a record: ``state`` with ``changes`` applied."""
    new = _new(type(state))
    d = new.__dict__
    d.update(state.__dict__)
    d.update(changes)
    return new


def advance(state: TrainState, by: str, **changes: Any) -> TrainState:
    """Consume ``state`` (``by`` names the consumer) and return the next live record.

    Every record of ``state``'s weights becomes stale; the returned one, with ``changes``
    applied, is the only live one. For functions that change the weights (steps, `place`, `load`).
    """
    lineage = state._lineage
    if state._version != lineage.version:
        raise_stale(state, by)
    lineage.version += 1
    lineage.consumed_by = by
    lineage.consumed_at_step = state.step
    changes["_version"] = lineage.version
    return _copy(state, changes)


def set_progress(state: TrainState, **changes: Any) -> TrainState:
    """``state`` with the loop's bookkeeping fields changed (epoch position, totals, stop flag).

    Unvalidated like `advance`, but consumes nothing: the weights are the same, so the new
    record shares ``state``'s lineage and both stay live.
    """
    return _copy(state, changes)


def raise_stale(state: TrainState, where: str) -> None:
    """Raise `StaleStateError` for ``state``, a record whose weights ``where`` was given after
    a later step advanced them."""
    lineage = state._lineage
    msg = (
        f"`state` passed to `{where}` is stale: its weights were advanced by "
        f"`{lineage.consumed_by}` at step {lineage.consumed_at_step} (this record is version "
        f"{state._version}, the weights are now at version {lineage.version}). ftrain updates "
        "weights in place, so use the state that call returned; to keep the old weights, take a "
        "copy first with `ftrain.fork(state)`."
    )
    raise StaleStateError(msg)
