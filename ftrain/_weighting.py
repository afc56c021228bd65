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
count ``D`` lives in ``state.grad_count[phase]`` (a device tensor once a count is one or the
processes agreed on it: no host sync). On one process, the first micro-batch is used as it is:
the plain `train_step` pays one function call for all of this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ._batch import batch_size

if TYPE_CHECKING:
    from ._outputs import Output
    from ._phases import Phase
    from ._state import TrainState

__all__ = ["rescale_gradients", "weigh"]


def weigh(
    state: TrainState,
    phase: Phase,
    output: Output,
    batch: Any,
    loss_scale: float = 1.0,
    counts: dict[str, Any] | None = None,
) -> torch.Tensor:
    """The tensor to backpropagate for one micro-batch of ``phase``.

    Call it after the forward and before the backward. It rescales the gradients accumulated so
    far (``state.micro_step > 0``) so that, after the backward, they hold the mean gradient of
    every sample since the last update.

    Args:
        state: the state before this micro-batch.
        phase: the phase whose optimizer's gradients accumulate.
        output: what the loss function returned, read by `read_output`.
        batch: the micro-batch (its leading dimension is the count when the loss reports none).
        loss_scale: an extra factor on this micro-batch's gradient.
        counts: where to record the new ``grad_count`` (a dict of state changes), for callers
            that accumulate; None when the update follows at once (`train_step`).
    """
    world = state.world_size
    if state.micro_step == 0 and world == 1:
        # One process, a fresh group: the loss is the gradient as it stands (mean or sum).
        loss = output.loss if loss_scale == 1.0 else output.loss * loss_scale
        if counts is not None and output.reduction == "mean":
            counts["grad_count"] = {**state.grad_count, phase.name: _count(output, batch)}
        return loss
    pending = state.grad_count.get(phase.name) if state.micro_step else None
    if output.reduction == "sum":
        if pending is not None:
            _mixed("sum", "mean")
        return output.loss * (loss_scale * world)
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
        rescale_gradients(phase.optimizer, pending / so_far)
        factor = n * world / so_far
    factor = factor * loss_scale
    if counts is not None:
        counts["grad_count"] = {**state.grad_count, phase.name: so_far}
    if isinstance(factor, torch.Tensor):
        return output.loss * factor.to(output.loss.dtype)
    return output.loss if factor == 1.0 else output.loss * factor


def rescale_gradients(optimizer: torch.optim.Optimizer, factor: Any) -> None:
    """Multiply the gradients of ``optimizer``'s parameters by ``factor`` in place."""
    groups = optimizer.param_groups
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
