"""Running the model outside a step: `predict` over a loader and `inference` for code of your own.

Both run under the state's placement and precision: batches move to the state's device (cast to
the weights' dtype under ``*-true`` precision), forwards autocast under ``*-mixed``, every module
is in eval mode (each one's flag restored afterwards) and no gradient is recorded. Randomness is
drawn from the prediction and inference streams of the state (see `seed_site`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset

from ._batch import batch_size, cast_floating, move
from ._collectives import agree_on_batches
from ._data import EpochSampler, _rebuild
from ._errors import check_int, describe
from ._state import TrainState, check_live
from ._step import eval_mode
from ._streams import INFERENCE, PREDICT, seed_site, site_generator

__all__ = ["Inference", "inference", "predict"]

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
    with eval_mode(state.model), torch.no_grad(), _autocast(state):
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


@attrs.frozen
class Inference:
    """What `inference` gives: the model to call and how to bring inputs to it.

    Attributes:
        model: the module to call (the state's model, unwrapped where the wrapper's forward
            would sync processes); submodules and methods can be called too.
        device: where inputs go.
        dtype: the dtype floating-point inputs are cast to (``*-true`` precision), or None.
        generator: a CPU `torch.Generator` seeded from the state's inference stream (seed,
            stream id, step, rank): draw sampling noise from it.
    """

    model: nn.Module
    device: torch.device
    dtype: torch.dtype | None
    generator: torch.Generator

    def move(self, inputs: Any) -> Any:
        """``inputs`` (tensors in any nesting) on the device, floating ones in the model's dtype."""
        inputs = move(inputs, self.device)
        return inputs if self.dtype is None else cast_floating(inputs, self.dtype)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the model on the moved arguments."""
        return self.model(*self.move(args), **self.move(kwargs))


@contextlib.contextmanager
def inference(state: TrainState) -> Iterator[Inference]:
    """Run the model of ``state`` in code of your own, under its placement and precision.

    Inside the block every module is in eval mode, no gradient is recorded, forwards autocast
    under ``*-mixed`` precision, and torch's default generator is seeded from the state's
    inference stream. Inputs go through ``run.move`` (or call ``run(...)``), which puts them on
    the state's device and casts floating-point ones under ``*-true`` precision, so a forward of
    your own (sampling images, generating text) runs as the training step would. Each module's
    ``training`` flag is restored on exit. Outputs are tensors on the state's device, in the
    compute dtype (``bfloat16`` under ``bf16-*``): convert them as you need
    (``.float().cpu()``).

    Args:
        state: a live state; left as it was.

    Yields:
        An `Inference`: ``run.model``, ``run.move(x)``, ``run(x)`` and ``run.generator``.

    Example:
        >>> import torch, ftrain
        >>> state = ftrain.testing.toy_state()
        >>> with ftrain.inference(state) as run:
        ...     x = torch.randn(5, 2, generator=run.generator)
        ...     y = run(x)
        >>> y.shape, y.requires_grad, state.model.training
        (torch.Size([5, 3]), False, True)
    """
    check_live(state, "inference")
    seed_site(state, INFERENCE)
    run = Inference(
        model=state.strategy.eval_module(state),
        device=state.device,
        dtype=state.batch_dtype,
        generator=site_generator(state, INFERENCE),
    )
    with eval_mode(state.model), torch.no_grad(), _autocast(state):
        yield run


def _run(state: TrainState, module: nn.Module, forward: Forward, batch: Any, index: int) -> Any:
    batch = move(batch, state.device, non_blocking=state.device.type == "cuda")
    if state.batch_dtype is not None:
        batch = cast_floating(batch, state.batch_dtype)
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


def _autocast(state: TrainState) -> contextlib.AbstractContextManager[Any]:
    if state.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(state.device.type, dtype=state.autocast_dtype)


def _ordered(state: TrainState, loader: Iterable[Any]) -> tuple[Iterable[Any], list[int] | None]:
    """The loader to iterate and, when known, the dataset index of every sample it yields."""
    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader, None
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler) and not isinstance(sampler, EpochSampler):
        return loader, list(iter(sampler))  # the user's own: its padding is dropped later
    if type(loader.batch_sampler) is not BatchSampler:
        return loader, None
    ordered = EpochSampler(
        loader.dataset,  # type: ignore[arg-type]
        shuffle=False,
        seed=state.seed,
        num_replicas=state.world_size,
        rank=state.rank,
        pad=False,
    )
    rebuilt = _rebuild(loader, ordered, pin=state.device.type == "cuda")
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
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_tree_map(fn, v) for v in tree))
    if isinstance(tree, tuple | list):
        return type(tree)(_tree_map(fn, v) for v in tree)
    if isinstance(tree, Mapping):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
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
