"""`fit`: `train_epoch` and `eval_epoch` in one loop, with callbacks, limits and stop signals.

Over 300 lines because `fit` is one public function whose many options (limits, validation
cadence and weights, resume, signals, callbacks) are each checked up front and documented in its
docstring; the private helpers here exist only to keep that one loop readable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._callback import Watched, chain, check_callbacks, check_memory
from ._checkpoint import latest_checkpoint, load
from ._data import num_batches, prepare_loader
from ._epoch import eval_epoch, train_epoch
from ._errors import CheckpointError, check_callable, check_int, check_type, describe
from ._events import EpochEnd, EvalEnd, Event, FitEnd, FitStart, Interrupted, StepEnd
from ._schedulers import step_scheduler
from ._signals import HardInterrupt, catch_signals, check_signals
from ._state import TrainState, check_live, set_progress
from ._step import train_step
from ._typing import Callback, StepFn

CHECKPOINT_SUFFIX = ".ckpt"

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
        limit_train_batches: training batches per epoch, for quick runs (0: no training).
        limit_val_batches: validation batches per validation, for quick runs (0: no
            validation).
        log_every_n_steps: the log interval (one host sync per interval).
        resume: decided by what exists: an existing directory is a run directory (its newest
            checkpoint that validates is loaded, corrupt ones skipped with a warning; none:
            a fresh start), an existing file is a checkpoint to load, and a path that does not
            exist is a run directory not made yet (a fresh start), unless its name ends in
            ``.ckpt`` (a missing checkpoint file is refused). ``state`` is then the template.
        stop_signals: signals (e.g. ``signal.SIGTERM`` for preemption) that stop training
            cleanly after the current batch: callbacks get `Interrupted` (`Checkpoint` saves),
            then `FitEnd`, and `fit` returns. Handlers are installed only for this call. With
            callbacks, Ctrl-C (SIGINT) does the same when the program has not set its own
            handler; a second Ctrl-C raises `KeyboardInterrupt` at once and nothing is saved.

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
    check_int("limit_train_batches", limit_train_batches, optional=True)
    check_int("limit_val_batches", limit_val_batches, optional=True)
    check_int("log_every_n_steps", log_every_n_steps, minimum=1)
    weights = _check_weights(val_weights)
    callbacks = _check_callback_list(callbacks)
    check_step_fn(step_fn, "fit")
    stop_signals = check_signals(stop_signals)
    train, val = _split_loaders(loaders)
    if resume is not None:
        state = _resume(state, resume)
    train = prepare_loader(state, train)
    if limit_val_batches == 0:  # Lightning's meaning: no validation
        val = None
    val = None if val is None else prepare_loader(state, val, train=False)
    run = _Watch(chain(*check_callbacks(callbacks, "fit")))
    check_memory(state, run.callback)
    mid_epoch_val = val is not None and val_every_n_steps is not None

    def after_step(state: TrainState, event: StepEnd) -> TrainState:
        # What fit adds after a step: validation every n steps (a history row of its own) and
        # stopping on a signal (Ctrl-C included) at the batch boundary.
        if mid_epoch_val and event.step % val_every_n_steps == 0:  # type: ignore[operator]
            state = _validate(state, val, state.epoch, run, limit_val_batches, weights)
        return set_progress(state, should_stop=True) if signalled else state

    # With nothing to call, train_epoch gets no callbacks and skips per-step event dispatch (and
    # Ctrl-C keeps Python's default: there is nothing a clean stop could save).
    if mid_epoch_val or stop_signals or callbacks:
        run.after_step = after_step
    epoch_callback = (run,) if run.after_step is not None else ()
    per_epoch = _batches_per_epoch(train, limit_train_batches)
    start = FitStart(
        step=state.step,
        epoch=state.epoch,
        max_epochs=max_epochs,
        max_steps=max_steps,
        log_every_n_steps=log_every_n_steps,
        val_every_n_epochs=None if val is None else val_every_n_epochs,
    )
    with catch_signals(stop_signals, graceful_interrupt=bool(callbacks)) as signalled:
        try:
            state = run(state.replace(should_stop=False), start)
            while not signalled and limit_train_batches != 0:
                # A run resumed at its last step may still have its epoch's end to do.
                if _done(state, max_epochs, max_steps) and _ended(state, per_epoch):
                    break
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
                run.last = state
                if state.epoch == epoch:  # stopped inside the epoch (limits, callback, signal)
                    break
                if not epoch_callback:  # else the row went in at EpochEnd, before the callbacks
                    state = _add_row(state, {"epoch": epoch, "step": state.step, **logs})
                if val is not None and state.epoch % val_every_n_epochs == 0:
                    state = _validate(state, val, epoch, run, limit_val_batches, weights)
                elif val is None:
                    state = step_scheduler(state, state.history[-1])
            if signalled:
                event = Interrupted(step=state.step, epoch=state.epoch, reason="signal")
                state = run(state, event)
            state = run(state, FitEnd(step=state.step, epoch=state.epoch, history=state.history))
        except BaseException as err:
            run.failed(err)
            raise
    return state, [dict(row) for row in state.history]


class _Watch(Watched):
    """fit's callbacks, watched: the last consistent state, so that a failure anywhere in `fit`
    (validation, an epoch end, a callback) reaches every callback as `Interrupted` once, with
    the state after the last completed step. A second Ctrl-C (`HardInterrupt`) reaches none:
    the weights may be half updated, so nothing may be saved from them."""

    __slots__ = ("after_step", "callback", "group_start", "last", "told")

    def __init__(self, callback: Callback) -> None:
        self.callback = callback
        self.last: TrainState | None = None
        self.told: BaseException | None = None
        self.group_start: int | None = None  # epoch_batch where an accumulation group began
        self.after_step: Callable[[TrainState, StepEnd], TrainState] | None = None  # fit's own

    def __call__(self, state: TrainState, event: Event) -> TrainState:
        kind = type(event)
        if kind is StepEnd:
            if state.micro_step:
                if self.group_start is None:  # the first micro-batch of an accumulation group
                    self.group_start = state.epoch_batch - 1
            elif self.group_start is not None:
                self.group_start = None
            self.last = state
            state = self.callback(state, event)
            self.last = state
            after = self.after_step
            return state if after is None else after(state, event)  # type: ignore[arg-type]
        if kind is Interrupted:
            return self.interrupt(state, event)  # type: ignore[arg-type]
        if kind is EpochEnd:  # the epoch's row is in the state before a callback saves it
            state = _add_row(state, {"epoch": event.epoch, "step": event.step, **event.metrics})  # type: ignore[union-attr]
        self.last = state
        state = self.callback(state, event)
        self.last = state
        return state

    def interrupt(self, state: TrainState, event: Interrupted) -> TrainState:
        self.told = event.error
        if isinstance(event.error, HardInterrupt):
            return state
        if state.micro_step and self.group_start is not None:
            # Inside a gradient-accumulation group the weights are still those of the group's
            # start and its gradients are not saved: the consistent point is the group's start.
            state = set_progress(state, micro_step=0, epoch_batch=self.group_start)
        return self.callback(state, event)

    def failed(self, err: BaseException) -> None:
        last = self.last
        if err is self.told or isinstance(err, HardInterrupt) or last is None or not last.is_live:
            return
        self.interrupt(
            last, Interrupted(step=last.step, epoch=last.epoch, reason="exception", error=err)
        )


def _add_row(state: TrainState, row: dict[str, Any]) -> TrainState:
    return set_progress(state, history=(*state.history, row))


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
    """Load what ``resume`` names, deciding by what exists (never by the name's dots)."""
    check_type("resume", resume, (str, os.PathLike), "a checkpoint file or run directory path")
    path = Path(resume)
    if path.is_dir():  # a run directory: its newest good checkpoint, or a fresh start
        found = latest_checkpoint(path)
        return state if found is None else load(state, found)
    if path.exists():
        return load(state, path)
    if path.suffix == CHECKPOINT_SUFFIX:  # a checkpoint file that is not there: a typo?
        msg = (
            f"`resume` names the checkpoint file {str(path)!r}, which does not exist. Pass an "
            "existing checkpoint, or a run directory (a new one starts the run)."
        )
        raise CheckpointError(msg)
    return state  # a run directory that does not exist yet: a fresh start


def _check_callback_list(callbacks: Any) -> Sequence[Callback]:
    if callable(callbacks) and not isinstance(callbacks, Sequence):
        return (callbacks,)
    if isinstance(callbacks, str | bytes | Mapping) or not isinstance(callbacks, Sequence):
        msg = (
            "`callbacks` must be a list of callbacks (state, event) -> state, or () for none "
            f"(got {describe(callbacks)})."
        )
        raise TypeError(msg)
    return callbacks


def check_step_fn(step_fn: Any, where: str) -> None:
    """Check ``step_fn`` can be called as ``step_fn(state, batch)``."""
    check_callable("step_fn", step_fn, "(state, batch) -> (state, metrics)", "ftrain.train_step")


def _batches_per_epoch(train: Any, limit: int | None) -> int | None:
    total = num_batches(train)
    return total if total is None or limit is None else min(total, limit)


def _ended(state: TrainState, per_epoch: int | None) -> bool:
    """Whether ``state``'s epoch is closed: not when every batch of it trained but its end (the
    `EpochEnd`, validation, epoch checkpoint) did not happen yet, as in a run resumed from a
    checkpoint taken at its last step."""
    return not (state.epoch_batch and per_epoch is not None and state.epoch_batch >= per_epoch)


def _split_loaders(loaders: Any) -> tuple[Iterable[Any], Iterable[Any] | None]:
    if loaders is None or isinstance(loaders, str | bytes):
        msg = (
            "`loaders` must be a train loader (a DataLoader or any iterable of batches), "
            f"`(train, val)` or {{'train': ..., 'val': ...}} (got {describe(loaders)})."
        )
        raise TypeError(msg)
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
    elif type(loaders) is tuple:
        msg = (
            "`loaders` as a tuple must be (train, val), 2 loaders (got a tuple of "
            f"{len(loaders)}). Pass a list of batches as a list."
        )
        raise ValueError(msg)
    else:
        train, val = loaders, None
    for name, loader in (("train", train), ("val", val)):
        if loader is not None and not isinstance(loader, Iterable):
            msg = (
                f"`loaders` must give an iterable {name} loader such as a DataLoader (got "
                f"{describe(loader)}). Pass `train`, `(train, val)` or a dict."
            )
            raise TypeError(msg)
    return train, val
