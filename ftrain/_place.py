"""`place`: the one point where device, precision and distribution are applied."""

from __future__ import annotations

import torch

from ._errors import PlacementError, describe
from ._state import TrainState, advance, check_live
from ._typing import Strategy
from .strategies import SingleDevice, Unplaced

__all__ = ["place"]


def place(state: TrainState, strategy: Strategy | str | torch.device = "auto") -> TrainState:
    """Apply a placement to a fresh state, once: device, precision, then distribution.

    After `place`, batches move to the state's device inside the step functions, so user code has
    no ``.to()``. A state that is never placed trains where its model already is.

    Args:
        state: a live, never-placed state (its strategy is `Unplaced`). It is consumed (its
            model moved in place).
        strategy: `SingleDevice`, `DDP`, `FSDP`, any other `ftrain.Strategy`, or a device
            string as shorthand for ``SingleDevice(device)`` (``"auto"``, ``"cpu"``, ``"cuda"``,
            ``"cuda:1"``, ``"mps"``).

    Returns:
        The placed state, recording ``strategy``.

    Raises:
        PlacementError: the state was already placed, the device is not available, or it
            cannot hold weights (``"meta"``); the weights are untouched.
        ValueError: the device string is not one torch knows.

    Example:
        >>> import ftrain
        >>> state = ftrain.place(ftrain.testing.toy_state(), "cpu")
        >>> state.strategy
        SingleDevice(device=device(type='cpu'), precision='32-true', compile=False)
    """
    check_live(state, "place")
    if not isinstance(state.strategy, Unplaced):
        msg = (
            f"`state` is already placed with {state.strategy!r}; a state is placed once. "
            "Call `place` on the state from TrainState.create (or load a checkpoint into a "
            "freshly placed state)."
        )
        raise PlacementError(msg)
    if state.averages:
        msg = (
            f"`state` holds averaged weights ({', '.join(sorted(state.averages))}), which would "
            "stay where they are while `place` moves the model. Place the state first, then "
            "`load` a checkpoint into it (averages are made on the placed model by the step)."
        )
        raise PlacementError(msg)
    if isinstance(strategy, str | torch.device):
        strategy = SingleDevice(device=strategy)
    if not isinstance(strategy, Strategy):
        msg = (
            "`strategy` must be a Strategy such as ftrain.SingleDevice('cuda'), ftrain.DDP() or "
            f"ftrain.FSDP(), or a device string (got {describe(strategy)})."
        )
        raise TypeError(msg)
    if isinstance(strategy, SingleDevice):
        _check_can_hold_weights(strategy.device)
    placed = strategy.setup(state)
    return advance(placed, "place")


def _check_can_hold_weights(device: object) -> None:
    """Refuse, before the weights move, a device that holds no data (they would be lost)."""
    if isinstance(device, str) and device != "auto":
        try:
            device = torch.device(device)
        except (RuntimeError, ValueError):
            return  # the strategy names the bad string itself
    if isinstance(device, torch.device) and device.type == "meta":
        msg = (
            f"`device` {str(device)!r} cannot hold the weights: tensors on the meta device have "
            "shapes but no data, so placing the state there would destroy its weights. Place it "
            "on 'cpu', 'cuda' or 'mps' (build models on meta only to materialise them yourself)."
        )
        raise PlacementError(msg)
