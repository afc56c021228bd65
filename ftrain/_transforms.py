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
from ._passes import update_scaler
from ._phases import is_due
from ._state import TrainState, advance, check_live
from ._step import apply_gradients, forward_backward, train_step

__all__ = ["Step", "as_step", "with_accumulation", "with_grad_clip", "with_skip_nonfinite"]

Metrics = dict[str, torch.Tensor]
ForwardBackward = Callable[..., tuple[TrainState, Metrics]]
ApplyGradients = Callable[..., tuple[TrainState, Metrics]]
"""``(state, metrics, *, phase=None) -> (state, metrics)``; ``phase`` names the phase to update
on a state with several (a transform for such states passes it on)."""


def _apply_phase(
    state: TrainState, metrics: Metrics, *, phase: str | None = None
) -> tuple[TrainState, Metrics]:
    return apply_gradients(state, phase=phase), metrics


@attrs.frozen
class Step:
    """A training step built from its two phases; call it as ``step(state, batch)``.

    A `Step` is a `ftrain.EpochAwareStep`: `train_epoch` calls its `finish_epoch` at the end of
    every completed epoch, which applies a short last accumulation group.

    Attributes:
        forward_backward: ``(state, batch) -> (state, metrics)``; accumulates the batch's
            gradients, weighted by its count (`ftrain.forward_backward` by default).
        apply_gradients: ``(state, metrics) -> (state, metrics)``; the optimizer update. It may
            add metrics (the gradient norm).
        accumulate: batches per optimizer step (gradient accumulation); each weighs by its
            sample (or token) count, so the update is that of the whole group as one batch.

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
        if state.phases[0].name:
            return self._run_phases(state, batch)
        if self.accumulate == 1:
            state, metrics = self.forward_backward(state, batch)
            return self.apply_gradients(state, metrics)
        state, metrics = self.forward_backward(state, batch)
        if state.micro_step < self.accumulate:
            return state, metrics
        return self.apply_gradients(state, metrics)

    def _run_phases(self, state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
        """Every due phase: its forward/backward, then (at a group's last batch) its update."""
        check_live(state, "Step")
        last = state.micro_step + 1 >= self.accumulate
        metrics: Metrics = {}
        for p in state.phases:
            if not is_due(p, state.step):
                continue
            state, m = self.forward_backward(state, batch, phase=p.name)
            if last:
                state, m = self.apply_gradients(state, m, phase=p.name)
            metrics.update(m)
        if not last:
            return advance(state, "Step", micro_step=state.micro_step + 1, handoff={}), metrics
        metrics.update(update_scaler(state))
        return advance(state, "Step", step=state.step + 1, micro_step=0, handoff={}), metrics

    def finish_epoch(self, state: TrainState) -> TrainState:
        """Apply a short last accumulation group at an epoch's end (called by `train_epoch`).

        Its gradients already are the mean over the samples the group had (accumulation weighs
        every batch by its count), so the update is that of the short group as one batch.
        """
        check_live(state, "finish_epoch")
        if state.micro_step == 0:
            return state
        if not state.phases[0].name:
            state, _ = self.apply_gradients(state, {})
            return state
        for phase in state.phases:
            if is_due(phase, state.step):
                state, _ = self.apply_gradients(state, {}, phase=phase.name)
        update_scaler(state)
        return advance(state, "finish_epoch", step=state.step + 1, micro_step=0, handoff={})


def _phase_of(state: TrainState, phase: str | None) -> tuple[Any, str]:
    """The optimizer a transform acts on and the prefix of the metrics it adds."""
    if phase is None:
        return state.optimizer, ""
    return state.phase(phase).optimizer, f"{phase}_" if phase else ""


def _call(
    inner: ApplyGradients, state: TrainState, metrics: Metrics, phase: str | None
) -> tuple[TrainState, Metrics]:
    # A user's own apply_gradients written for one optimizer need not take `phase`.
    if phase is None:
        return inner(state, metrics)
    return inner(state, metrics, phase=phase)


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

    def clipped(
        state: TrainState, metrics: Metrics, *, phase: str | None = None
    ) -> tuple[TrainState, Metrics]:
        optimizer, prefix = _phase_of(state, phase)
        if state.scaler is not None:
            state.scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if max_value is not None:
            torch.nn.utils.clip_grad_value_(params, max_value)
        if max_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
            metrics = {**metrics, prefix + "grad_norm": norm.detach()}
        return _call(inner, state, metrics, phase)

    return attrs.evolve(base, apply_gradients=clipped)


def with_accumulation(step: Step | Callable[..., Any] = train_step, *, every: int) -> Step:
    """Accumulate gradients over ``every`` batches per optimizer step.

    Exact: each batch weighs by its count (its leading dimension, or the ``count`` its loss
    reports, e.g. tokens), so the update equals that of the whole group as one batch, uneven
    batches and processes with different counts included (see `forward_backward`). The step
    counter, the per-step LR scheduler and the log interval count optimizer steps, not batches.
    At an epoch's end a short last group is applied as it is (`train_epoch` calls
    `Step.finish_epoch`).

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

    def guarded(
        state: TrainState, metrics: Metrics, *, phase: str | None = None
    ) -> tuple[TrainState, Metrics]:
        optimizer, prefix = _phase_of(state, phase)
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        checks = [torch.isfinite(metrics[prefix + "loss"]).reshape(1)]
        checks += [torch.isfinite(g).all().reshape(1) for g in grads]
        if bool(torch.cat(checks).all()):  # the documented sync
            state, metrics = _call(inner, state, metrics, phase)
            return state, {**metrics, prefix + "skipped": torch.zeros((), device=state.device)}
        optimizer.zero_grad(set_to_none=True)
        zeros = {
            k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else 0.0
            for k, v in metrics.items()
        }
        zeros[prefix + "skipped"] = torch.ones((), device=state.device)
        if phase is not None:  # one phase skips its update; the step goes on
            return state, zeros
        zeros["count"] = torch.zeros((), dtype=torch.long, device=state.device)
        skips = state.skipped_steps + 1  # the retried step draws fresh random numbers
        return advance(state, "with_skip_nonfinite", micro_step=0, skipped_steps=skips), zeros

    return attrs.evolve(base, apply_gradients=guarded)
