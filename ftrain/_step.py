"""The step functions: one batch in, ``(new state, metrics)`` out.

Nothing here calls ``.item()`` or otherwise waits for the device: metrics are detached tensors on
the state's device. Parameters, gradients and optimizer buffers are updated in place, so the input
state is consumed (see `TrainState`).

A state has one or several phases (`ftrain.Phase`); each backpropagates only into its own
optimizer's parameters (``inputs=``), so no phase writes or reads another's gradients. The
single-optimizer path is the hot one and stays free of per-phase bookkeeping.

Over 300 lines because the phase functions, the whole-step functions built from them and the
evaluation forward share the private loss call, backward and update, which only stay identical
(bit for bit, as the tests demand) by living in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ._outputs import UNSET, read_output
from ._passes import (
    apply_update,
    autocast,
    call_with_context,
    initial_carry,
    prefixed,
    prepare,
    run_phase,
    update_phase,
    update_scaler,
)
from ._phases import Phase, is_due
from ._state import TrainState, advance, check_live
from ._streams import EVAL, seed_site

__all__ = [
    "apply_gradients",
    "end_step",
    "eval_metrics",
    "eval_mode",
    "eval_outputs",
    "eval_step",
    "forward_backward",
    "train_step",
]

Metrics = dict[str, torch.Tensor]


def forward_backward(
    state: TrainState, batch: Any, *, phase: str | None = None, loss_scale: float = 1.0
) -> tuple[TrainState, Metrics]:
    """Run ``loss_fn`` on ``batch`` and accumulate gradients; no optimizer step.

    The batch is moved to ``state.device`` first. Randomness inside ``loss_fn`` (dropout) is
    seeded from ``(state.seed, state.stream, state.step, state.micro_step, phase)``, so the same
    state and batch give the same gradients. The backward pass writes gradients only into the
    parameters of the phase's optimizer (``backward(inputs=...)``): a loss that runs through
    another model (a generator's loss through the discriminator) leaves that model's gradients
    alone.

    Args:
        state: a live state. It is consumed: its gradient buffers are accumulated into.
        batch: tensors in any nesting of tuples, lists, dicts and namedtuples.
        phase: the phase to run, on a state with several (`ftrain.Phase`); None on a
            single-optimizer state. A named phase's metrics are prefixed with its name, its
            ``Loss(handoff=...)`` is kept in ``state.handoff`` for the later phases of the step,
            and the counters wait for `end_step`.
        loss_scale: an extra factor on this batch's gradient; the reported loss is unscaled.
            Accumulation needs none: calls before an `apply_gradients` add up to the gradient
            of their batches as one batch, each weighed by its count (the leading dimension,
            or ``Loss(count=...)``), across processes too.

    Returns:
        ``(new_state, metrics)``: on a single-optimizer state ``new_state.micro_step`` is one
        higher; ``metrics`` has ``"loss"`` and whatever ``loss_fn`` reported, as detached device
        tensors.

    Raises:
        StaleStateError: ``state`` was already consumed.
        TypeError, ValueError: ``loss_fn`` returned something other than a scalar tensor loss.

    Example:
        >>> import ftrain
        >>> state = ftrain.testing.toy_state()
        >>> state, metrics = ftrain.forward_backward(state, ftrain.testing.toy_batch())
        >>> state.micro_step, state.step
        (1, 0)
    """
    check_live(state, "forward_backward")
    index, p = _phase(state, phase, "forward_backward")
    batch = prepare(state, batch)
    changes: dict[str, Any] = {}  # the running count of exact accumulation (`weigh`)
    metrics, carry, handoff = run_phase(state, p, index, batch, loss_scale, state.handoff, changes)
    if phase is None:
        changes["micro_step"] = state.micro_step + 1
    else:
        metrics = prefixed(metrics, p.name)
        if handoff:
            changes["handoff"] = {**state.handoff, **handoff}
    if carry is not UNSET:
        changes["carry"] = carry
    return advance(state, "forward_backward", **changes), metrics


def apply_gradients(state: TrainState, *, phase: str | None = None) -> TrainState:
    """Take one optimizer step with the accumulated gradients.

    Steps the optimizer (through the ``GradScaler`` under ``16-mixed``), steps the LR scheduler
    when ``scheduler_interval="step"``, zeroes the gradients (``set_to_none``) and returns a state
    with ``step + 1`` and ``micro_step = 0``. Clipping is a step transform
    (`ftrain.with_grad_clip`), not a flag here.

    Args:
        state: a live state with gradients from `forward_backward`. It is consumed.
        phase: on a state with several phases, the one to update: only its optimizer and
            scheduler step, and the counters wait for `end_step`, which closes the step.

    Returns:
        The new state.

    Raises:
        StaleStateError: ``state`` was already consumed.
        ValueError: no gradients were accumulated since the last optimizer step.

    Example:
        >>> import ftrain
        >>> state = ftrain.testing.toy_state()
        >>> state, _ = ftrain.forward_backward(state, ftrain.testing.toy_batch())
        >>> state = ftrain.apply_gradients(state)
        >>> state.step, state.micro_step
        (1, 0)
    """
    check_live(state, "apply_gradients")
    _, p = _phase(state, phase, "apply_gradients")
    if phase is not None:
        update_phase(state, p)
        return advance(state, "apply_gradients")
    if state.micro_step == 0:
        msg = (
            "`state` has no accumulated gradients (micro_step=0): call "
            "`forward_backward(state, batch)` before `apply_gradients(state)`."
        )
        raise ValueError(msg)
    apply_update(state, p)
    return advance(state, "apply_gradients", step=state.step + 1, micro_step=0)


def end_step(state: TrainState) -> TrainState:
    """Close a step of a state with several phases: ``step + 1``, as `train_step` does.

    A custom loop runs ``forward_backward(state, batch, phase=name)`` and
    ``apply_gradients(state, phase=name)`` for each phase it wants, then calls this once: it
    updates the ``GradScaler`` (``16-mixed``) once for all the step's optimizers, forgets the
    step's handoff, and sets ``step + 1`` and ``micro_step = 0``.

    Example:
        >>> import ftrain
        >>> state = ftrain.testing.toy_state()
        >>> state, _ = ftrain.forward_backward(state, ftrain.testing.toy_batch(), phase="")
        >>> state = ftrain.apply_gradients(state, phase="")
        >>> ftrain.end_step(state).step
        1
    """
    check_live(state, "end_step")
    update_scaler(state)
    return advance(state, "end_step", step=state.step + 1, micro_step=0, handoff={})


def train_step(state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
    """One training step: `forward_backward` then `apply_gradients`, for every due phase.

    On a state with several phases, each phase due at this step (see `Phase.every`) runs its
    forward, backward and update in the declared order, handing ``Loss(handoff=...)`` values to
    the later ones; its metrics are prefixed with its name (``d_loss``, ``g_loss``).

    Args:
        state: a live state. It is consumed: parameters and optimizer buffers change in place.
        batch: tensors in any nesting of tuples, lists, dicts and namedtuples; moved to
            ``state.device``.

    Returns:
        ``(new_state, metrics)`` with ``new_state.step == state.step + 1`` and ``metrics`` the
        detached device tensors of `forward_backward`. Nothing is synced to the host.

    Raises:
        StaleStateError: ``state`` was already consumed; keep copies with `ftrain.fork`.

    Example:
        >>> import ftrain
        >>> state = ftrain.testing.toy_state()
        >>> state, metrics = ftrain.train_step(state, ftrain.testing.toy_batch())
        >>> state.step, metrics["loss"].device.type
        (1, 'cpu')
    """
    check_live(state, "train_step")
    phases = state.phases
    p = phases[0]
    if p.name or len(phases) != 1:
        return _train_phases(state, batch)
    metrics, carry, _ = run_phase(state, p, 0, prepare(state, batch))
    skipped = apply_update(state, p)
    if skipped is not None:
        metrics["skipped"] = skipped
    if carry is UNSET:
        return advance(state, "train_step", step=state.step + 1, micro_step=0), metrics
    return advance(state, "train_step", step=state.step + 1, micro_step=0, carry=carry), metrics


def _train_phases(state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
    batch = prepare(state, batch)
    metrics: Metrics = {}
    handoff: dict[str, Any] = {}
    carry = UNSET
    for index, p in enumerate(state.phases):
        if not is_due(p, state.step):
            continue
        if carry is not UNSET:  # a phase sees the carry the earlier ones returned
            state = advance(state, "train_step", carry=carry)
        out, carry, given = run_phase(state, p, index, batch, 1.0, handoff)
        handoff.update(given)
        update_phase(state, p)
        metrics.update(prefixed(out, p.name))
    changes: dict[str, Any] = {"step": state.step + 1, "micro_step": 0}
    if carry is not UNSET:
        changes["carry"] = carry
    metrics.update(update_scaler(state))
    return advance(state, "train_step", **changes), metrics


def eval_step(state: TrainState, batch: Any) -> Metrics:
    """Measure ``loss_fn`` on ``batch`` without gradients, in eval mode; the state is unchanged.

    Every module's ``training`` flag is restored afterwards exactly as it was. A state with
    several phases measures every phase's loss in order (handoffs included), prefixed; a
    carried value starts from ``carry_init``, as at the start of an evaluation.

    Returns:
        ``metrics``: ``"loss"`` and whatever ``loss_fn`` reported, as detached device tensors.

    Example:
        >>> import ftrain
        >>> state = ftrain.testing.toy_state()
        >>> metrics = ftrain.eval_step(state, ftrain.testing.toy_batch())
        >>> state.step, sorted(metrics)
        (0, ['loss'])
    """
    check_live(state, "eval_step")
    with eval_mode(state.model):
        return eval_metrics(state, batch)


def eval_metrics(state: TrainState, batch: Any, index: int = 0) -> Metrics:
    """`eval_step` without the mode switch and checks (for loops that switch once per epoch);
    ``index`` is the batch's place in the evaluation, which picks its random stream."""
    return eval_outputs(state, batch, UNSET, index)[0]


def eval_outputs(state: TrainState, batch: Any, carry: Any, index: int = 0) -> tuple[Metrics, Any]:
    """One evaluation forward with its own ``carry`` (`UNSET`: make one); returns the next carry.
    ``index`` is the batch's place in the evaluation: each draws from its own stream."""
    batch = prepare(state, batch)
    seed_site(state, EVAL, index)
    # The strategy names the module: under DDP the unwrapped model, whose forward syncs nothing
    # (the wrapper's would broadcast rank 0's buffers over the other ranks' ones).
    module = state.strategy.eval_module(state)
    single = not state.phases[0].name
    metrics: Metrics = {}
    handoff: dict[str, Any] = {}
    with torch.no_grad(), autocast(state):
        for p in state.phases:
            if p.takes_context:
                if carry is UNSET:
                    carry = initial_carry(state, module, batch)
                out = call_with_context(state, p, module, batch, carry, handoff, training=False)
                if out.carry is not UNSET:
                    carry = out.carry
                handoff.update(out.handoff)
            else:
                out = read_output(p.loss_fn(module, batch))
            if single:
                return out.metrics, carry
            metrics.update(prefixed(out.metrics, p.name))
    return metrics, carry


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, then restore each one's own ``training`` flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _phase(state: TrainState, name: str | None, where: str) -> tuple[int, Phase]:
    phases = state.phases
    if name is None:
        if phases[0].name:
            msg = (
                f"`{where}` on a state with named phases needs `phase=` "
                f"(one of {[p.name for p in phases]}), or use `train_step` to run them all."
            )
            raise ValueError(msg)
        return 0, phases[0]
    for i, p in enumerate(phases):
        if p.name == name:
            return i, p
    msg = f"`phase` passed to `{where}` must be one of {[p.name for p in phases]} (got {name!r})."
    raise ValueError(msg)
