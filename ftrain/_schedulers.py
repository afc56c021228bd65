"""Stepping the LR scheduler at epoch ends, for the loops (per-step schedulers step in the step)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ._state import TrainState

__all__ = ["step_epoch_scheduler", "step_plateau_scheduler"]

_Plateau = torch.optim.lr_scheduler.ReduceLROnPlateau


def step_epoch_scheduler(state: TrainState) -> None:
    """Step every ``"epoch"``-interval scheduler at an epoch's end (not ReduceLROnPlateau)."""
    for phase in state.phases:
        scheduler = phase.scheduler
        if (
            scheduler is not None
            and phase.scheduler_interval == "epoch"
            and not isinstance(scheduler, _Plateau)
        ):
            scheduler.step()


def step_plateau_scheduler(state: TrainState, metrics: Mapping[str, Any]) -> None:
    """Step ReduceLROnPlateau schedulers on ``val_loss`` (``train_loss`` without validation);
    a phase's on its own ``val_<phase>_loss`` (``train_<phase>_loss``)."""
    for phase in state.phases:
        if isinstance(phase.scheduler, _Plateau):
            p = f"{phase.name}_" if phase.name else ""
            phase.scheduler.step(metrics.get(f"val_{p}loss", metrics.get(f"train_{p}loss")))
