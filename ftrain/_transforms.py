"""Step transforms: gradient clipping and accumulation, composed over the two phases of a step.

A `Step` is a training step made of two phases, ``forward_backward(state, batch)`` and
``apply_gradients(state, metrics)``, plus how many batches to accumulate before applying. It is
called like `train_step`. A transform takes a step and returns a new one with a phase wrapped, so
transforms compose with each other (and with ``toolz.compose_left``) in any order::

    step = with_accumulation(with_grad_clip(max_norm=1.0), every=4)
    state, history = fit(state, loaders, step_fn=step, max_epochs=10)

A transform of your own is a function ``Step -> Step`` that replaces a phase with
``attrs.evolve(step, apply_gradients=...)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch

from ._errors import check_int, check_number, describe
from ._state import TrainState, advance, check_live
from ._step import apply_gradients, forward_backward, train_step

__all__ = ["Step", "as_step", "with_accumulation", "with_grad_clip", "with_skip_nonfinite"]

Metrics = dict[str, torch.Tensor]
ForwardBackward = Callable[..., tuple[TrainState, Metrics]]
ApplyGradients = Callable[[TrainState, Metrics], tuple[TrainState, Metrics]]


def _apply_phase(state: TrainState, metrics: Metrics) -> tuple[TrainState, Metrics]:
    return apply_gradients(state), metrics


@attrs.frozen
class Step:
    """A training step built from its two phases; call it as ``step(state, batch)``.

    A `Step` is a `ftrain.EpochAwareStep`: `train_epoch` calls its `finish_epoch` at the end of
    every completed epoch, which applies a short last accumulation group.

    Attributes:
        forward_backward: ``(state, batch, *, loss_scale=1.0) -> (state, metrics)``; accumulates
            gradients of ``loss * loss_scale`` (`ftrain.forward_backward` by default).
        apply_gradients: ``(state, metrics) -> (state, metrics)``; the optimizer update. It may
            add metrics (the gradient norm).
        accumulate: batches per optimizer step (gradient accumulation); the loss of each is
            scaled by ``1 / accumulate``.

    Example:
        >>> import ftrain
        >>> step = ftrain.with_grad_clip(max_norm=1.0)
        >>> state, metrics = step(ftrain.testing.toy_state(), ftrain.testing.toy_batch())
        >>> state.step, sorted(metrics)
        (1, ['grad_norm', 'loss'])
    """

    forward_backward: ForwardBackward = forward_backward
    apply_gradients: ApplyGradients = _apply_phase
    accumulate: int = 1

    def __call__(self, state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
        if self.accumulate == 1:
            state, metrics = self.forward_backward(state, batch)
            return self.apply_gradients(state, metrics)
        state, metrics = self.forward_backward(state, batch, loss_scale=1.0 / self.accumulate)
        if state.micro_step < self.accumulate:
            return state, metrics
        return self.apply_gradients(state, metrics)

    def finish_epoch(self, state: TrainState) -> TrainState:
        """Apply a short last accumulation group at an epoch's end (called by `train_epoch`).

        Its gradients were scaled by ``1 / accumulate`` per batch; they are rescaled to the mean
        over the batches the group actually had before the update.
        """
        check_live(state, "finish_epoch")
        if state.micro_step == 0:
            return state
        if state.micro_step < self.accumulate:
            factor = self.accumulate / state.micro_step
            for p in state.model.parameters():
                if p.grad is not None:
                    p.grad.mul_(factor)
        state, _ = self.apply_gradients(state, {})
        return state


def as_step(step: Step | Callable[..., Any] = train_step) -> Step:
    """Return ``step`` as a `Step`; `train_step` itself becomes the default two-phase step."""
    if isinstance(step, Step):
        return step
    if step is train_step:
        return Step()
    msg = (
        "`step` must be a ftrain.Step (or ftrain.train_step) so a transform can reach its phases "
        f"(got {describe(step)}). Build yours as "
        "ftrain.Step(forward_backward=..., apply_gradients=...)."
    )
    raise TypeError(msg)


def with_grad_clip(
    step: Step | Callable[..., Any] = train_step,
    *,
    max_norm: float | None = None,
    max_value: float | None = None,
    norm_type: float = 2.0,
) -> Step:
    """Clip gradients before the optimizer update; reports ``grad_norm`` (before clipping).

    Under ``16-mixed`` precision the gradients are unscaled first, so thresholds are in true
    gradient units. ``grad_norm`` is a device tensor (no host sync).

    Args:
        step: the step to transform (default `train_step`).
        max_norm: clip the total gradient norm to this value (`clip_grad_norm_`).
        max_value: clamp every gradient element to ``[-max_value, max_value]``.
        norm_type: the norm for ``max_norm`` (2 by default; ``inf`` for the max norm).

    Example:
        >>> import ftrain
        >>> step = ftrain.with_grad_clip(max_norm=0.5)
        >>> state, metrics = step(ftrain.testing.toy_state(), ftrain.testing.toy_batch())
        >>> bool(metrics["grad_norm"] > 0)
        True
    """
    base = as_step(step)
    if max_norm is None and max_value is None:
        msg = "`with_grad_clip` needs `max_norm` or `max_value` (got neither)."
        raise ValueError(msg)
    for name, value in (("max_norm", max_norm), ("max_value", max_value)):
        if value is not None:
            check_number(name, value, positive=True)
    inner = base.apply_gradients

    def clipped(state: TrainState, metrics: Metrics) -> tuple[TrainState, Metrics]:
        if state.scaler is not None:
            state.scaler.unscale_(state.optimizer)
        params = [p for p in state.model.parameters() if p.grad is not None]
        if max_value is not None:
            torch.nn.utils.clip_grad_value_(params, max_value)
        if max_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
            metrics = {**metrics, "grad_norm": norm.detach()}
        return inner(state, metrics)

    return attrs.evolve(base, apply_gradients=clipped)


def with_accumulation(step: Step | Callable[..., Any] = train_step, *, every: int) -> Step:
    """Accumulate gradients over ``every`` batches per optimizer step.

    Each batch's loss is scaled by ``1 / every`` so the update uses the mean gradient. The step
    counter, the per-step LR scheduler and the log interval count optimizer steps, not batches.
    At an epoch's end a short last group is applied with its gradients rescaled to the mean over
    the batches it had (`train_epoch` calls `Step.finish_epoch`).

    Example:
        >>> import ftrain
        >>> step = ftrain.with_accumulation(every=2)
        >>> state = ftrain.testing.toy_state()
        >>> state, _ = step(state, ftrain.testing.toy_batch())
        >>> (state.step, state.micro_step)
        (0, 1)
        >>> state, _ = step(state, ftrain.testing.toy_batch())
        >>> (state.step, state.micro_step)
        (1, 0)
    """
    base = as_step(step)
    check_int("every", every, minimum=1)
    return attrs.evolve(base, accumulate=base.accumulate * every)


def with_skip_nonfinite(step: Step | Callable[..., Any] = train_step) -> Step:
    """Skip the optimizer update of any step whose loss or gradients are not finite.

    A skipped step leaves parameters and optimizer state untouched (the gradients are dropped),
    does not advance ``state.step``, and is left out of the epoch's averages; ``metrics`` report
    ``skipped`` (1.0 or 0.0). Deciding costs one host sync per optimizer step, which is why this
    is an opt-in transform and not the default (by default `fit` raises `NonFiniteError` at the
    next log interval).

    Example:
        >>> import math, torch, ftrain
        >>> step = ftrain.with_skip_nonfinite()
        >>> x, y = ftrain.testing.toy_batch()
        >>> state, metrics = step(ftrain.testing.toy_state(), (x, torch.full_like(y, math.nan)))
        >>> state.step, float(metrics["skipped"])
        (0, 1.0)
    """
    base = as_step(step)
    inner = base.apply_gradients

    def guarded(state: TrainState, metrics: Metrics) -> tuple[TrainState, Metrics]:
        grads = [p.grad for p in state.model.parameters() if p.grad is not None]
        checks = [torch.isfinite(metrics["loss"]).reshape(1)]
        checks += [torch.isfinite(g).all().reshape(1) for g in grads]
        if bool(torch.cat(checks).all()):  # the documented sync
            state, metrics = inner(state, metrics)
            return state, {**metrics, "skipped": torch.zeros((), device=state.device)}
        state.optimizer.zero_grad(set_to_none=True)
        zeros = {
            k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else 0.0
            for k, v in metrics.items()
        }
        skipped = torch.ones((), device=state.device)
        zeros["count"] = torch.zeros((), dtype=torch.long, device=state.device)
        zeros["skipped"] = skipped
        return advance(state, "with_skip_nonfinite", micro_step=0), zeros

    return attrs.evolve(base, apply_gradients=guarded)
