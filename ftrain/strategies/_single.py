"""`SingleDevice`: one process, one device."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import nn

from .._errors import PlacementError, check_type
from ._placement import place_on
from ._precision import check_precision
from ._unplaced import OneProcess

if TYPE_CHECKING:
    from .._state import TrainState

__all__ = ["SingleDevice", "resolve_device"]


@attrs.frozen
class SingleDevice(OneProcess):
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

    def setup(self, state: TrainState) -> TrainState:
        device = resolve_device(self.device)
        return place_on(state, attrs.evolve(self, device=device), device, self.precision)

    def rewrap(self, model: nn.Module) -> nn.Module | None:
        """The compiled form of ``model`` the steps call, or None (they call ``model``)."""
        if not self.compile:
            return None
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
    check_type(
        "device", device, (str, torch.device), "a device string such as 'cpu' or a torch.device"
    )
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
