"""`SingleDevice`: one process, one device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch
from torch import nn
from torch.optim import Optimizer

from .._errors import PlacementError
from .._state import TrainState
from ._precision import (
    apply_true_precision,
    autocast_dtype,
    check_precision,
    make_scaler,
    true_dtype,
)

__all__ = ["SingleDevice", "move_optimizer_state", "resolve_device"]


@attrs.frozen
class SingleDevice:
    """Train in this process on one device.

    Attributes:
        device: ``"auto"`` (CUDA, then MPS, then CPU), or any torch device string such as
            ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        precision: ``"32-true"`` (default), ``"bf16-mixed"`` / ``"16-mixed"`` (float32 weights,
            autocast compute; ``16-mixed`` adds a GradScaler kept in the state), or
            ``"bf16-true"`` / ``"16-true"`` (weights and floating-point batches cast to the
            dtype).
        compile: compile the model with `torch.compile` after it is placed: True, or a dict of
            `torch.compile` keyword arguments (``{"mode": "max-autotune"}``). The compiled module
            is what the steps call (``state.wrapped``); ``state.model`` stays the original, so
            checkpoint keys carry no ``_orig_mod.`` prefix.

    Example:
        >>> import ftrain
        >>> state = ftrain.place(ftrain.testing.toy_state(), ftrain.SingleDevice("cpu"))
        >>> state.device
        device(type='cpu')
    """

    device: str | torch.device = "auto"
    precision: str = attrs.field(default="32-true", validator=check_precision)
    compile: bool | Mapping[str, Any] = False
    """Compile the model with `torch.compile` (True, or a dict of its keyword arguments)."""

    @property
    def world_size(self) -> int:
        return 1

    @property
    def rank(self) -> int:
        return 0

    def setup(self, state: TrainState) -> TrainState:
        device = resolve_device(self.device)
        # Order: dtype first (so a true-precision cast happens once, on the source device), then
        # the move, then optimizer state follows the parameters. Parameters keep their identity
        # under .to(), so the optimizer needs no rebuild on one device.
        apply_true_precision(state.model, self.precision)
        state.model.to(device)
        move_optimizer_state(state.optimizer, device)
        return state.replace(
            wrapped=self.rewrap(state.model) if self.compile else None,
            strategy=attrs.evolve(self, device=device),
            device=device,
            autocast_dtype=autocast_dtype(self.precision),
            batch_dtype=true_dtype(self.precision),
            scaler=make_scaler(self.precision, device),
        )

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def rewrap(self, model: nn.Module) -> nn.Module:
        """The module the steps call for ``model``: the model itself, or its compiled form."""
        if not self.compile:
            return model
        options = {} if self.compile is True else dict(self.compile)
        return torch.compile(model, **options)  # type: ignore[return-value]


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn ``"auto"`` or a device string into an available `torch.device`.

    Raises:
        ValueError: the string is not a device torch knows.
        PlacementError: the device exists in torch but not on this machine.
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(device, str | torch.device):
        msg = f"`device` must be a device string such as 'cpu' or a torch.device (got {device!r})."
        raise TypeError(msg)
    try:
        dev = torch.device(device)
    except RuntimeError:
        msg = (
            f"`device` must be 'auto' or a torch device such as 'cpu', 'cuda', 'cuda:1' or 'mps' "
            f"(got {device!r})."
        )
        raise ValueError(msg) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            msg = (
                f"`device` {str(dev)!r} was requested but CUDA is not available here "
                "(torch.cuda.is_available() is False). Use 'cpu' or 'auto'."
            )
            raise PlacementError(msg)
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            msg = (
                f"`device` {str(dev)!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)."
            )
            raise PlacementError(msg)
        return torch.device("cuda", index)
    if dev.type == "mps" and not torch.backends.mps.is_available():
        msg = "`device` 'mps' was requested but MPS is not available here. Use 'cpu' or 'auto'."
        raise PlacementError(msg)
    return dev


def move_optimizer_state(optimizer: Optimizer, device: torch.device) -> None:
    """Move an optimizer's state tensors to ``device`` (scalar ``step`` counters stay put)."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and not (key == "step" and value.ndim == 0):
                state[key] = value.to(device)
