"""Stepping the LR scheduler at epoch ends, for the loops (per-step schedulers step in the step)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ._state import TrainState

__all__ = ["step_epoch_scheduler", "step_plateau_scheduler"]

_Plateau = torch.optim.lr_scheduler.ReduceLROnPlateau


def step_epoch_scheduler(state: TrainState) -> None:
    """Step an ``"epoch"``-interval scheduler at an epoch's end (not ReduceLROnPlateau)."""
    scheduler = state.scheduler
    if (
        scheduler is not None
        and state.scheduler_interval == "epoch"
        and not isinstance(scheduler, _Plateau)
    ):
        scheduler.step()


def step_plateau_scheduler(state: TrainState, metrics: Mapping[str, Any]) -> None:
    """Step a ReduceLROnPlateau scheduler on ``val_loss`` (``train_loss`` without validation)."""
    if isinstance(state.scheduler, _Plateau):
        state.scheduler.step(metrics.get("val_loss", metrics.get("train_loss")))
