"""Weight averaging: EMA and SWA kept in the state, and evaluation on the averaged weights.

An average is a `WeightAverage` in ``state.averages[name]``: one tensor per entry of the model's
state dict, made by cloning the model's own tensor, so it lives where the model does (on its
device; under FSDP a DTensor sharded like the parameter). The step transforms `with_ema` and
`with_swa` update it in place after each optimizer step, like the optimizer's buffers; `save`
stores it beside the model and `load` rebuilds it on the template's placement.

Evaluating on an average swaps it into the model in place (`using_weights`), runs, and swaps
back: exact (copies, no arithmetic), one tensor of extra memory at a time, and every function
that reads ``state.model`` (`eval_epoch`, `eval_step`, a prediction loop, ``state_dict()``) sees
the averaged weights inside the block.

Over 300 lines because the average, the two transforms that update it and the exchange that
evaluates on it share one invariant (the average mirrors ``state.model.state_dict()`` entry for
entry, on its placement), which reads best in one place.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import torch
from torch import nn

from ._errors import check_int, check_number, check_type
from ._state import TrainState, check_live, set_progress
from ._step import train_step
from ._transforms import Metrics, Step, as_step

__all__ = ["WeightAverage", "using_weights", "with_ema", "with_swa"]

KINDS = ("ema", "swa")


@attrs.define(eq=False, repr=False)
class WeightAverage:
    """An averaged copy of a model's weights, kept in ``state.averages[name]``.

    Mutable like an optimizer: the step transforms update ``tensors`` and ``count`` in place.

    Attributes:
        kind: ``"ema"`` (exponential moving average) or ``"swa"`` (equal average).
        tensors: the averaged value of every entry of ``state.model.state_dict()`` (parameters
            and persistent buffers), keyed like it. Floating parameters are averaged; floating
            buffers are averaged under EMA and copied under SWA (`ftrain.update_bn` recomputes
            BatchNorm statistics for the averaged weights); other buffers are copied.
        count: how many times the weights were averaged in.
    """

    kind: str
    tensors: dict[str, torch.Tensor]
    count: int = 0
    _pairs: Any = attrs.field(default=None, alias="_pairs")

    @classmethod
    def of(cls, model: nn.Module, kind: str) -> WeightAverage:
        """A new average holding a copy of ``model``'s weights (``count=1``)."""
        with torch.no_grad():
            tensors = {k: v.detach().clone() for k, v in _entries(model).items()}
        return cls(kind=kind, tensors=tensors, count=1)

    def pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], ...]:
        """``(averaged, live)`` lists of the entries that are averaged, and of those copied.

        Cached per model: the model's tensors are the same objects from step to step.
        """
        if self._pairs is None or self._pairs[0] is not model:
            entries = _entries(model)
            if set(entries) != set(self.tensors):
                missing = sorted(set(entries) ^ set(self.tensors))[:5]
                msg = (
                    f"The {self.kind} average does not match the model: the entries {missing} "
                    "are in one and not the other."
                )
                raise ValueError(msg)
            params = {id(p) for p in model.parameters()}
            mean_avg: list[torch.Tensor] = []
            mean_live: list[torch.Tensor] = []
            copy_avg: list[torch.Tensor] = []
            copy_live: list[torch.Tensor] = []
            for k, live in entries.items():
                floating = live.is_floating_point()
                averaged = floating and (id(live) in params or self.kind == "ema")
                (mean_avg if averaged else copy_avg).append(self.tensors[k])
                (mean_live if averaged else copy_live).append(live.detach())
            self._pairs = (model, mean_avg, mean_live, copy_avg, copy_live)
        return self._pairs[1:]  # type: ignore[no-any-return]

    def update(self, model: nn.Module, weight: float) -> None:
        """Move the averaged entries ``weight`` of the way to ``model``'s; copy the others."""
        mean_avg, mean_live, copy_avg, copy_live = self.pairs(model)
        with torch.no_grad():
            if mean_avg:
                torch._foreach_lerp_(mean_avg, mean_live, weight)
            if copy_avg:
                torch._foreach_copy_(copy_avg, copy_live)
        self.count += 1

    def __getstate__(self) -> dict[str, Any]:  # `fork` deep-copies it: the cache stays behind
        return {"kind": self.kind, "tensors": self.tensors, "count": self.count, "_pairs": None}

    def __setstate__(self, d: dict[str, Any]) -> None:
        for k, v in d.items():
            object.__setattr__(self, k, v)

    def __repr__(self) -> str:
        return f"WeightAverage(kind={self.kind!r}, count={self.count}, entries={len(self.tensors)})"


def _entries(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.state_dict(keep_vars=True))


def _averaged_step(
    step: Step | Callable[..., Any], name: str, kind: str, weight: Callable[[TrainState], float]
) -> Step:
    """``step`` with the average ``name`` updated after each optimizer step ``weight`` says."""
    base = as_step(step)
    check_type("name", name, str, "a str")
    inner = base.apply_gradients

    def averaged(state: TrainState, metrics: Metrics) -> tuple[TrainState, Metrics]:
        before = state.step
        state, metrics = inner(state, metrics)
        if state.step == before:  # the update was skipped (with_skip_nonfinite)
            return state, metrics
        w = weight(state)
        if w == 0.0:
            return state, metrics
        average = state.averages.get(name)
        if average is None:  # the first average is a copy of the weights
            average = WeightAverage.of(state.model, kind)
            return set_progress(state, averages={**state.averages, name: average}), metrics
        if average.kind != kind:
            msg = (
                f"`state.averages[{name!r}]` holds an average of kind {average.kind!r}, not "
                f"{kind!r}: give this transform another `name`."
            )
            raise ValueError(msg)
        average.update(state.model, w if w > 0 else 1.0 / (average.count + 1))
        return state, metrics

    return attrs.evolve(base, apply_gradients=averaged)


def with_ema(
    step: Step | Callable[..., Any] = train_step,
    *,
    decay: float = 0.999,
    every: int = 1,
    name: str = "ema",
) -> Step:
    """Keep an exponential moving average of the weights in ``state.averages[name]``.

    After every ``every``-th optimizer step, ``ema = decay * ema + (1 - decay) * weights`` for
    every floating parameter and buffer (other buffers are copied); the first update copies the
    weights, as `torch.optim.swa_utils.AveragedModel` does. Skipped steps
    (`with_skip_nonfinite`) are not averaged in. The average lives on the model's placement (a
    sharded DTensor under FSDP), costs one copy of the weights in memory, and is checkpointed.
    Evaluate on it with ``eval_epoch(state, loader, weights=name)``, ``fit(...,
    val_weights=("model", name))`` or `using_weights`.

    Args:
        step: the step to transform (default `train_step`).
        decay: the weight of the old average, in ``[0, 1)``.
        every: average every n optimizer steps.
        name: the key in ``state.averages``.

    Example:
        >>> import ftrain
        >>> step = ftrain.with_ema(decay=0.9)
        >>> state = ftrain.testing.toy_state()
        >>> for seed in range(3):
        ...     state, _ = step(state, ftrain.testing.toy_batch(seed=seed))
        >>> state.averages["ema"].count
        3
        >>> metrics = ftrain.eval_epoch(state, [ftrain.testing.toy_batch()], weights="ema")
    """
    check_number("decay", decay, minimum=0.0)
    if not decay < 1.0:
        msg = f"`decay` must be in [0, 1) (got {decay!r}), e.g. decay=0.999."
        raise ValueError(msg)
    check_int("every", every, minimum=1)
    rate = 1.0 - float(decay)

    def weight(state: TrainState) -> float:
        return rate if state.step % every == 0 else 0.0

    return _averaged_step(step, name, "ema", weight)


def with_swa(
    step: Step | Callable[..., Any] = train_step,
    *,
    start: int,
    every: int = 1,
    name: str = "swa",
) -> Step:
    """Keep the equal (stochastic weight) average of the weights in ``state.averages[name]``.

    The weights after optimizer steps ``start``, ``start + every``, ``start + 2 * every``, ...
    are averaged with equal weight (``swa += (weights - swa) / (count + 1)``); per epoch, as in
    the SWA paper, is ``every=<batches per epoch>``. BatchNorm statistics are copied from the
    model at each update; recompute them for the averaged weights with `ftrain.update_bn` before
    evaluating on it. Pair it with a constant or cyclic learning rate from ``start`` on (e.g.
    `torch.optim.swa_utils.SWALR` as the state's scheduler).

    Args:
        step: the step to transform (default `train_step`).
        start: the first optimizer step whose weights are averaged (``state.step`` after it).
        every: average every n optimizer steps from ``start`` on.
        name: the key in ``state.averages``.

    Example:
        >>> import ftrain
        >>> step = ftrain.with_swa(start=2)
        >>> state = ftrain.testing.toy_state()
        >>> for seed in range(4):
        ...     state, _ = step(state, ftrain.testing.toy_batch(seed=seed))
        >>> state.averages["swa"].count  # the weights after steps 2, 3 and 4
        3
    """
    check_int("start", start, minimum=1)
    check_int("every", every, minimum=1)

    def weight(state: TrainState) -> float:
        due = state.step >= start and (state.step - start) % every == 0
        return -1.0 if due else 0.0  # negative: 1 / (count + 1)

    return _averaged_step(step, name, "swa", weight)


def average_of(state: TrainState, name: str) -> WeightAverage:
    """``state.averages[name]``, or a clear error listing the averages there are."""
    average = state.averages.get(name)
    if average is None:
        have = sorted(state.averages) or "none yet"
        msg = (
            f"`weights={name!r}`: the state holds no such average (it has: {have}). Averages "
            "are made by a step transform (ftrain.with_ema, ftrain.with_swa) at its first "
            "averaged step; use weights='model' for the model's own weights."
        )
        raise KeyError(msg)
    return average


@contextlib.contextmanager
def using_weights(state: TrainState, weights: str = "model") -> Iterator[TrainState]:
    """Put the averaged weights ``weights`` into ``state.model`` for the block, then back.

    Inside the block every reader of ``state.model`` sees the average: `eval_epoch`,
    `eval_step`, your own prediction loop, ``state.model.state_dict()`` (to export it). The
    exchange is exact (copies) and undone on the way out, exceptions included; ``"model"``
    changes nothing. Do not train inside the block.

    Args:
        state: a live state.
        weights: ``"model"`` or the name of an average in ``state.averages``.

    Yields:
        ``state`` itself (not consumed).

    Raises:
        KeyError: ``state.averages`` has no average of that name.

    Example:
        >>> import ftrain
        >>> state, _ = ftrain.with_ema(decay=0.5)(ftrain.testing.toy_state(),
        ...                                        ftrain.testing.toy_batch())
        >>> with ftrain.using_weights(state, "ema"):
        ...     ema_weights = {k: v.clone() for k, v in state.model.state_dict().items()}
    """
    check_live(state, "using_weights")
    check_type("weights", weights, str, "'model' or the name of an average")
    if weights == "model":
        yield state
        return
    average = average_of(state, weights)
    entries = _entries(state.model)
    _reshard(state.model)
    _exchange(entries, average.tensors)
    try:
        yield state
    finally:
        _reshard(state.model)
        _exchange(entries, average.tensors)


def _exchange(live: dict[str, torch.Tensor], averaged: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, t in live.items():
            a = averaged[k]
            held = t.detach().clone()
            t.copy_(a)
            a.copy_(held)


def _reshard(model: nn.Module) -> None:
    """Free FSDP's gathered parameters, so the next forward gathers the values now in the shards.

    FSDP keeps the root's parameters gathered after a forward outside training; after the
    shards change (weights exchanged), a forward would otherwise use the stale gathered copy.
    Only a model FSDP has sharded can hold such copies, and then its module is imported.
    """
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None:
        return
    for m in model.modules():
        if isinstance(m, fsdp.FSDPModule):
            m.reshard()
