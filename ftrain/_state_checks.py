"""The checks `TrainState.create` makes on what a state is built from."""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ._errors import CallbackSignatureError, describe

__all__ = ["check_loss_fn", "check_optimizer_params", "is_scheduler", "model_device"]


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


def check_loss_fn(loss_fn: object) -> None:
    if isinstance(loss_fn, nn.modules.loss._Loss) or (
        isinstance(loss_fn, type) and issubclass(loss_fn, nn.Module)
    ):
        msg = (
            "`loss_fn` must be a function loss_fn(model, batch) -> loss, not a criterion (got "
            f"{describe(loss_fn)}): a criterion compares outputs with targets and never calls "
            "the model. Wrap it: loss_fn=ftrain.supervised(torch.nn.MSELoss())."
        )
        raise TypeError(msg)
    if not callable(loss_fn):
        msg = (
            "`loss_fn` must be a callable loss_fn(model, batch) -> loss or (loss, metrics) "
            f"(got {describe(loss_fn)}). For (inputs, targets) batches use "
            "ftrain.supervised(torch.nn.CrossEntropyLoss())."
        )
        raise TypeError(msg)
    try:
        sig = inspect.signature(loss_fn)
    except (TypeError, ValueError):  # builtins and C callables have no signature
        return
    try:
        sig.bind(None, None)
    except TypeError as err:
        msg = (
            f"`loss_fn` must accept two positional arguments (model, batch), but its signature "
            f"is {getattr(loss_fn, '__name__', type(loss_fn).__name__)}{sig} ({err}). "
            "Wrap it: loss_fn=lambda model, batch: my_loss(model(batch[0]), batch[1])."
        )
        raise CallbackSignatureError(msg) from None
