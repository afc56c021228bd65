"""Exact gradient weighting: micro-batches and processes count by their samples (or tokens).

The gradient a step applies is the gradient of the whole batch, however it was cut: into
micro-batches (gradient accumulation), across processes (DDP, FSDP), or both, with uneven pieces
(a short last group, token counts that differ per sequence). Each piece weighs by its count:

- A mean loss (``Loss(..., reduction="mean")``, the default, or a plain tensor) covers ``count``
  samples: the batch's leading dimension unless the loss reports a count. After the micro-batches
  so far, the accumulated gradients always hold the *mean* over all their samples on all
  processes. Adding a micro-batch first rescales them by ``D / (D + N)`` (``D`` samples so far,
  ``N`` in this micro-batch on all processes), then backpropagates ``loss * n * W / (D + N)``
  (``n`` samples here, ``W`` processes, whose gradients DDP and FSDP average).
- A sum loss (``reduction="sum"``, the VAE's ELBO) is a sum over its samples, and sums add up:
  micro-batches accumulate as they are, and ``W`` undoes the processes' average, so the gradient
  is that of the sum over the whole batch.

Because the gradients are a proper mean after every micro-batch, clipping, skipping and the
optimizer see the right values whenever they look; `apply_gradients` divides nothing. The running
count ``D`` lives in ``state.grad_count`` (a device tensor once a count is one or the processes
agreed on it: no host sync). On one process, the first micro-batch of a mean loss is used as it
is: the plain `train_step` pays nothing for any of this.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from ._batch import batch_size

if TYPE_CHECKING:
    from ._outputs import Output
    from ._state import TrainState

__all__ = ["rescale_gradients", "weigh"]

_NONE: Mapping[str, Any] = {}


def weigh(
    state: TrainState,
    output: Output,
    batch: Any,
    loss_scale: float = 1.0,
    *,
    record: bool = True,
) -> tuple[torch.Tensor, Mapping[str, Any]]:
    """The tensor to backpropagate for one micro-batch, and the state fields that change.

    Call it after the forward and before the backward. It rescales the gradients accumulated so
    far (``state.micro_step > 0``) so that, after the backward, they hold the mean gradient of
    every sample since the last optimizer step.

    Args:
        state: the state before this micro-batch.
        output: what the loss function returned, read by `read_output`.
        batch: the micro-batch (its leading dimension is the count when the loss reports none).
        loss_scale: an extra factor on this micro-batch's gradient.
        record: keep the running count in the returned changes (False for `train_step`, which
            applies the update right after).

    Returns:
        ``(loss to backpropagate, changes)``; ``changes`` holds ``grad_count`` when it changed.
    """
    world = state.world_size
    if state.micro_step == 0 and world == 1:
        # One process, a fresh group: the loss is the gradient as it stands (mean or sum).
        loss = output.loss if loss_scale == 1.0 else output.loss * loss_scale
        if not record or output.reduction == "sum":
            return loss, _NONE
        return loss, {"grad_count": _count(output, batch)}
    pending = state.grad_count if state.micro_step else None
    if output.reduction == "sum":
        if pending is not None:
            _mixed("sum", "mean")
        return output.loss * (loss_scale * world), _NONE
    if state.micro_step and pending is None:
        _mixed("mean", "sum")
    n = _count(output, batch)
    total = n
    if world > 1:
        # The samples of this micro-batch on every process: one scalar all-reduce on the device.
        dtype = torch.float32 if state.device.type == "mps" else torch.float64
        local = torch.as_tensor(n, dtype=dtype, device=state.device).reshape(1).clone()
        total = state.strategy.reduce_sum(local)[0]
    if pending is None:
        so_far = total
        factor: Any = n * world / total if world > 1 else 1.0
    else:
        so_far = pending + total
        rescale_gradients(state, pending / so_far)
        factor = n * world / so_far
    factor = factor * loss_scale
    if isinstance(factor, torch.Tensor):
        loss = output.loss * factor.to(output.loss.dtype)
    else:
        loss = output.loss if factor == 1.0 else output.loss * factor
    return loss, ({"grad_count": so_far} if record else _NONE)


def rescale_gradients(state: TrainState, factor: Any) -> None:
    """Multiply the gradients of the state's optimizer's parameters by ``factor`` in place."""
    groups = state.optimizer.param_groups
    grads = [p.grad for group in groups for p in group["params"] if p.grad is not None]
    if not grads:
        return
    if isinstance(factor, torch.Tensor):
        factor = factor.to(grads[0].dtype)
    try:
        torch._foreach_mul_(grads, factor)
    except (RuntimeError, TypeError, NotImplementedError):  # e.g. sharded (DTensor) gradients
        for g in grads:
            g.mul_(factor)


def _count(output: Output, batch: Any) -> Any:
    count = output.metrics.get("count")
    return batch_size(batch) if count is None else count


def _mixed(now: str, before: str) -> None:
    msg = (
        f"`loss_fn` returned a {now!r} loss for a micro-batch whose accumulation group began "
        f"with a {before!r} one: gradients of means and of sums cannot be accumulated together. "
        "Return the same Loss(..., reduction=...) for every batch."
    )
    raise ValueError(msg)
