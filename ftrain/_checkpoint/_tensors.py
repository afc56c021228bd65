"""The model and optimizer in a checkpoint: state dicts out of a state, and back in.

torch.distributed.checkpoint's state-dict functions are used for every placement (one process,
DDP, FSDP), so parameter names never carry a wrapper's prefix and a full state dict loads into any
number of processes. They are imported when needed, not with ftrain (about 0.8 s).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch.optim import Optimizer

    from .._state import TrainState

__all__ = ["load_full", "load_hyperparameters", "nonfinite_parameters", "state_dicts"]


def state_dicts(
    state: TrainState, *, full: bool
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The model's state dict and every optimizer's, by phase name; ``full`` gathers on the CPU.

    Never steps the optimizer: torch's state-dict API initialises an optimizer without state
    (one that never stepped, or a stateless one such as plain SGD) by stepping it with zero
    gradients, which would fire the user's optimizer hooks and, for Adam, count a step.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True) if full else None
    model_sd = get_model_state_dict(state.model, options=options)
    optimizers = {}
    for phase in state.phases:
        with _no_optimizer_init(phase.optimizer):
            optimizers[phase.name] = get_optimizer_state_dict(
                state.model, phase.optimizer, options=options
            )
    return model_sd, optimizers


@contextlib.contextmanager
def _no_optimizer_init(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Keep torch's state-dict helper from stepping an optimizer that has no state.

    The helper skips its initialising step when any parameter has a gradient, so one parameter
    (the smallest) gets a zero gradient for the duration, and loses it again afterwards.
    """
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if optimizer.state or not params or any(p.grad is not None for p in params):
        yield
        return
    smallest = min(params, key=lambda p: p.numel())
    smallest.grad = torch.zeros_like(smallest)
    try:
        yield
    finally:
        smallest.grad = None


def load_full(state: TrainState, data: Mapping[str, Any]) -> None:
    """Load full (unsharded) model and optimizer state dicts into ``state``'s objects.

    They are keyed by parameter names: the same file loads into one process, DDP, or FSDP with
    any number of processes (each rank takes its shard).
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(state.model, data["model"], options=full)
    for phase in state.phases:
        saved_optim = data["optimizers"][phase.name]
        if saved_optim["state"]:
            set_optimizer_state_dict(
                state.model, phase.optimizer, optim_state_dict=saved_optim, options=full
            )
        else:  # a stateless optimizer (plain SGD) or one that never stepped: hyperparameters only
            load_hyperparameters(phase.optimizer, saved_optim["param_groups"])


def load_hyperparameters(optimizer: Optimizer, saved_groups: list[dict[str, Any]]) -> None:
    """Set every optimizer group's hyperparameters (lr, betas, ...) to the saved ones."""
    for group, saved in zip(optimizer.param_groups, saved_groups, strict=True):
        group.update({k: v for k, v in saved.items() if k != "params"})


def nonfinite_parameters(state: TrainState) -> list[str]:
    """The names of the parameters holding NaN or infinity (agreed by every rank)."""
    named = list(state.model.named_parameters())
    if not named:
        return []
    local = [p.to_local() if hasattr(p, "to_local") else p for _, p in named]  # FSDP shards
    finite = torch.stack([torch.isfinite(p).all() for p in local])
    if state.world_size > 1:  # every rank must agree, or the others would wait in a collective
        import torch.distributed as dist

        flags = finite.to(torch.int32)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        finite = flags.bool()
    if bool(finite.all()):  # one sync for the whole model
        return []
    return [n for (n, _), ok in zip(named, finite.tolist(), strict=True) if not ok]
