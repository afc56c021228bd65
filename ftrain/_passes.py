"""The private passes the step functions share: the loss call, the backward, the update.

`forward_backward`, `apply_gradients`, `end_step`, `train_step` and the transforms all run these,
so a custom loop of the public phase functions and the built-in step give identical results, bit
for bit. Each phase backpropagates only into its own optimizer's parameters (``inputs=``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._batch import cast_floating, move
from ._outputs import UNSET, Output, StepContext, read_output
from ._phases import Phase
from ._rng import seed_step
from ._state import TrainState
from ._weighting import weigh

__all__ = [
    "apply_update",
    "autocast",
    "call_with_context",
    "detach",
    "initial_carry",
    "prefixed",
    "prepare",
    "run_phase",
    "update_phase",
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


def update_scaler(state: TrainState) -> Metrics:
    """Update the GradScaler once after a step's phases; report whether it skipped (device)."""
    scaler = state.scaler
    if scaler is None or scaler._scale is None:
        return {}
    before = scaler._scale.clone()
    scaler.update()
    return {"skipped": (scaler._scale < before).float()}


def prepare(state: TrainState, batch: Any) -> Any:
    device = state.device
    batch = move(batch, device, non_blocking=device.type == "cuda")
    if state.batch_dtype is not None:
        batch = cast_floating(batch, state.batch_dtype)
    return batch


def initial_carry(state: TrainState, module: nn.Module, batch: Any) -> Any:
    init = state.carry_init
    return None if init is None else init(module, batch)


def call_with_context(
    state: TrainState,
    p: Phase,
    module: nn.Module,
    batch: Any,
    carry: Any,
    handoff: Mapping[str, Any],
    *,
    training: bool,
) -> Output:
    """Call the loss function of ``p``, which takes a `StepContext`, and read what it returned."""
    ctx = StepContext(
        carry=carry,
        handoff=handoff,
        extras=state.extras,
        step=state.step,
        phase=p.name or None,
        training=training,
    )
    return read_output(p.loss_fn(module, batch, ctx))


def run_phase(
    state: TrainState,
    p: Phase,
    index: int,
    batch: Any,
    loss_scale: float = 1.0,
    handoff: Mapping[str, Any] = _NO_HANDOFF,
    counts: dict[str, Any] | None = None,
) -> tuple[Metrics, Any, Mapping[str, Any]]:
    """Loss and backward of phase ``p`` on a prepared batch: ``(metrics, carry, handoff)``.

    ``carry`` is `UNSET` when the state's carry stays as it is. The backward is weighted by the
    batch's count (`weigh`); given ``counts``, the new running count is recorded there.
    """
    seed_step(
        state.seed,
        state.step,
        state.micro_step,
        state.device.type == "cuda",
        state.rank,
        state.stream,
        index,
        state.skipped_steps,
    )
    module = state.module
    carry = UNSET
    if p.takes_context:
        carry = state.carry
        made = carry is UNSET
        if made:
            carry = initial_carry(state, module, batch)
        with autocast(state):
            out = call_with_context(state, p, module, batch, carry, handoff, training=True)
        if out.carry is not UNSET:
            carry = detach(out.carry)
        elif not made:
            carry = UNSET
    elif state.autocast_dtype is None:
        out = read_output(p.loss_fn(module, batch))
    else:
        with autocast(state):
            out = read_output(p.loss_fn(module, batch))
    loss = out.loss
    if not loss.requires_grad:
        msg = (
            "`loss_fn` returned a loss that does not require grad: it was detached, computed "
            "under torch.no_grad(), or no parameter it used requires grad. Return the loss "
            "tensor itself, not loss.detach() or loss.item()."
        )
        raise ValueError(msg)
    loss = weigh(state, p, out, batch, loss_scale, counts)
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
    if p.name:  # named phases run unwrapped: each part syncs on its own phase's backward
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


def update_phase(state: TrainState, p: Phase) -> None:
    """One phase's optimizer and scheduler step; the scaler is updated once per step elsewhere."""
    optimizer = p.optimizer
    scaler = state.scaler
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
    _step_scheduler(p, scaler is not None)
    optimizer.zero_grad(set_to_none=True)


def apply_update(state: TrainState, p: Phase) -> torch.Tensor | None:
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


def prefixed(metrics: Mapping[str, Any], name: str) -> Metrics:
    if not name:
        return dict(metrics)
    return {f"{name}_{k}": v for k, v in metrics.items()}


def autocast(state: TrainState) -> contextlib.AbstractContextManager[Any]:
    if state.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(state.device.type, dtype=state.autocast_dtype)
