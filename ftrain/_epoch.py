"""The epoch functions: `train_epoch` and `eval_epoch`.

Host syncs happen only where a log interval closes (every ``log_every_n_steps`` optimizer steps
and at the end of an epoch), once each: `_close_interval` is the one place that sums an interval
(see `MeanAccumulator.sums`). Under DDP/FSDP that is also the one collective per interval.

Over 300 lines because `train_epoch` and `eval_epoch` share the interval bookkeeping and the
loader and batch checks, and the rule above (one sync per interval) is only checkable with every
place that closes an interval in one module; most of the length is the two loops themselves.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from ._averaging import using_weights
from ._batch import batch_size
from ._callback import chain
from ._collectives import agree_on_batches, in_lockstep, reducer
from ._data import prepare_loader, start_epoch
from ._errors import check_callable, check_int, check_type, describe
from ._events import EpochEnd, EpochStart, Event, Interrupted, IntervalEnd, StepEnd
from ._loader_state import attach_loader
from ._metrics import MeanAccumulator, check_finite, means, merge_sums
from ._outputs import UNSET
from ._schedulers import step_epoch_scheduler
from ._state import TrainState, check_live, set_progress
from ._step import eval_metrics, eval_mode, eval_outputs, train_step
from ._typing import Callback, EpochAwareStep, StepFn

__all__ = ["eval_epoch", "train_epoch"]

Reduce = Callable[[torch.Tensor], torch.Tensor]


def train_epoch(
    state: TrainState,
    loader: Iterable[Any],
    callbacks: Sequence[Callback] = (),
    *,
    step_fn: StepFn = train_step,
    max_batches: int | None = None,
    max_steps: int | None = None,
    log_every_n_steps: int = 50,
) -> tuple[TrainState, dict[str, float]]:
    """Train on one epoch of ``loader`` (or the rest of it, for a state resumed mid-epoch).

    Emits `EpochStart`, `StepEnd` per batch, `IntervalEnd` every ``log_every_n_steps`` optimizer
    steps, and `EpochEnd` to ``callbacks``. Stops early when a callback sets
    ``state.should_stop``, after ``max_batches`` batches of the epoch, or at ``max_steps``; an
    epoch stopped early stays open (``state.epoch_batch`` says where) and the next call continues
    it. A finished epoch increments ``state.epoch`` and steps an ``"epoch"``-interval scheduler.
    When a batch or a callback raises, the callbacks get `Interrupted` with the state after the
    last completed batch (a `Checkpoint` saves it), then the exception propagates.

    Args:
        state: a live state; consumed.
        loader: a DataLoader (order seeded from ``state``, see `prepare_loader`) or any iterable.
        callbacks: callables ``(state, event) -> state``, applied in order.
        step_fn: the training step, `train_step` or a transformed one.
        max_batches: a limit on the batches of the epoch (for quick runs).
        max_steps: stop when ``state.step`` reaches it.
        log_every_n_steps: the log interval: metrics are synced to the host once per interval.

    Returns:
        ``(new_state, logs)``: ``logs`` has ``train_<metric>`` sample-weighted means over the
        epoch, ``lr``, ``epoch_time`` (seconds of this call) and ``samples_per_sec``.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: the loader yielded no batch, or an argument is out of range.
        NonFiniteError: the loss became NaN or infinite (checked at each log interval).

    Example:
        >>> import ftrain
        >>> state = ftrain.testing.toy_state()
        >>> batches = [ftrain.testing.toy_batch(seed=i) for i in range(3)]
        >>> state, logs = ftrain.train_epoch(state, batches)
        >>> state.epoch, state.step, sorted(logs)
        (1, 3, ['epoch_time', 'lr', 'samples_per_sec', 'train_loss'])
    """
    check_live(state, "train_epoch")
    check_int("log_every_n_steps", log_every_n_steps, minimum=1)
    check_int("max_batches", max_batches, optional=True)
    check_int("max_steps", max_steps, optional=True)
    check_loader(loader, "train_epoch")
    if not isinstance(callbacks, Sequence) or isinstance(callbacks, str):
        msg = (
            f"`callbacks` must be a list of callbacks, or () for none (got {describe(callbacks)})."
        )
        raise TypeError(msg)
    check_callable("step_fn", step_fn, "(state, batch) -> (state, metrics)", "ftrain.train_step")
    cb = chain(*callbacks) if callbacks else None  # none: no per-step event dispatch at all
    loader = prepare_loader(state, loader)
    reduce_sum = reducer(state)
    state, positioned = attach_loader(state, loader)
    batches, total = start_epoch(loader, state, positioned=positioned)
    if total is not None and max_batches is not None:
        total = min(total, max_batches)
    if reduce_sum is not None and total is not None:
        agree_on_batches(state, total, "train_epoch", equal=True)
    elif reduce_sum is not None:  # no length to agree on: agree batch by batch
        batches = in_lockstep(state, batches, "train_epoch")
    if state.epoch_batch == 0:  # a fresh epoch: no totals, and the carry is made anew
        state = set_progress(state, epoch_totals={}, carry=UNSET)
    interval = MeanAccumulator(state.step)
    position, samples, last_log = state.epoch_batch, 0, state.step
    finished = True
    if cb is not None:
        event: Event = EpochStart(
            step=state.step, epoch=state.epoch, num_batches=total, first_batch=position
        )
        state = cb(state, event)
    t0 = time.perf_counter()
    try:
        for batch in batches:
            n = batch_size(batch)
            if not n:
                _empty_batch(batch, position)
            out = step_fn(state, batch)
            if type(out) is not tuple:
                _not_a_step_result(out, step_fn)
            state, metrics = out
            position += 1
            samples += n
            interval.add(metrics, metrics.get("count", n))
            if cb is not None:
                state = set_progress(state, epoch_batch=position)
                state = cb(
                    state,
                    StepEnd(
                        step=state.step,
                        epoch=state.epoch,
                        batch=position - 1,
                        metrics=metrics,
                        batch_size=n,
                    ),
                )
            if state.step != last_log and state.step % log_every_n_steps == 0:
                last_log = state.step
                state, interval_means = _close_interval(state, interval, position, reduce_sum)
                interval = MeanAccumulator(state.step)
                if cb is not None:
                    logs = {**_train_keys(interval_means), "lr": state.lr}
                    event = IntervalEnd(step=state.step, epoch=state.epoch, metrics=logs)
                    state = cb(state, event)
            batches_done = max_batches is not None and position >= max_batches
            steps_done = max_steps is not None and state.step >= max_steps
            if state.should_stop or batches_done or steps_done:
                finished = batches_done or (total is not None and position >= total)
                break
    except BaseException as err:
        # Callbacks see the last consistent state (a checkpoint can be written), then it raises.
        if cb is not None and state.is_live:
            state = _fold_open_interval(state, interval, position)
            event = Interrupted(step=state.step, epoch=state.epoch, reason="exception", error=err)
            cb(state, event)
        raise
    if position == 0:
        msg = (
            "`loader` passed to `train_epoch` yielded no batches. Check the dataset length, "
            "batch_size and drop_last (and, when distributed, that every process gets data)."
        )
        raise ValueError(msg)
    state, _ = _close_interval(state, interval, position, reduce_sum)
    elapsed = time.perf_counter() - t0
    logs = _train_keys(means(state.epoch_totals))
    logs.update(lr=state.lr, epoch_time=elapsed, samples_per_sec=samples / max(elapsed, 1e-9))
    if finished:
        epoch = state.epoch
        if isinstance(step_fn, EpochAwareStep):  # e.g. a short last gradient-accumulation group
            state = step_fn.finish_epoch(state)
        step_epoch_scheduler(state)
        state = set_progress(state, epoch=epoch + 1, epoch_batch=0, epoch_totals={})
        if cb is not None:
            state = cb(state, EpochEnd(step=state.step, epoch=epoch, metrics=logs))
    return state, logs


def eval_epoch(
    state: TrainState,
    loader: Iterable[Any],
    *,
    max_batches: int | None = None,
    prefix: str = "",
    weights: str = "model",
) -> dict[str, float]:
    """Measure ``loss_fn`` over ``loader`` in eval mode, without gradients.

    Every sample counts once: batches are weighted by their sample count, and under DDP/FSDP
    each process evaluates its own share and the sums are combined in one collective.

    Args:
        state: a live state; left as it was (module ``training`` flags are restored).
        loader: a DataLoader or any iterable of batches.
        max_batches: evaluate at most this many batches.
        prefix: prepended to every key, e.g. ``"val_"``.
        weights: ``"model"`` (the weights being trained) or the name of an average in
            ``state.averages`` (``"ema"`` from `with_ema`), swapped in for the evaluation.

    Returns:
        Sample-weighted means as floats, e.g. ``{"loss": 0.31, "acc": 0.9}``.

    Example:
        >>> import ftrain
        >>> state = ftrain.testing.toy_state()
        >>> metrics = ftrain.eval_epoch(state, [ftrain.testing.toy_batch()], prefix="val_")
        >>> sorted(metrics)
        ['val_loss']
    """
    check_live(state, "eval_epoch")
    check_loader(loader, "eval_epoch")
    check_int("max_batches", max_batches, optional=True)
    check_type("prefix", prefix, str, "a str")
    loader = prepare_loader(state, loader, train=False)
    acc = MeanAccumulator(state.step)
    reduce_sum = reducer(state)
    with using_weights(state, weights), eval_mode(state.model):
        batches, total = start_epoch(loader, set_progress(state, epoch_batch=0))
        if total is not None and max_batches is not None:
            total = min(total, max_batches)
        most = None
        if reduce_sum is not None and total is not None:
            most = agree_on_batches(state, total, "eval_epoch", equal=False)
        batch = None
        carry = UNSET  # evaluation threads its own carry and leaves the state's alone
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            metrics, carry = eval_outputs(state, batch, carry, i)
            acc.add(metrics, metrics.get("count", batch_size(batch)))
        if most is not None and state.strategy.lockstep_eval:
            # Sharded models all-gather in every forward: ranks with fewer batches run the
            # missing forwards on their last batch and drop the results.
            for extra in range(len(acc), most):
                eval_metrics(state, batch, extra)
    sums = acc.sums(reduce_sum)
    if not sums:
        msg = "`loader` passed to `eval_epoch` yielded no batches."
        raise ValueError(msg)
    return {prefix + k: v for k, v in means(sums).items()}


def _close_interval(
    state: TrainState,
    interval: MeanAccumulator,
    position: int,
    reduce_sum: Reduce | None,
    *,
    check: bool = True,
) -> tuple[TrainState, dict[str, float]]:
    """Close a log interval: sum it (the one sync, and the one collective under DDP/FSDP), check
    that the loss stayed finite, add it to the epoch's totals and record the position there.

    Returns the state that holds the new totals, and the interval's own means.
    """
    sums = interval.sums(reduce_sum)
    interval_means = means(sums)
    if check:
        check_finite(interval_means, interval, "training")
    totals = merge_sums(state.epoch_totals, sums)
    return set_progress(state, epoch_batch=position, epoch_totals=totals), interval_means


def _fold_open_interval(state: TrainState, interval: MeanAccumulator, position: int) -> TrainState:
    """On the way out of an exception, add the open interval to the totals, so a checkpoint
    written now resumes the epoch's logs. No collective: the other processes may not be there."""
    try:
        state, _ = _close_interval(state, interval, position, None, check=False)
    except (RuntimeError, TypeError, ValueError) as err:  # the metrics may be what failed
        warnings.warn(
            f"The training metrics since step {interval.first_step} could not be summed ({err}); "
            "a checkpoint written at this interruption leaves them out of the epoch's logs.",
            stacklevel=3,
        )
    return state


def check_loader(loader: Any, where: str) -> None:
    """Refuse a ``loader`` that is not an iterable of batches, naming it."""
    if not isinstance(loader, Iterable) or isinstance(loader, str | bytes | Mapping):
        msg = (
            f"`loader` passed to `{where}` must be a DataLoader or another iterable of batches "
            f"(got {describe(loader)})."
        )
        raise TypeError(msg)


def _empty_batch(batch: Any, position: int) -> None:
    msg = (
        f"`batch` {position} of the epoch holds 0 samples (its first tensor's leading dimension "
        "is 0): an empty batch has no mean loss. Check the dataset and the sampler, or drop "
        "empty batches in the collate_fn."
    )
    raise ValueError(msg)


def _not_a_step_result(out: Any, step_fn: Any) -> None:
    name = getattr(step_fn, "__name__", type(step_fn).__name__)
    msg = (
        f"`step_fn` ({name}) must return (state, metrics) like ftrain.train_step (got "
        f"{describe(out)})."
    )
    raise TypeError(msg)


def _train_keys(values: Mapping[str, float]) -> dict[str, float]:
    return {"train_" + k: v for k, v in values.items()}
