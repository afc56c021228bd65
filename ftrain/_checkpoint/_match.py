"""Does a checkpoint fit the template? One report for files and shard directories alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._errors import CheckpointError

if TYPE_CHECKING:
    from .._state import TrainState

__all__ = ["check_matches", "mismatch_report", "shapes"]

Shapes = Mapping[str, tuple[int, ...] | None]  # a key's shape; None for a non-tensor value


def shapes(state_dict: Mapping[str, Any]) -> dict[str, tuple[int, ...] | None]:
    """The shape of every tensor of a state dict (None for other values)."""
    return {
        k: tuple(v.shape) if isinstance(v, torch.Tensor) else None for k, v in state_dict.items()
    }


def mismatch_report(
    own: Shapes, saved: Shapes, own_groups: Sequence[int], saved_groups: Sequence[int]
) -> list[str]:
    """What differs between a template and a checkpoint: keys, shapes, optimizer groups.

    ``own_groups`` and ``saved_groups`` are the number of parameters in each optimizer group.
    An empty list means they match.
    """
    problems = []
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    if missing:
        problems.append(f"missing keys {missing[:10]}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:10]}")
    differ = [
        f"{k}: checkpoint {saved[k]} vs model {shape}"
        for k, shape in own.items()
        if k in saved and None not in (shape, saved[k]) and saved[k] != shape
    ]
    if differ:
        problems.append("shape mismatches " + "; ".join(differ[:10]))
    if list(own_groups) != list(saved_groups):
        problems.append(
            f"optimizer parameter groups {list(saved_groups)} in the checkpoint vs "
            f"{list(own_groups)} in the template"
        )
    return problems


def check_matches(
    state: TrainState,
    path: Path,
    saved: Shapes,
    saved_groups: Mapping[str, Sequence[Mapping[str, Any]]],
) -> None:
    """Raise `CheckpointError` naming every difference between ``state`` and the checkpoint.

    Args:
        state: the template.
        path: the checkpoint, for the message.
        saved: the shapes of the checkpoint's model state.
        saved_groups: the checkpoint's optimizer parameter groups, by phase name.
    """
    names = [p.name for p in state.phases]
    problems = mismatch_report(
        shapes(state.model.state_dict()),
        saved,
        [len(g["params"]) for p in state.phases for g in p.optimizer.param_groups],
        [len(g["params"]) for n in names for g in saved_groups.get(n, ())],
    )
    if sorted(saved_groups) != sorted(names):
        problems.append(
            f"optimizers of the phases {sorted(saved_groups)} in the checkpoint vs "
            f"{sorted(names)} in the template"
        )
    if problems:
        msg = (
            f"Checkpoint {str(path)!r} does not match the template state: "
            + "; ".join(problems)
            + ". Load it into a state built like the one that saved it."
        )
        raise CheckpointError(msg)
