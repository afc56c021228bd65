"""`update_bn`: BatchNorm statistics recomputed for averaged weights (SWA)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ._averaging import average_of, using_weights
from ._data import prepare_loader, start_epoch
from ._errors import check_int
from ._loader_state import position_keeper
from ._state import TrainState, check_live, set_progress
from ._step import eval_metrics, eval_mode

__all__ = ["update_bn"]

_Norm = nn.modules.batchnorm._BatchNorm


def update_bn(
    state: TrainState,
    loader: Iterable[Any],
    *,
    weights: str = "swa",
    max_batches: int | None = None,
) -> TrainState:
    """Recompute the BatchNorm statistics of the averaged weights ``weights`` over ``loader``.

    Averaging weights leaves the running means and variances of BatchNorm layers matching none
    of them; like `torch.optim.swa_utils.update_bn`, this resets them and runs a forward pass
    (the loss function, without gradients) over ``loader`` with the averaged weights in the
    model, each BatchNorm layer in training mode with a cumulative average (``momentum=None``)
    and every other module in eval mode (no dropout). The statistics are stored in the average;
    the model's own weights and statistics are left as they were. Under DDP/FSDP each process
    runs its share of the data and the statistics are averaged across processes.

    A train loader that keeps its own position (``state_dict()``) is put back where it was.

    Args:
        state: a live state holding the average (not consumed).
        loader: the data to measure on, usually the train loader.
        weights: the name of the average in ``state.averages``.
        max_batches: use at most this many batches.

    Returns:
        ``state`` (the same record): ``state.averages[weights]`` was updated in place.

    Raises:
        KeyError: there is no average of that name.

    Example:
        >>> import torch, ftrain
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.BatchNorm1d(4),
        ...                             torch.nn.Linear(4, 3))
        >>> state = ftrain.TrainState.create(
        ...     model=model, optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        ...     loss_fn=ftrain.supervised(torch.nn.MSELoss()))
        >>> batches = [ftrain.testing.toy_batch(seed=i) for i in range(4)]
        >>> state, _ = ftrain.fit(state, batches, max_epochs=2, step_fn=ftrain.with_swa(start=4))
        >>> state = ftrain.update_bn(state, batches)
    """
    check_live(state, "update_bn")
    check_int("max_batches", max_batches, optional=True)
    average_of(state, weights)
    norms = [m for m in state.model.modules() if isinstance(m, _Norm)]
    if not norms:
        return state
    loader = prepare_loader(state, loader)
    keeper = position_keeper(loader)
    position = None if keeper is None else keeper.state_dict()
    settings = [(m, m.momentum) for m in norms]
    with using_weights(state, weights), eval_mode(state.model):
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches
            m.train()
        try:
            batches, _ = start_epoch(loader, set_progress(state, epoch_batch=0))
            for i, batch in enumerate(batches):
                if max_batches is not None and i >= max_batches:
                    break
                eval_metrics(state, batch)
        finally:
            for m, momentum in settings:
                m.momentum = momentum
        if state.world_size > 1:
            _average_over_processes(state, norms)
    if keeper is not None:
        keeper.load_state_dict(position)
    return state


def _average_over_processes(state: TrainState, norms: list[_Norm]) -> None:
    """Average the running statistics over processes (each measured its own share)."""
    stats = [
        b for m in norms for b in (m.running_mean, m.running_var) if isinstance(b, torch.Tensor)
    ]
    if not stats:
        return
    flat = torch.cat([s.reshape(-1).double() for s in stats])
    flat = state.strategy.reduce_sum(flat) / state.world_size
    parts = torch.split(flat, [s.numel() for s in stats])
    with torch.no_grad():
        for s, part in zip(stats, parts, strict=True):
            s.copy_(part.reshape(s.shape))
