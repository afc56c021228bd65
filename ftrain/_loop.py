"""The loops: `train_epoch`, `eval_epoch` and `fit`, which is a short composition of the two.

Host syncs happen only at log-interval boundaries and at the end of an epoch, once each (see
`MeanAccumulator`). Everything `fit` does, a hand-written loop can do with the same public
functions; ``tests/test_loop.py`` shows one reproducing `fit` exactly.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from toolz import keymap

from ._batch import batch_size
from ._callback import chain, check_callbacks, on
from ._checkpoint import latest_checkpoint, load
from ._data import prepare_loader, start_epoch
from ._events import (
    EpochEnd,
    EpochStart,
    EvalEnd,
    FitEnd,
    FitStart,
    Interrupted,
    IntervalEnd,
    StepEnd,
)
from ._metrics import MeanAccumulator, check_finite, means, merge_sums
from ._state import TrainState, check_live, set_progress
from ._step import eval_metrics, eval_mode, train_step
from ._typing import Callback, EpochAwareStep, StepFn

__all__ = ["eval_epoch", "fit", "train_epoch"]

_Plateau = torch.optim.lr_scheduler.ReduceLROnPlateau


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
    _check_positive("log_every_n_steps", log_every_n_steps)
    _check_limit("max_batches", max_batches)
    _check_limit("max_steps", max_steps)
    cb = chain(*callbacks) if callbacks else None
    loader = prepare_loader(state, loader)
    reduce_sum = _reducer(state)
    batches, total = start_epoch(loader, state)
    if total is not None and max_batches is not None:
        total = min(total, max_batches)
    if reduce_sum is not None and total is not None:
        _agree_on_batches(state, total, "train_epoch", equal=True)
    if cb is not None:
        state = cb(state, EpochStart(state.epoch, total, state.epoch_batch))
    totals = dict(state.epoch_totals) if state.epoch_batch else {}
    interval = MeanAccumulator(state.step)
    position, samples, last_log = state.epoch_batch, 0, state.step
    finished = True
    t0 = time.perf_counter()
    try:
        for batch in batches:
            n = batch_size(batch)
            state, metrics = step_fn(state, batch)
            position += 1
            samples += n
            interval.add(metrics, metrics.get("count", n))
            if cb is not None:
                state = set_progress(state, epoch_batch=position)
                state = cb(state, StepEnd(state.step, state.epoch, position - 1, metrics, n))
            if state.step != last_log and state.step % log_every_n_steps == 0:
                last_log = state.step
                sums = interval.sums(reduce_sum)
                check_finite(means(sums), interval, "training")
                totals = merge_sums(totals, sums)
                interval = MeanAccumulator(state.step)
                state = set_progress(state, epoch_batch=position, epoch_totals=totals)
                if cb is not None:
                    logs = {**keymap(_train_key, means(sums)), "lr": state.lr}
                    state = cb(state, IntervalEnd(state.step, state.epoch, logs))
            if (
                state.should_stop
                or (max_batches is not None and position >= max_batches)
                or (max_steps is not None and state.step >= max_steps)
            ):
                finished = (max_batches is not None and position >= max_batches) or (
                    total is not None and position >= total
                )
                break
    except BaseException as err:
        # Callbacks see the last consistent state (a checkpoint can be written), then it raises.
        if cb is not None and state.is_live:
            try:  # fold the open interval in, so a checkpoint resumes the epoch's logs
                totals = merge_sums(totals, interval.sums())
                state = set_progress(state, epoch_batch=position, epoch_totals=totals)
            except Exception:
                pass
            cb(state, Interrupted(state.step, state.epoch, "exception", err))
        raise
    if position == 0:
        msg = (
            "`loader` passed to `train_epoch` yielded no batches. Check the dataset length, "
            "batch_size and drop_last (and, when distributed, that every process gets data)."
        )
        raise ValueError(msg)
    sums = interval.sums(reduce_sum)
    check_finite(means(sums), interval, "training")
    totals = merge_sums(totals, sums)
    elapsed = time.perf_counter() - t0
    logs = keymap(_train_key, means(totals))
    logs.update(lr=state.lr, epoch_time=elapsed, samples_per_sec=samples / max(elapsed, 1e-9))
    if finished:
        epoch = state.epoch
        if isinstance(step_fn, EpochAwareStep):  # e.g. apply a short last accumulation group
            state = step_fn.finish_epoch(state)
        _step_epoch_scheduler(state)
        state = set_progress(state, epoch=epoch + 1, epoch_batch=0, epoch_totals={})
        if cb is not None:
            state = cb(state, EpochEnd(epoch, state.step, logs))
    else:
        state = set_progress(state, epoch_batch=position, epoch_totals=totals)
    return state, logs


def eval_epoch(
    state: TrainState,
    loader: Iterable[Any],
    *,
    max_batches: int | None = None,
    prefix: str = "",
) -> dict[str, float]:
    """Measure ``loss_fn`` over ``loader`` in eval mode, without gradients.

    Every sample counts once: batches are weighted by their sample count, and under DDP/FSDP
    each process evaluates its own share and the sums are combined in one collective.

    Args:
        state: a live state; left as it was (module ``training`` flags are restored).
        loader: a DataLoader or any iterable of batches.
        max_batches: evaluate at most this many batches.
        prefix: prepended to every key, e.g. ``"val_"``.

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
    _check_limit("max_batches", max_batches)
    loader = prepare_loader(state, loader, train=False)
    acc = MeanAccumulator(state.step)
    reduce_sum = _reducer(state)
    with eval_mode(state.model):
        batches, total = start_epoch(loader, set_progress(state, epoch_batch=0))
        if total is not None and max_batches is not None:
            total = min(total, max_batches)
        most = None
        if reduce_sum is not None and total is not None:
            most = _agree_on_batches(state, total, "eval_epoch", equal=False)
        batch = None
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            metrics = eval_metrics(state, batch)
            acc.add(metrics, metrics.get("count", batch_size(batch)))
        if most is not None and state.strategy.lockstep_eval:
            # Sharded models all-gather in every forward: ranks with fewer batches run the
            # missing forwards on their last batch and drop the results.
            for _ in range(most - len(acc)):
                eval_metrics(state, batch)
    sums = acc.sums(reduce_sum)
    if not sums:
        msg = "`loader` passed to `eval_epoch` yielded no batches."
        raise ValueError(msg)
    return {prefix + k: v for k, v in means(sums).items()}


def fit(
    state: TrainState,
    loaders: Any,
    callbacks: Sequence[Callback] = (),
    *,
    max_epochs: int | None = None,
    max_steps: int | None = None,
    step_fn: StepFn = train_step,
    val_every_n_epochs: int = 1,
    val_every_n_steps: int | None = None,
    limit_train_batches: int | None = None,
    limit_val_batches: int | None = None,
    log_every_n_steps: int = 50,
    resume: str | os.PathLike[str] | None = None,
    stop_signals: Sequence[int] = (),
) -> tuple[TrainState, list[dict[str, Any]]]:
    """Train until ``max_epochs`` or ``max_steps`` (totals for the run) or a callback stops it.

    `fit` is `train_epoch` and `eval_epoch` in a loop, with callbacks: it emits `FitStart`,
    the epoch events, `EvalEnd` after each validation and `FitEnd`. Calling it again on the
    returned (or a resumed) state with the same limits finishes the same run; with larger
    limits it continues it.

    Args:
        state: a live state; consumed.
        loaders: a train loader, ``(train, val)`` or ``{"train": ..., "val": ...}``.
        callbacks: callables ``(state, event) -> state``, applied in the order given.
        max_epochs: stop once ``state.epoch`` reaches it.
        max_steps: stop once ``state.step`` (optimizer steps) reaches it.
        step_fn: the training step, e.g. ``with_grad_clip(train_step, max_norm=1.0)``.
        val_every_n_epochs: validate after every n-th epoch.
        val_every_n_steps: also validate every n optimizer steps.
        limit_train_batches: training batches per epoch, for quick runs.
        limit_val_batches: validation batches per validation, for quick runs.
        log_every_n_steps: the log interval (one host sync per interval).
        resume: a checkpoint file to load into ``state`` first, or a directory: its newest
            checkpoint that validates is loaded (corrupt ones are skipped with a warning), and
            training starts fresh when it holds none or does not exist yet (a path without a
            file suffix is taken as a directory). ``state`` is then the template.
        stop_signals: signals (e.g. ``signal.SIGTERM`` for preemption) that stop training
            cleanly after the current batch: callbacks get `Interrupted` (`Checkpoint` saves),
            then `FitEnd`, and `fit` returns. Handlers are installed only for this call.

    Returns:
        ``(new_state, history)``: one dict per finished epoch with ``epoch``, ``step``,
        ``train_*``, ``lr``, ``epoch_time``, ``samples_per_sec`` and ``val_*`` when it was
        validated; step-interval validations add rows with ``epoch``, ``step`` and ``val_*``.

    Example:
        >>> import ftrain
        >>> state = ftrain.testing.toy_state()
        >>> state, history = ftrain.fit(state, [ftrain.testing.toy_batch()] * 4, max_epochs=2)
        >>> state.epoch, state.step, len(history)
        (2, 8, 2)
    """
    check_live(state, "fit")
    if max_epochs is None and max_steps is None:
        msg = "`fit` needs `max_epochs` or `max_steps` (got neither), e.g. fit(..., max_epochs=10)."
        raise ValueError(msg)
    _check_limit("max_epochs", max_epochs)
    _check_limit("max_steps", max_steps)
    _check_positive("val_every_n_epochs", val_every_n_epochs)
    _check_limit("val_every_n_steps", val_every_n_steps, positive=True)
    if resume is not None:
        state = _resume(state, resume)
    train, val = _split_loaders(loaders)
    train = prepare_loader(state, train)
    val = None if val is None else prepare_loader(state, val, train=False)
    history: list[dict[str, Any]] = []
    user_cb = chain(*check_callbacks(callbacks, "fit"))

    def validate(state: TrainState, epoch: int) -> tuple[TrainState, dict[str, float]]:
        assert val is not None
        metrics = eval_epoch(state, val, max_batches=limit_val_batches, prefix="val_")
        if state.epoch_batch == 0:  # an epoch-end validation drives ReduceLROnPlateau
            _step_plateau_scheduler(state, metrics)
        return user_cb(state, EvalEnd(epoch, state.step, metrics)), metrics

    def validate_mid_epoch(state: TrainState, event: Any) -> TrainState:
        if isinstance(event, StepEnd) and event.step % val_every_n_steps == 0:  # type: ignore[operator]
            state, metrics = validate(state, state.epoch)
            history.append({"epoch": state.epoch, "step": state.step, **metrics})
        return state

    signalled: list[int] = []

    def watch_signals(state: TrainState, event: Any) -> TrainState:
        return set_progress(state, should_stop=True) if signalled else state

    # With nothing to call, train_epoch gets no callbacks and skips per-step event dispatch.
    epoch_cbs = [user_cb] if callbacks else []
    if val is not None and val_every_n_steps is not None:
        epoch_cbs.append(validate_mid_epoch)
    if stop_signals:
        epoch_cbs.append(on(StepEnd, watch_signals))
    epoch_cb = (chain(*epoch_cbs),) if epoch_cbs else ()

    def done(state: TrainState) -> bool:
        return (
            state.should_stop
            or (max_epochs is not None and state.epoch >= max_epochs)
            or (max_steps is not None and state.step >= max_steps)
        )

    def run_epochs(state: TrainState) -> TrainState:
        while not done(state) and not signalled:
            epoch = state.epoch
            state, logs = train_epoch(
                state,
                train,
                epoch_cb,
                step_fn=step_fn,
                max_batches=limit_train_batches,
                max_steps=max_steps,
                log_every_n_steps=log_every_n_steps,
            )
            if state.epoch == epoch:  # stopped inside the epoch (max_steps, a callback, a signal)
                break
            row: dict[str, Any] = {"epoch": epoch, "step": state.step, **logs}
            if val is not None and state.epoch % val_every_n_epochs == 0:
                state, metrics = validate(state, epoch)
                row.update(metrics)
            elif val is None:
                _step_plateau_scheduler(state, row)
            history.append(row)
        return state

    start = FitStart(
        state.step,
        state.epoch,
        max_epochs,
        max_steps,
        log_every_n_steps,
        None if val is None else val_every_n_epochs,
    )
    state = user_cb(state.replace(should_stop=False), start)
    with _catch_signals(stop_signals, signalled):
        state = run_epochs(state)
    if signalled:
        state = user_cb(state, Interrupted(state.step, state.epoch, "signal"))
    state = user_cb(state, FitEnd(state.step, state.epoch, tuple(history)))
    return state, history


@contextlib.contextmanager
def _catch_signals(signals: Sequence[int], received: list[int]) -> Iterator[None]:
    """Record ``signals`` into ``received`` instead of their default action, for one block."""
    if not signals:
        yield
        return
    if threading.current_thread() is not threading.main_thread():
        msg = "`stop_signals` can only be handled when `fit` runs in the main thread."
        raise ValueError(msg)
    previous = {
        sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in signals
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _resume(state: TrainState, resume: str | os.PathLike[str]) -> TrainState:
    path = Path(resume)
    if path.is_dir() or (not path.exists() and not path.suffix):  # a run directory, maybe new
        if not path.exists():
            return state
        found = latest_checkpoint(path)
        return state if found is None else load(state, found)
    return load(state, path)


def _split_loaders(loaders: Any) -> tuple[Iterable[Any], Iterable[Any] | None]:
    if isinstance(loaders, Mapping):
        unknown = set(loaders) - {"train", "val"}
        if "train" not in loaders or unknown:
            msg = (
                "`loaders` as a dict must have a 'train' key and optionally 'val' (got keys "
                f"{sorted(map(str, loaders))})."
            )
            raise ValueError(msg)
        train, val = loaders["train"], loaders.get("val")
    elif type(loaders) is tuple and len(loaders) == 2:
        train, val = loaders
    else:
        train, val = loaders, None
    for name, loader in (("train", train), ("val", val)):
        if loader is not None and not isinstance(loader, Iterable):
            msg = (
                f"`loaders` must give an iterable {name} loader such as a DataLoader (got "
                f"{type(loader).__name__}). Pass `train`, `(train, val)` or a dict."
            )
            raise TypeError(msg)
    return train, val


def _agree_on_batches(state: TrainState, count: int, where: str, *, equal: bool) -> int:
    """Check across processes that no rank's loader is empty (and, for training, that all have
    the same number of batches, or the collectives would hang); return the largest count."""
    table = torch.tensor([count, -count], dtype=torch.float64, device=state.device)
    # The largest and the smallest count in one collective: MAX over (count, -count).
    dist.all_reduce(table, op=dist.ReduceOp.MAX)
    most, least = int(table[0]), int(-table[1])
    if least == 0:
        msg = (
            f"`loader` passed to `{where}` yields no batches on at least one process (batches "
            f"per process range from {least} to {most}). Every process needs data: use a "
            "DataLoader over a map-style dataset (ftrain splits it) or give each rank its share."
        )
        raise ValueError(msg)
    if equal and least != most:
        msg = (
            f"`loader` passed to `{where}` yields {least} to {most} batches on different "
            "processes; training needs the same count everywhere (collectives would hang). Use a "
            "DataLoader over a map-style dataset so ftrain can split it evenly."
        )
        raise ValueError(msg)
    return most


def _reducer(state: TrainState) -> Callable[[torch.Tensor], torch.Tensor] | None:
    strategy = state.strategy
    if strategy.world_size == 1:
        return None
    return strategy.reduce_sum


def _step_epoch_scheduler(state: TrainState) -> None:
    scheduler = state.scheduler
    if (
        scheduler is not None
        and state.scheduler_interval == "epoch"
        and not isinstance(scheduler, _Plateau)
    ):
        scheduler.step()


def _step_plateau_scheduler(state: TrainState, row: Mapping[str, Any]) -> None:
    # ReduceLROnPlateau needs a metric: it steps after validation on val_loss (train_loss when
    # there is no validation data).
    if isinstance(state.scheduler, _Plateau):
        state.scheduler.step(row.get("val_loss", row.get("train_loss")))


def _train_key(key: str) -> str:
    return "train_" + key


def _check_limit(name: str, value: int | None, *, positive: bool = False) -> None:
    if value is None:
        return
    low = 1 if positive else 0
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a positive int" if positive else "a non-negative int"
        msg = f"`{name}` must be {kind} or None (got {value!r})."
        raise ValueError(msg)


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"`{name}` must be a positive int (got {value!r})."
        raise ValueError(msg)
