"""What a loss function is given and what it may return: `StepContext` and `Loss`.

A loss function is ``loss_fn(model, batch)`` or ``loss_fn(model, batch, ctx)``; the second form
gets a `StepContext` with the run state a step threads through (the carried value, what earlier
phases of this step handed over, the state's named extras). It returns one of:

- a scalar loss tensor;
- ``(loss, metrics)`` with ``metrics`` a dict of scalar tensors;
- a `Loss` record, which can also say how many samples (or tokens) the loss covers, whether it is
  a mean or a sum over them, the next carried value and values to hand to later phases.

`read_output` turns any of these into one normalised `Output`; it is on the hot path, so the two
plain forms cost a type check and a dict build, nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

import attrs
import torch

__all__ = ["UNSET", "Loss", "Output", "StepContext", "read_output"]


class _Unset:
    """The marker for "no value given" (a carry of None is a value)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNSET"

    def __reduce__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()

_EMPTY: Mapping[str, Any] = {}
_RESERVED = ("loss", "count")


@attrs.frozen(kw_only=True)
class StepContext:
    """What a three-argument ``loss_fn(model, batch, ctx)`` is given besides the model and batch.

    Attributes:
        carry: the value carried from the previous batch (an RNN's hidden state), as made by the
            state's ``carry_init`` at the start of each epoch and evaluation; None when unused.
        handoff: values that earlier phases of this step handed over with ``Loss(handoff=...)``
            (a DCGAN's generated batch), read-only.
        extras: the state's named run state (``state.extras``): generators, counters, records.
        step: the state's step counter when the batch is processed.
        phase: the name of the phase being run, or None for a single-optimizer state.
        training: False when the loss is evaluated (`eval_step`, `eval_epoch`).
    """

    carry: Any = None
    handoff: Mapping[str, Any] = _EMPTY
    extras: Mapping[str, Any] = _EMPTY
    step: int = 0
    phase: str | None = None
    training: bool = True


def _check_reduction(instance: Any, attribute: Any, value: object) -> None:
    if value not in ("mean", "sum"):
        msg = f"`Loss.reduction` must be 'mean' or 'sum' (got {value!r})."
        raise ValueError(msg)


@attrs.frozen
class Loss:
    """A loss with what ftrain needs to weight, log and thread it.

    Attributes:
        value: the scalar loss tensor the gradient is taken of, exactly as given.
        metrics: scalar tensors to log beside it (names other than ``loss`` and ``count``).
        count: how many samples (or tokens) the loss covers; weights the epoch means and the
            accumulated gradient. Default: the batch's leading dimension.
        reduction: ``"mean"`` (the value is a mean over ``count``) or ``"sum"`` (a sum over
            ``count``, like the VAE's ELBO: logs then show ``value / count``).
        carry: the value to carry to the next batch (detached by the step); leave unset to keep
            the current one.
        handoff: values later phases of this step receive in ``ctx.handoff``.

    Example:
        >>> import torch
        >>> out = Loss(torch.tensor(12.0), count=4, reduction="sum")
        >>> from ftrain._outputs import read_output
        >>> float(read_output(out).metrics["loss"])
        3.0
    """

    value: torch.Tensor
    metrics: Mapping[str, Any] = attrs.field(factory=dict, kw_only=True)
    count: Any = attrs.field(default=None, kw_only=True)
    reduction: Literal["mean", "sum"] = attrs.field(
        default="mean", kw_only=True, validator=_check_reduction
    )
    carry: Any = attrs.field(default=UNSET, kw_only=True)
    handoff: Mapping[str, Any] = attrs.field(factory=dict, kw_only=True)


class Output(NamedTuple):
    """A loss function's result, normalised by `read_output` (a tuple: built on the hot path)."""

    loss: torch.Tensor
    """The tensor to backpropagate, as the loss function returned it."""
    metrics: dict[str, Any]
    """``"loss"`` (per sample for a sum), ``"count"`` when known, and the reported metrics,
    detached."""
    reduction: str = "mean"
    carry: Any = UNSET
    handoff: Mapping[str, Any] = _EMPTY


def read_output(out: Any, where: str = "loss_fn") -> Output:
    """Normalise what a loss function returned; raise one clear error for anything else.

    Args:
        out: a scalar tensor, ``(loss, metrics)`` or a `Loss`.
        where: how to name the function in error messages.

    Returns:
        An `Output` whose ``metrics`` holds the detached ``"loss"`` (divided by the count for a
        sum), ``"count"`` when the loss reported one, and the other metrics, detached.

    Example:
        >>> import torch
        >>> out = read_output((torch.tensor(2.0, requires_grad=True), {"acc": torch.tensor(0.5)}))
        >>> sorted(out.metrics), out.loss.requires_grad
        (['acc', 'loss'], True)
    """
    kind = type(out)
    if kind is torch.Tensor or kind is torch.nn.Parameter:
        _check_loss(out, where)
        return Output(out, {"loss": out.detach()})
    if kind is tuple:
        if len(out) != 2 or not isinstance(out[1], Mapping):
            msg = (
                f"`{where}` must return a scalar loss tensor, (loss, metrics) with metrics a dict, "
                f"or ftrain.Loss(...) (got a tuple of {len(out)}: "
                f"{', '.join(type(v).__name__ for v in out)})."
            )
            raise TypeError(msg)
        loss, extra = out
        _check_loss(loss, where)
        metrics = {"loss": loss.detach()}
        if extra:
            _add_metrics(metrics, extra, where, allow_count=True)
        return Output(loss, metrics)
    if isinstance(out, Loss):
        loss = out.value
        _check_loss(loss, where)
        count = out.count
        if isinstance(count, bool) or not isinstance(count, int | torch.Tensor | None):
            msg = (
                f"`Loss.count` returned by `{where}` must be an int or a scalar tensor "
                f"(got {type(count).__name__})."
            )
            raise TypeError(msg)
        reported = loss.detach()
        if out.reduction == "sum":
            if count is None:
                msg = (
                    f"`{where}` returned Loss(reduction='sum') without `count`: say how many "
                    "samples (or tokens) the sum covers, e.g. Loss(value, count=len(x), "
                    "reduction='sum')."
                )
                raise ValueError(msg)
            reported = reported / count
        metrics = {"loss": reported}
        if count is not None:
            metrics["count"] = count
        if out.metrics:
            _add_metrics(metrics, out.metrics, where, allow_count=False)
        if not isinstance(out.handoff, Mapping):
            msg = (
                f"`Loss.handoff` returned by `{where}` must be a dict of named values "
                f"(got {type(out.handoff).__name__})."
            )
            raise TypeError(msg)
        return Output(loss, metrics, out.reduction, out.carry, out.handoff)
    if isinstance(out, int | float):
        _check_loss(out, where)  # says: return the tensor, not loss.item()
    msg = (
        f"`{where}` must return a scalar loss tensor, (loss, metrics) or ftrain.Loss(...) "
        f"(got {type(out).__name__})."
    )
    if isinstance(out, torch.nn.Module):
        msg += " It returned a module: was a criterion such as nn.MSELoss() passed as loss_fn?"
    raise TypeError(msg)


def _check_loss(loss: object, where: str) -> None:
    if not isinstance(loss, torch.Tensor):
        msg = (
            f"`{where}` must return the loss as a torch.Tensor (got {type(loss).__name__}). "
            "Return the tensor, not loss.item()."
        )
        raise TypeError(msg)
    if loss.ndim != 0:
        msg = (
            f"`{where}` must return a scalar loss (got a tensor of shape {tuple(loss.shape)}). "
            "Reduce it, e.g. criterion(..., reduction='mean') or loss.mean()."
        )
        raise ValueError(msg)
    if not (loss.is_floating_point() or loss.is_complex()):
        msg = (
            f"`{where}` must return a floating-point loss (got a {loss.dtype} tensor). Compute "
            "the loss from the model's outputs, e.g. with a criterion, not from labels or counts."
        )
        raise TypeError(msg)


def _add_metrics(
    metrics: dict[str, Any], extra: Mapping[str, Any], where: str, *, allow_count: bool
) -> None:
    for key, value in extra.items():
        if type(key) is not str:
            msg = (
                f"`{where}` reported a metric named {key!r} ({type(key).__name__}); metric names "
                "must be str, e.g. {'acc': acc}."
            )
            raise TypeError(msg)
        if key in _RESERVED and not (allow_count and key == "count"):
            msg = f"`{where}` reported a metric named {key!r}, which is reserved: " + (
                "the reported loss is the one the gradient is taken of. Name yours "
                "differently, e.g. 'nll'."
                if key == "loss"
                else "give the count as Loss(..., count=n)."
            )
            raise ValueError(msg)
        if isinstance(value, torch.Tensor):
            if value.ndim != 0 and key != "count":
                msg = (
                    f"`{where}` reported metric {key!r} as a tensor of shape "
                    f"{tuple(value.shape)}; metrics must be scalars. Reduce it, e.g. .mean()."
                )
                raise ValueError(msg)
            metrics[key] = value.detach()
        elif isinstance(value, int | float) and not isinstance(value, bool):
            metrics[key] = value
        else:
            msg = (
                f"`{where}` reported metric {key!r} as {type(value).__name__} {value!r:.40}; "
                "metrics must be scalar tensors or numbers."
            )
            raise TypeError(msg)
