"""`predict`: the model's outputs over a loader, outside a step, in dataset order.

It runs under the state's placement and precision: batches move to the state's device (cast to
the weights' dtype under ``*-true`` precision), forwards autocast under ``*-mixed``, every module
is in eval mode (each one's flag restored afterwards) and no gradient is recorded. Randomness is
drawn from the state's prediction stream (see `seed_site`), one draw site per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset

from ._batch import batch_size, map_tensors
from ._collectives import agree_on_batches
from ._data import EpochSampler, resampled
from ._errors import check_int, describe
from ._passes import autocast, prepare
from ._state import TrainState, check_live
from ._step import eval_mode
from ._streams import PREDICT, seed_site

__all__ = ["predict"]

Forward = Callable[[nn.Module, Any], Any]


def predict(
    state: TrainState,
    loader: Iterable[Any],
    *,
    forward: Forward | None = None,
    concat: bool = True,
    max_batches: int | None = None,
) -> Any:
    """The model's outputs over ``loader``, under the state's placement and precision.

    Runs ``forward(model, batch)`` on every batch in eval mode without gradients (autocast under
    ``*-mixed`` precision, floating-point inputs cast under ``*-true``). Outputs are detached and
    returned on the CPU: tensors, or tuples, lists and dicts of tensors, whose leading dimension
    is the batch's samples.

    A `DataLoader` over a map-style dataset is predicted in *dataset order* (its ``shuffle`` is
    ignored). Under DDP or FSDP each process predicts its share and the shares are gathered onto
    every process, in dataset order, with the padding a `DistributedSampler` adds dropped: two
    processes return what one returns. Other iterables are predicted in the order they yield,
    by each process on its own.

    Args:
        state: a live state; left as it was.
        loader: a DataLoader or any iterable of batches.
        forward: ``forward(model, batch) -> outputs``; by default ``model(batch[0])`` for a
            tuple or list batch and ``model(batch)`` for a tensor.
        concat: concatenate the outputs along the first dimension (default); ``False`` gives a
            list with one output per batch (batches of the loader's ``batch_size`` in dataset
            order when gathered).
        max_batches: predict at most this many batches (per process).

    Returns:
        The outputs, concatenated or as a list per batch.

    Raises:
        TypeError: ``forward`` is missing for a batch the default cannot call the model on.
        ValueError: ``loader`` yielded nothing, or an output's leading dimension is not the
            batch's sample count where the order must be restored.

    Example:
        >>> import torch, ftrain
        >>> state = ftrain.testing.toy_state()
        >>> batches = [ftrain.testing.toy_batch(seed=i) for i in range(3)]
        >>> out = ftrain.predict(state, batches)
        >>> out.shape == (3 * len(batches[0][0]), 3), out.requires_grad
        (True, False)
    """
    check_live(state, "predict")
    check_int("max_batches", max_batches, optional=True)
    forward = _default_forward if forward is None else forward
    if not callable(forward):
        msg = f"`forward` must be a callable forward(model, batch) (got {describe(forward)})."
        raise TypeError(msg)
    loader, indices = _ordered(state, loader)
    module = state.strategy.eval_module(state)
    outputs: list[Any] = []
    counts: list[int] = []
    batch = None
    with eval_mode(state.model), torch.no_grad(), autocast(state):
        total = _length(loader, max_batches)
        most = None
        if state.world_size > 1 and total is not None and state.strategy.lockstep_eval:
            most = agree_on_batches(state, total, "predict", equal=False)
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            counts.append(batch_size(batch) if indices is not None else 0)
            outputs.append(_detach(_run(state, module, forward, batch, i)))
        if most is not None:
            # Sharded models all-gather in every forward: ranks with fewer batches run the
            # missing forwards on their last batch and drop the results.
            for extra in range(len(outputs), most):
                _run(state, module, forward, batch, extra)
    if not outputs and (indices is None or state.world_size == 1):
        msg = "`loader` passed to `predict` yielded no batches."
        raise ValueError(msg)
    if indices is None:
        outputs = [_tree_map(lambda t: t.cpu(), o) for o in outputs]
        return _concat(outputs) if concat else outputs
    local = _concat([_tree_map(lambda t: t.cpu(), o) for o in outputs]) if outputs else None
    _check_rows(local, sum(counts))
    ordered = _in_dataset_order(state, local, indices[: sum(counts)])
    if concat:
        return ordered
    size = getattr(loader, "batch_size", None) or max(counts)
    n = _rows(ordered)
    return [_tree_map(lambda t, s=s: t[s : s + size], ordered) for s in range(0, n, size)]


def _run(state: TrainState, module: nn.Module, forward: Forward, batch: Any, index: int) -> Any:
    batch = prepare(state, batch)
    seed_site(state, PREDICT, index)
    return forward(module, batch)


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, tuple | list) and batch:
        return model(batch[0])
    msg = (
        f"`predict` calls model(batch[0]) on tuple or list batches and model(batch) on tensors; "
        f"for a {type(batch).__name__} batch pass forward=, e.g. "
        "forward=lambda model, batch: model(batch['image'])."
    )
    raise TypeError(msg)


def _ordered(state: TrainState, loader: Iterable[Any]) -> tuple[Iterable[Any], list[int] | None]:
    """The loader to iterate and, when known, the dataset index of every sample it yields."""
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader, None
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler) and not isinstance(sampler, EpochSampler):
        return loader, list(iter(sampler))  # the user's own: its padding is dropped later
    if type(loader.batch_sampler) is not BatchSampler:
        return loader, None
    rebuilt, ordered = resampled(state, loader, shuffle=False, drop_last=False, pad=False)
    return rebuilt, list(iter(ordered))


def _in_dataset_order(state: TrainState, local: Any, indices: list[int]) -> Any:
    """Gather every process's outputs and indices; sort by index, each index once."""
    index = torch.tensor(indices, dtype=torch.long)
    if state.world_size > 1:
        shares: list[Any] = [None] * state.world_size
        dist.all_gather_object(shares, (index, local))
        pieces = [(i, o) for i, o in shares if o is not None]
        index = torch.cat([i for i, _ in pieces])
        local = _concat([o for _, o in pieces])
    order = torch.argsort(index, stable=True)
    ranked = index[order]
    first = torch.ones_like(ranked, dtype=torch.bool)
    first[1:] = ranked[1:] != ranked[:-1]  # a padded sample repeats an index: keep one
    keep = order[first]
    return _tree_map(lambda t: t[keep], local)


def _length(loader: Any, max_batches: int | None) -> int | None:
    try:
        n = len(loader)
    except TypeError:
        return None
    return n if max_batches is None else min(n, max_batches)


def _rows(tree: Any) -> int:
    if isinstance(tree, torch.Tensor):
        return int(tree.shape[0]) if tree.ndim else 0
    values = tree.values() if isinstance(tree, Mapping) else tree
    return next((_rows(v) for v in values), 0)


def _check_rows(local: Any, samples: int) -> None:
    if local is None:
        return
    rows = _rows(local)
    if rows != samples:
        msg = (
            f"`predict` needs one output row per sample to restore the dataset order, but the "
            f"outputs have {rows} rows for {samples} samples. Return per-sample outputs from "
            "`forward` (leading dimension = batch size)."
        )
        raise ValueError(msg)


def _detach(tree: Any) -> Any:
    return _tree_map(lambda t: t.detach(), tree)


def _tree_map(fn: Callable[..., torch.Tensor], tree: Any) -> Any:
    return map_tensors(fn, tree, _not_an_output)


def _not_an_output(tree: Any) -> None:
    msg = (
        f"`predict` outputs must be tensors, or tuples, lists and dicts of tensors "
        f"(got {describe(tree)})."
    )
    raise TypeError(msg)


def _concat(outputs: list[Any]) -> Any:
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(_concat(list(vs)) for vs in zip(*outputs, strict=True)))
    if isinstance(first, tuple | list):
        return type(first)(_concat(list(vs)) for vs in zip(*outputs, strict=True))
    return {k: _concat([o[k] for o in outputs]) for k in first}
