"""`fit`: `train_epoch` and `eval_epoch` in one loop, with callbacks, limits and stop signals."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._callback import chain, check_callbacks, check_memory, on
from ._checkpoint import latest_checkpoint, load
from ._data import prepare_loader
from ._epoch import eval_epoch, train_epoch
from ._errors import check_int
from ._events import EpochEnd, EvalEnd, FitEnd, FitStart, Interrupted, StepEnd
from ._schedulers import step_scheduler
from ._signals import catch_signals
from ._state import TrainState, check_live, set_progress
from ._step import train_step
from ._typing import Callback, StepFn

__all__ = ["fit"]


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
    val_weights: str | Sequence[str] = "model",
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
        val_weights: the weights to validate: ``"model"`` (keys ``val_*``), the name of an
            average in ``state.averages`` (``"ema"``: keys ``val_ema_*``), or several, e.g.
            ``("model", "ema")``. An average not made yet (SWA before its start) is skipped.
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
        The history is the whole run's: it is kept in ``state.history`` (and checkpoints), so
        a resumed or continued `fit` returns the rows of the earlier calls too.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range, or two callbacks keep their memory under one
            name in ``state.callback_state`` (or the state holds something else there).

    Example:
        >>> import ftrain
        >>> state = ftrain.testing.toy_state()
        >>> state, history = ftrain.fit(state, [ftrain.testing.toy_batch()] * 4, max_epochs=2)
        >>> state.epoch, state.step, len(history)
        (2, 8, 2)
    """
    check_live(state, "fit")
    _check_limits(max_epochs, max_steps, val_every_n_epochs, val_every_n_steps)
    weights = _check_weights(val_weights)
    if resume is not None:
        state = _resume(state, resume)
    train, val = _split_loaders(loaders)
    train = prepare_loader(state, train)
    val = None if val is None else prepare_loader(state, val, train=False)
    user_cb = chain(*check_callbacks(callbacks, "fit"))
    check_memory(state, user_cb)
    mid_epoch_val = val is not None and val_every_n_steps is not None

    def after_step(state: TrainState, event: StepEnd) -> TrainState:
        # What fit adds after a step: validation every n steps (a history row of its own) and
        # stopping on a signal.
        if mid_epoch_val and event.step % val_every_n_steps == 0:  # type: ignore[operator]
            state = _validate(state, val, state.epoch, user_cb, limit_val_batches, weights)
        return set_progress(state, should_stop=True) if signalled else state

    # With nothing to call, train_epoch gets no callbacks and skips per-step event dispatch.
    epoch_callbacks = [user_cb] if callbacks else []
    if mid_epoch_val or stop_signals:
        epoch_callbacks.append(on(StepEnd, after_step))
    if epoch_callbacks:  # the epoch's row is in the state before a callback saves it
        epoch_callbacks.insert(0, on(EpochEnd, _add_epoch_row))
    epoch_callback = (chain(*epoch_callbacks),) if epoch_callbacks else ()
    start = FitStart(
        step=state.step,
        epoch=state.epoch,
        max_epochs=max_epochs,
        max_steps=max_steps,
        log_every_n_steps=log_every_n_steps,
        val_every_n_epochs=None if val is None else val_every_n_epochs,
    )
    state = user_cb(state.replace(should_stop=False), start)
    with catch_signals(stop_signals) as signalled:
        while not (signalled or _done(state, max_epochs, max_steps)):
            epoch = state.epoch
            state, logs = train_epoch(
                state,
                train,
                epoch_callback,
                step_fn=step_fn,
                max_batches=limit_train_batches,
                max_steps=max_steps,
                log_every_n_steps=log_every_n_steps,
            )
            if state.epoch == epoch:  # stopped inside the epoch (max_steps, a callback, a signal)
                break
            if not epoch_callbacks:
                state = _add_row(state, {"epoch": epoch, "step": state.step, **logs})
            if val is not None and state.epoch % val_every_n_epochs == 0:
                state = _validate(state, val, epoch, user_cb, limit_val_batches, weights)
            elif val is None:
                state = step_scheduler(state, state.history[-1])
    if signalled:
        state = user_cb(state, Interrupted(step=state.step, epoch=state.epoch, reason="signal"))
    state = user_cb(state, FitEnd(step=state.step, epoch=state.epoch, history=state.history))
    return state, [dict(row) for row in state.history]


def _add_row(state: TrainState, row: dict[str, Any]) -> TrainState:
    return set_progress(state, history=(*state.history, row))


def _add_epoch_row(state: TrainState, event: EpochEnd) -> TrainState:
    return _add_row(state, {"epoch": event.epoch, "step": event.step, **event.metrics})


def _validate(
    state: TrainState,
    val: Any,
    epoch: int,
    user_cb: Callback,
    max_batches: int | None,
    weights: tuple[str, ...],
) -> TrainState:
    """Validate on every one of ``weights``, record the metrics in the history (the epoch's row
    at an epoch's end, a row of their own mid-epoch), then emit `EvalEnd`."""
    metrics: dict[str, float] = {}
    for name in weights:
        if name == "model" or name in state.averages:
            prefix = "val_" if name == "model" else f"val_{name}_"
            metrics.update(
                eval_epoch(state, val, max_batches=max_batches, prefix=prefix, weights=name)
            )
    if state.epoch_batch == 0:  # an epoch-end validation drives a metric-driven scheduler
        *earlier, row = state.history
        row = {**row, **metrics}
        state = step_scheduler(set_progress(state, history=(*earlier, row)), row)
    else:
        state = _add_row(state, {"epoch": epoch, "step": state.step, **metrics})
    return user_cb(state, EvalEnd(step=state.step, epoch=epoch, metrics=metrics))


def _done(state: TrainState, max_epochs: int | None, max_steps: int | None) -> bool:
    return (
        state.should_stop
        or (max_epochs is not None and state.epoch >= max_epochs)
        or (max_steps is not None and state.step >= max_steps)
    )


def _check_limits(
    max_epochs: int | None,
    max_steps: int | None,
    val_every_n_epochs: int,
    val_every_n_steps: int | None,
) -> None:
    if max_epochs is None and max_steps is None:
        msg = "`fit` needs `max_epochs` or `max_steps` (got neither), e.g. fit(..., max_epochs=10)."
        raise ValueError(msg)
    check_int("max_epochs", max_epochs, optional=True)
    check_int("max_steps", max_steps, optional=True)
    check_int("val_every_n_epochs", val_every_n_epochs, minimum=1)
    check_int("val_every_n_steps", val_every_n_steps, minimum=1, optional=True)


def _check_weights(val_weights: str | Sequence[str]) -> tuple[str, ...]:
    names = (val_weights,) if isinstance(val_weights, str) else tuple(val_weights)
    if not names or not all(isinstance(n, str) for n in names):
        msg = (
            "`val_weights` must be 'model', the name of an average (e.g. 'ema') or a sequence "
            f"of those (got {val_weights!r})."
        )
        raise TypeError(msg)
    return names


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
