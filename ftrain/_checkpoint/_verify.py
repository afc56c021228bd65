"""Everything `load` checks before it copies anything into the template.

A checksum says a file is what was written; it does not say that what was written is complete
or fits the template. `check_record` refuses a record with a section missing or of the wrong
type, and `check_kinds` a template whose optimizer, scheduler or scaler is of another class than
the saved one (an SGD checkpoint's learning rate and keys must never land in an AdamW). Both run
before the first tensor is copied, so a refused `load` leaves the template as it was.

Kinds are kept by role name (``"optimizer"``, ``"scheduler"``, ``"scaler"``, and one entry per
named optimizer where a state has several), so the check covers any number of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import CheckpointError

if TYPE_CHECKING:
    from .._state import TrainState

__all__ = ["check_kinds", "check_record", "kind", "state_kinds"]

# section -> (the types it may have, whether a shard directory's record has it too)
_SECTIONS: dict[str, tuple[tuple[type, ...], bool]] = {
    "meta": ((dict,), True),
    "model": ((dict,), False),
    "optimizers": ((dict,), False),
    "schedulers": ((dict,), True),
    "scaler": ((dict, type(None)), True),
    "callback_state": ((dict,), True),
}
_COUNTERS = ("step", "epoch", "epoch_batch", "micro_step", "seed")


def kind(obj: object) -> str | None:
    """The class name that must match between a checkpoint and a template (None: absent)."""
    return None if obj is None else type(obj).__qualname__


def state_kinds(state: TrainState) -> dict[str, str | None]:
    """The kind of each stateful object of ``state``, by role."""
    kinds = {"scaler": kind(state.scaler)}
    for phase in state.phases:
        suffix = f"[{phase.name!r}]" if phase.name else ""
        kinds["optimizer" + suffix] = kind(phase.optimizer)
        kinds["scheduler" + suffix] = kind(phase.scheduler)
    return kinds


def check_record(data: Mapping[str, Any], path: Path) -> None:
    """Refuse a checkpoint record with a missing or mistyped section or counter."""
    sharded = "sharded" in data
    problems = []
    for section, (types, in_shards) in _SECTIONS.items():
        if sharded and not in_shards:
            continue
        if section not in data:
            problems.append(f"the {section!r} section is missing")
        elif not isinstance(data[section], types):
            problems.append(f"the {section!r} section is a {type(data[section]).__name__}")
    meta = data.get("meta")
    if isinstance(meta, dict):
        for counter in _COUNTERS:
            value = meta.get(counter)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                got = "missing" if counter not in meta else repr(value)
                problems.append(f"the counter {counter!r} is {got}, not an int >= 0")
        if not isinstance(meta.get("epoch_totals"), dict):
            problems.append("the 'epoch_totals' of 'meta' are missing")
    optimizers = data.get("optimizers")
    if not sharded and isinstance(optimizers, dict):
        for name, optimizer in optimizers.items():
            which = f"the optimizer of phase {name!r}" if name else "the optimizer"
            if not isinstance(optimizer, dict):
                problems.append(f"{which} is a {type(optimizer).__name__}")
                continue
            if not isinstance(optimizer.get("param_groups"), list):
                problems.append(f"{which}'s 'param_groups' are missing")
            if not isinstance(optimizer.get("state"), dict):
                problems.append(f"{which}'s 'state' is missing")
    if problems:
        msg = (
            f"Checkpoint {str(path)!r} is incomplete: {'; '.join(problems)}. Its checksum "
            "matches, so it was written this way (by another program or an edited save); "
            "nothing was loaded."
        )
        raise CheckpointError(msg)


def check_kinds(path: Path, saved: Mapping[str, Any] | None, own: Mapping[str, str | None]) -> None:
    """Refuse a template whose objects differ in kind (class) from the saved ones.

    ``saved`` is None for a record written without kinds: then only presence is compared.
    """
    problems = []
    for role in sorted(set(own) | set(saved or {})):
        mine = own.get(role)
        theirs = (saved or {}).get(role, mine if saved is None else None)
        if saved is None and (theirs is None) == (mine is None):
            continue
        if theirs != mine:
            problems.append(
                f"{role}: {_words(theirs)} in the checkpoint, {_words(mine)} in the template"
            )
    if problems:
        msg = (
            f"Checkpoint {str(path)!r} does not fit the template: {'; '.join(problems)}. Build "
            "the template the way the saved run was built; nothing was loaded."
        )
        raise CheckpointError(msg)


def _words(name: str | None) -> str:
    return "none" if name is None else name
