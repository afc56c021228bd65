"""The checks `TrainState.create` makes on what a state is built from."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["check_optimizer_params", "is_scheduler", "model_device"]


def is_scheduler(obj: object) -> bool:
    return isinstance(obj, LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau)


def model_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for a module with neither)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def check_optimizer_params(model: nn.Module, optimizer: Optimizer) -> None:
    """Raise when ``optimizer`` holds parameters that are not ``model``'s."""
    own = {id(p) for p in model.parameters()}
    foreign = [
        (gi, pi, tuple(p.shape))
        for gi, group in enumerate(optimizer.param_groups)
        for pi, p in enumerate(group["params"])
        if id(p) not in own
    ]
    if foreign:
        gi, pi, shape = foreign[0]
        msg = (
            f"`optimizer` must hold only parameters of `model`, but {len(foreign)} of its "
            f"parameters are not the model's (first: param_groups[{gi}]['params'][{pi}], shape "
            f"{shape}). Build it from this model, or pass a factory: "
            "optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3)."
        )
        raise ValueError(msg)
