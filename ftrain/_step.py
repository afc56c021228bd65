"""The step functions: one batch in, ``(new state, metrics)`` out.

Nothing here calls ``.item()`` or otherwise waits for the device: metrics are detached tensors on
the state's device. Parameters, gradients and optimizer buffers are updated in place, so the input
state is consumed (see `TrainState`).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from ._batch import cast_floating, move
from ._outputs import read_output
from ._rng import mix, seed_step
from ._state import TrainState, advance, check_live

__all__ = [
    "apply_gradients",
    "eval_mode",
    "eval_step",
    "forward_backward",
    "train_step",
]

Metrics = dict[str, torch.Tensor]


def forward_backward(
    state: TrainState, batch: Any, *, loss_scale: float = 1.0
) -> tuple[TrainState, Metrics]:
    """Run ``loss_fn`` on ``batch`` and accumulate gradients; no optimizer step.

    The batch is moved to ``state.device`` first. Randomness inside ``loss_fn`` (dropout) is
    seeded from ``(state.seed, state.step, state.micro_step)``, so the same state and batch give
    the same gradients.

    Args:
        state: a live state. It is consumed: its gradient buffers are accumulated into.
        batch: tensors in any nesting of tuples, lists, dicts and namedtuples.
        loss_scale: the gradient is that of ``loss * loss_scale`` (``1 / k`` when accumulating
            over k batches); the reported loss is unscaled.

    Returns:
        ``(new_state, metrics)``: ``new_state.micro_step`` is one higher; ``metrics`` has
        ``"loss"`` and whatever ``loss_fn`` reported, as detached device tensors.

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
    metrics = _forward_backward(state, batch, loss_scale)
    return advance(state, "forward_backward", micro_step=state.micro_step + 1), metrics


def apply_gradients(state: TrainState) -> TrainState:
    """Take one optimizer step with the accumulated gradients.

    Steps the optimizer (through the ``GradScaler`` under ``16-mixed``), steps the LR scheduler
    when ``scheduler_interval="step"``, zeroes the gradients (``set_to_none``) and returns a state
    with ``step + 1`` and ``micro_step = 0``. Clipping is a step transform
    (`ftrain.with_grad_clip`), not a flag here.

    Args:
        state: a live state with gradients from `forward_backward`. It is consumed.

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
    if state.micro_step == 0:
        msg = (
            "`state` has no accumulated gradients (micro_step=0): call "
            "`forward_backward(state, batch)` before `apply_gradients(state)`."
        )
        raise ValueError(msg)
    _apply(state)
    return advance(state, "apply_gradients", step=state.step + 1, micro_step=0)


def train_step(state: TrainState, batch: Any) -> tuple[TrainState, Metrics]:
    """One training step: `forward_backward` then `apply_gradients`.

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
    metrics = _forward_backward(state, batch)
    skipped = _apply(state)
    if skipped is not None:
        metrics["skipped"] = skipped
    return advance(state, "train_step", step=state.step + 1, micro_step=0), metrics


def eval_step(state: TrainState, batch: Any) -> Metrics:
    """Measure ``loss_fn`` on ``batch`` without gradients, in eval mode; the state is unchanged.

    Every module's ``training`` flag is restored afterwards exactly as it was.

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
    batch = move(batch, state.device, non_blocking=state.device.type == "cuda")
    if state.batch_dtype is not None:
        batch = cast_floating(batch, state.batch_dtype)
    seed_step(mix(state.seed, 0x5EED), state.step, 0, state.device.type == "cuda")
    # The strategy names the module: under DDP the unwrapped model, whose forward syncs nothing
    # (the wrapper's would broadcast rank 0's buffers over the other ranks' ones).
    module = state.strategy.eval_module(state)
    with torch.no_grad(), _autocast(state):
        out = state.loss_fn(module, batch)
    return read_output(out).metrics


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


def _forward_backward(state: TrainState, batch: Any, loss_scale: float = 1.0) -> Metrics:
    device = state.device
    cuda = device.type == "cuda"
    batch = move(batch, device, non_blocking=cuda)
    if state.batch_dtype is not None:
        batch = cast_floating(batch, state.batch_dtype)
    seed_step(state.seed, state.step, state.micro_step, cuda, state.rank)
    if state.autocast_dtype is None:
        out = state.loss_fn(state.module, batch)
    else:
        with _autocast(state):
            out = state.loss_fn(state.module, batch)
    loss, metrics = read_output(out)[:2]
    if not loss.requires_grad:
        msg = (
            "`loss_fn` returned a loss that does not require grad: it was detached, computed "
            "under torch.no_grad(), or no parameter it used requires grad. Return the loss "
            "tensor itself, not loss.detach() or loss.item()."
        )
        raise ValueError(msg)
    scaled = loss if loss_scale == 1.0 else loss * loss_scale
    scaler = state.scaler
    (scaled if scaler is None else scaler.scale(scaled)).backward()
    return metrics


def _apply(state: TrainState) -> torch.Tensor | None:
    """The optimizer update; under a GradScaler, returns 1.0 when it skipped the step (device)."""
    optimizer = state.optimizer
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
    if state.scheduler is not None and state.scheduler_interval == "step":
        if skipped is None:
            state.scheduler.step()
        else:  # the schedule follows step calls, skipped or not; torch warns when one skipped
            with warnings.catch_warnings():
                warnings.filterwarnings(
                    "ignore", "Detected call of `lr_scheduler.step", UserWarning
                )
                state.scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return skipped


def _autocast(state: TrainState) -> contextlib.AbstractContextManager[Any]:
    if state.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(state.device.type, dtype=state.autocast_dtype)
