"""Whether a monitored metric improves downwards or upwards: shared by `Checkpoint` and
`EarlyStopping`."""

from __future__ import annotations

from typing import Literal

from .._errors import check_choice

__all__ = ["resolve_mode"]


def resolve_mode(mode: str | None, monitor: str | None) -> Literal["min", "max"]:
    """``mode`` checked, or inferred from the metric's name: ``"max"`` for names containing
    ``acc``, ``"min"`` otherwise."""
    check_choice("mode", mode, (None, "min", "max"))
    if mode == "max" or (mode is None and monitor is not None and "acc" in monitor):
        return "max"
    return "min"
