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
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from ._batch import cast_floating, move
from ._outputs import UNSET, StepContext, read_output
from ._phases import Phase
from ._rng import mix, seed_step
from ._state import TrainState, advance, check_live

__all__ = [
    "apply_gradients",
    "end_step",
    "eval_metrics",
    "eval_mode",
    "eval_outputs",
    "eval_step",
    "forward_backward",
    "train_step",
    "update_scaler",
]

Metrics = dict[str, torch.Tensor]
_NO_HANDOFF: Mapping[str, Any] = {}

try:  # the engine call behind `Tensor.backward`, without its per-call argument handling
    from torch.autograd.graph import _engine_run_backward as _run_backward
except ImportError:  # pragma: no cover - older torch

    def _run_backward(  # type: ignore[misc]
        tensors: Any, grads: Any, retain: bool, create: bool, inputs: Any, **kwargs: Any
    ) -> Any:
        return torch.autograd.backward(tensors, grads, inputs=inputs)


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
        loss_scale: the gradient is that of ``loss * loss_scale`` (``1 / k`` when accumulating
            over k batches); the reported loss is unscaled.

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
    batch = _prepare(state, batch)
    metrics, carry, handoff = _forward_backward(state, p, index, batch, loss_scale, state.handoff)
    if phase is None:
        changes: dict[str, Any] = {"micro_step": state.micro_step + 1}
    else:
        metrics = _prefixed(metrics, p.name)
        changes = {"handoff": {**state.handoff, **handoff}} if handoff else {}
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
        _update(state, p)
        return advance(state, "apply_gradients")
    if state.micro_step == 0:
        msg = (
            "`state` has no accumulated gradients (micro_step=0): call "
            "`forward_backward(state, batch)` before `apply_gradients(state)`."
        )
        raise ValueError(msg)
    _apply(state, p)
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
    if len(phases) != 1:
        return _train_phases(state, batch)
    p = phases[0]
    metrics, carry, _ = _forward_backward(state, p, 0, _prepare(state, batch))
    skipped = _apply(state, p)
    if skipped is not None:
        metrics["skipped"] = skipped
    if carry is UNSET:
        return advance(state, "train_step", step=state.step + 1, micro_step=0), metrics
    return advance(state, "train_step", step=state.step + 1, micro_step=0, carry=carry), metrics


def _train_phases(state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
    batch = _prepare(state, batch)
    metrics: Metrics = {}
    handoff: dict[str, Any] = {}
    carry = UNSET
    for index, p in enumerate(state.phases):
        if not is_due(p, state.step):
            continue
        if carry is not UNSET:  # a phase sees the carry the earlier ones returned
            state = advance(state, "train_step", carry=carry)
        out, carry, given = _forward_backward(state, p, index, batch, 1.0, handoff)
        handoff.update(given)
        _update(state, p)
        metrics.update(_prefixed(out, p.name))
    changes: dict[str, Any] = {"step": state.step + 1, "micro_step": 0}
    if carry is not UNSET:
        changes["carry"] = carry
    metrics.update(update_scaler(state))
    return advance(state, "train_step", **changes), metrics


def update_scaler(state: TrainState) -> Metrics:
    """Update the GradScaler once after a step's phases; report whether it skipped (device)."""
    scaler = state.scaler
    if scaler is None or scaler._scale is None:
        return {}
    before = scaler._scale.clone()
    scaler.update()
    return {"skipped": (scaler._scale < before).float()}


def is_due(phase: Phase, step: int) -> bool:
    """Whether ``phase`` runs at ``step``: every step, or where ``step % every == every - 1``."""
    every = phase.every
    return every == 1 or step % every == every - 1


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


def eval_metrics(state: TrainState, batch: Any) -> Metrics:
    """`eval_step` without the mode switch and checks (for loops that switch once per epoch)."""
    return eval_outputs(state, batch, UNSET)[0]


def eval_outputs(state: TrainState, batch: Any, carry: Any) -> tuple[Metrics, Any]:
    """One evaluation forward with its own ``carry`` (`UNSET`: make one); returns the next carry."""
    batch = _prepare(state, batch)
    seed_step(mix(state.seed, 0x5EED), state.step, 0, state.device.type == "cuda", 0, state.stream)
    # The strategy names the module: under DDP the unwrapped model, whose forward syncs nothing
    # (the wrapper's would broadcast rank 0's buffers over the other ranks' ones).
    module = state.strategy.eval_module(state)
    single = len(state.phases) == 1
    metrics: Metrics = {}
    handoff: dict[str, Any] = {}
    with torch.no_grad(), _autocast(state):
        for p in state.phases:
            if p.takes_context:
                if carry is UNSET:
                    carry = _initial_carry(state, module, batch)
                ctx = StepContext(
                    carry=carry,
                    handoff=handoff,
                    extras=state.extras,
                    step=state.step,
                    phase=p.name or None,
                    training=False,
                )
                out = read_output(p.loss_fn(module, batch, ctx))
                if out.carry is not UNSET:
                    carry = out.carry
                handoff.update(out.handoff)
            else:
                out = read_output(p.loss_fn(module, batch))
            if single:
                return out.metrics, carry
            metrics.update(_prefixed(out.metrics, p.name))
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
        if len(phases) != 1:
            msg = (
                f"`{where}` on a state with several phases needs `phase=` "
                f"(one of {[p.name for p in phases]}), or use `train_step` to run them all."
            )
            raise ValueError(msg)
        return 0, phases[0]
    for i, p in enumerate(phases):
        if p.name == name:
            return i, p
    msg = f"`phase` passed to `{where}` must be one of {[p.name for p in phases]} (got {name!r})."
    raise ValueError(msg)


def _prepare(state: TrainState, batch: Any) -> Any:
    device = state.device
    batch = move(batch, device, non_blocking=device.type == "cuda")
    if state.batch_dtype is not None:
        batch = cast_floating(batch, state.batch_dtype)
    return batch


def _initial_carry(state: TrainState, module: nn.Module, batch: Any) -> Any:
    init = state.carry_init
    return None if init is None else init(module, batch)


def _forward_backward(
    state: TrainState,
    p: Phase,
    index: int,
    batch: Any,
    loss_scale: float = 1.0,
    handoff: Mapping[str, Any] = _NO_HANDOFF,
) -> tuple[Metrics, Any, Mapping[str, Any]]:
    """Loss and backward of phase ``p`` on a prepared batch: ``(metrics, carry, handoff)``.

    ``carry`` is `UNSET` when the state's carry stays as it is.
    """
    seed_step(
        state.seed,
        state.step,
        state.micro_step,
        state.device.type == "cuda",
        state.rank,
        state.stream,
        index,
    )
    module = state.module
    carry = UNSET
    if p.takes_context:
        carry = state.carry
        made = carry is UNSET
        if made:
            carry = _initial_carry(state, module, batch)
        ctx = StepContext(
            carry=carry,
            handoff=handoff,
            extras=state.extras,
            step=state.step,
            phase=p.name or None,
            training=True,
        )
        with _autocast(state):
            out = read_output(p.loss_fn(module, batch, ctx))
        if out.carry is not UNSET:
            carry = detach(out.carry)
        elif not made:
            carry = UNSET
    elif state.autocast_dtype is None:
        out = read_output(p.loss_fn(module, batch))
    else:
        with _autocast(state):
            out = read_output(p.loss_fn(module, batch))
    loss = out.loss
    if not loss.requires_grad:
        msg = (
            "`loss_fn` returned a loss that does not require grad: it was detached, computed "
            "under torch.no_grad(), or no parameter it used requires grad. Return the loss "
            "tensor itself, not loss.detach() or loss.item()."
        )
        raise ValueError(msg)
    if loss_scale != 1.0:
        loss = loss * loss_scale
    if state.scaler is not None:
        loss = state.scaler.scale(loss)
    params = tuple([q for g in p.optimizer.param_groups for q in g["params"] if q.requires_grad])
    if not params:
        name = f"phase {p.name!r}" if p.name else "the optimizer"
        msg = f"No parameter of {name} requires grad: there is nothing to backpropagate into."
        raise ValueError(msg)
    if state.strategy.backward_inputs:
        _run_backward(
            (loss,),
            (torch.ones_like(loss),),
            False,
            False,
            params,
            allow_unreachable=True,
            accumulate_grad=True,
        )
    else:
        _backward_aside(state.model, loss, params)
    if len(state.phases) != 1:  # each part syncs on its own phase's backward (no wrapper)
        state.strategy.sync_gradients(params)
    return out.metrics, carry, out.handoff


def _backward_aside(model: nn.Module, loss: torch.Tensor, params: tuple[torch.Tensor, ...]) -> None:
    """Backward that leaves the gradients of every parameter outside ``params`` as they were.

    For placements whose graph leaves are not the optimizers' parameters (FSDP's gathered
    copies), so ``inputs=`` cannot name them: other parameters' gradients are set aside, the
    backward runs, and what it wrote there is replaced by what was set aside.
    """
    own = {id(q) for q in params}
    others = [q for q in model.parameters() if q.requires_grad and id(q) not in own]
    saved = [q.grad for q in others]
    for q in others:
        q.grad = None
    torch.autograd.backward(loss)
    for q, g in zip(others, saved, strict=True):
        q.grad = g


def detach(value: Any) -> Any:
    """``value`` with every tensor in it detached (tuples, lists, dicts and namedtuples kept)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    kind = type(value)
    if kind is tuple or kind is list:
        return kind(detach(v) for v in value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return kind(*(detach(v) for v in value))
    if kind is dict:
        return {k: detach(v) for k, v in value.items()}
    return value


def _update(state: TrainState, p: Phase) -> None:
    """One phase's optimizer and scheduler step; the scaler is updated once per step elsewhere."""
    optimizer = p.optimizer
    scaler = state.scaler
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
    _step_scheduler(p, scaler is not None)
    optimizer.zero_grad(set_to_none=True)


def _apply(state: TrainState, p: Phase) -> torch.Tensor | None:
    """The optimizer update; under a GradScaler, returns 1.0 when it skipped the step (device)."""
    optimizer = p.optimizer
    scaler = state.scaler
    skipped = None
    if scaler is None:
        optimizer.step()
    else:
        # GradScaler.step itself syncs once to decide; the scale shrinks exactly when it skipped.
        before = scaler.get_scale() if scaler._scale is None else scaler._scale.clone()
        scaler.step(optimizer)
        scaler.update()
        skipped = (scaler._scale < before).float()
    if p.scheduler is not None:
        _step_scheduler(p, skipped is not None)
    optimizer.zero_grad(set_to_none=True)
    return skipped


def _step_scheduler(p: Phase, scaled: bool) -> None:
    if p.scheduler is None or p.scheduler_interval != "step":
        return
    if not scaled:
        p.scheduler.step()
        return
    with warnings.catch_warnings():  # the schedule follows step calls, skipped or not
        warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step", UserWarning)
        p.scheduler.step()


def _prefixed(metrics: Mapping[str, Any], name: str) -> Metrics:
    if not name:
        return dict(metrics)
    return {f"{name}_{k}": v for k, v in metrics.items()}


def _autocast(state: TrainState) -> contextlib.AbstractContextManager[Any]:
    if state.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(state.device.type, dtype=state.autocast_dtype)
