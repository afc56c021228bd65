"""The placement steps every strategy that keeps whole parameters shares (`SingleDevice`, `DDP`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.optim import Optimizer

from .._typing import Strategy
from ._precision import apply_true_precision, autocast_dtype, make_scaler, true_dtype

if TYPE_CHECKING:
    from .._state import TrainState

__all__ = ["move_optimizer_state", "place_on"]


def place_on(
    state: TrainState, placed: Strategy, device: torch.device, precision: str
) -> TrainState:
    """Cast, move and wrap ``state``'s model for ``placed``; return the state that records it.

    The order matters: dtype first (so a ``*-true`` cast happens once, on the source device),
    then the move, then the optimizer's state follows the parameters. Parameters keep their
    identity under ``.to()``, so the optimizers need no rebuild. Last, ``placed.rewrap`` gives the
    module the steps call (DDP's wrapper, a compiled module, or None for the model itself); a
    state with named phases is never wrapped.

    Args:
        state: the never-placed state (its model is moved in place).
        placed: the strategy value to record, with its ``rank`` and ``world_size`` set.
        device: where the model, the optimizer state and every batch go.
        precision: one of `PRECISIONS`.
    """
    apply_true_precision(state.model, precision)
    state.model.to(device)
    for phase in state.phases:
        move_optimizer_state(phase.optimizer, device)
    return state.replace(
        strategy=placed,
        device=device,
        # Named phases call their parts unwrapped (a wrapper's forward would be used by other
        # phases too); each phase syncs its own gradients (`Strategy.sync_gradients`).
        wrapped=None if state.phases[0].name else placed.rewrap(state.model),
        autocast_dtype=autocast_dtype(precision),
        batch_dtype=true_dtype(precision),
        scaler=make_scaler(precision, device),
    )


def move_optimizer_state(optimizer: Optimizer, device: torch.device) -> None:
    """Move an optimizer's state tensors to ``device`` (scalar ``step`` counters stay put)."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and not (key == "step" and value.ndim == 0):
                state[key] = value.to(device)
