"""`LearningRateMonitor`, `TerminateOnNaN` and `Timer`: small callbacks with memory in the state."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import ClassVar

import attrs

from .._checkpoint import checkpoint_record
from .._errors import check_choice, check_int, check_type, describe
from .._events import EpochEnd, EvalEnd, Event, FitEnd, FitStart, IntervalEnd, StepEnd
from .._state import TrainState

__all__ = ["LearningRateMonitor", "TerminateOnNaN", "Timer", "TimerState"]


@attrs.frozen
class LearningRateMonitor:
    """Record the learning rate of every parameter group into the state.

    At each `IntervalEnd` (``interval="step"``) or `EpochEnd` (``"epoch"``) it appends
    ``(step, (lr_group0, lr_group1, ...))`` to ``state.callback_state[name]``, so the schedule
    that was actually applied travels with the state and its checkpoints. (The first group's LR
    is also in every `IntervalEnd`/`EpochEnd` as ``lr``, which the loggers write.)

    Example:
        >>> import ftrain
        >>> mon = ftrain.callbacks.LearningRateMonitor(interval="epoch")
        >>> event = ftrain.EpochEnd(step=5, epoch=0, metrics={})
        >>> state = mon(ftrain.testing.toy_state(lr=0.1), event)
        >>> state.callback_state["lr_monitor"]
        ((5, (0.1,)),)
    """

    memory_type: ClassVar[type] = tuple

    interval: str = "step"
    name: str = "lr_monitor"

    def __attrs_post_init__(self) -> None:
        check_choice("interval", self.interval, ("step", "epoch"))
        check_type("name", self.name, str, "a str")

    def __call__(self, state: TrainState, event: Event) -> TrainState:
        wanted = IntervalEnd if self.interval == "step" else EpochEnd
        if not isinstance(event, wanted):
            return state
        lrs = tuple(float(g["lr"]) for p in state.phases for g in p.optimizer.param_groups)
        rows = (*state.callback_state.get(self.name, ()), (event.step, lrs))
        return state.replace(callback_state={**state.callback_state, self.name: rows})


@attrs.frozen
class TerminateOnNaN:
    """Stop `fit` gracefully when a monitored metric becomes NaN or infinite.

    The loop already raises `NonFiniteError` when the training loss is non-finite at a log-interval
    sync. This callback covers the other metrics (``val_loss``, ``grad_norm``, ...) on the events
    that carry host values, and stops instead of raising. With ``check_every_n_steps`` it also
    reads the step loss every n steps, which is one host sync per n steps (documented cost).

    When it stops it records ``{"step": ..., "metrics": (names, ...)}`` in
    ``state.callback_state[name]``.

    Attributes:
        monitor: metric names to check; None checks every metric of the event.
        check_every_n_steps: also check the step loss every n steps (syncs), or None.
        name: the key of its memory in ``state.callback_state``.
    """

    memory_type: ClassVar[type] = dict

    monitor: Sequence[str] | None = None
    check_every_n_steps: int | None = None
    name: str = "terminate_on_nan"

    def __attrs_post_init__(self) -> None:
        if self.monitor is not None and (
            isinstance(self.monitor, str)
            or not isinstance(self.monitor, Sequence)
            or not all(isinstance(k, str) for k in self.monitor)
        ):
            msg = (
                "`monitor` must be a list of metric names such as ['val_loss'], or None for all "
                f"(got {describe(self.monitor)})."
            )
            raise TypeError(msg)
        check_int("check_every_n_steps", self.check_every_n_steps, minimum=1, optional=True)
        check_type("name", self.name, str, "a str")

    def __call__(self, state: TrainState, event: Event) -> TrainState:
        if isinstance(event, StepEnd):
            n = self.check_every_n_steps
            if n is None or event.step % n or "loss" not in event.metrics:
                return state
            values = {"loss": float(event.metrics["loss"])}  # the documented sync
        elif isinstance(event, IntervalEnd | EpochEnd | EvalEnd):
            values = dict(event.metrics)
        else:
            return state
        keys = values if self.monitor is None else [k for k in self.monitor if k in values]
        bad = [k for k in keys if isinstance(values[k], float) and not math.isfinite(values[k])]
        if not bad:
            return state
        memory = {"step": event.step, "metrics": tuple(bad)}
        return state.replace(
            should_stop=True, callback_state={**state.callback_state, self.name: memory}
        )


@checkpoint_record
@attrs.frozen
class TimerState:
    """The Timer's memory: training seconds of the run so far (as of the last write) and where
    it stopped; ``started``/``before`` are the clock (``time.monotonic()``) and ``elapsed`` when
    the current `fit` started (None before any)."""

    elapsed: float = 0.0
    stopped_at_step: int | None = None
    started: float | None = None
    before: float = 0.0


class Timer:
    """Stop `fit` once the run has trained for ``max_time`` (``timedelta``, seconds or
    ``"DD:HH:MM:SS"``).

    Time used by earlier `fit` calls is kept in ``state.callback_state[name]`` (so a resumed run
    counts it). The clock is read on every step (a cheap host clock, no device sync).

    Example:
        >>> import ftrain
        >>> timer = ftrain.callbacks.Timer(max_time="00:01:00:00")  # one hour
        >>> timer.max_seconds
        3600.0
    """

    memory_type: ClassVar[type] = TimerState

    def __init__(self, max_time: timedelta | float | str, name: str = "timer"):
        check_type("name", name, str, "a str")
        self.max_seconds = _seconds(max_time)
        self.name = name

    def __call__(self, state: TrainState, event: Event) -> TrainState:
        memory: TimerState | None = state.callback_state.get(self.name)
        if isinstance(event, FitStart):
            memory = memory or TimerState()
            memory = attrs.evolve(memory, started=time.monotonic(), before=memory.elapsed)
            return state.replace(callback_state={**state.callback_state, self.name: memory})
        if memory is None or memory.started is None:  # no FitStart seen
            return state
        elapsed = memory.before + time.monotonic() - memory.started
        over = elapsed >= self.max_seconds
        if not (over or isinstance(event, EpochEnd | FitEnd)):
            return state
        memory = attrs.evolve(memory, elapsed=elapsed, stopped_at_step=state.step if over else None)
        return state.replace(
            callback_state={**state.callback_state, self.name: memory},
            should_stop=state.should_stop or over,
        )


def _seconds(value: timedelta | float | str) -> float:
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", value):
        d, h, m, s = map(int, value.split(":"))
        seconds = float(((d * 24 + h) * 60 + m) * 60 + s)
    elif isinstance(value, str):
        msg = f"`max_time` must be a str 'DD:HH:MM:SS' (got {value!r})."
        raise ValueError(msg)
    else:
        msg = (
            "`max_time` must be a timedelta, a number of seconds or 'DD:HH:MM:SS' "
            f"(got {describe(value)})."
        )
        raise TypeError(msg)
    if seconds <= 0:
        msg = f"`max_time` must be positive (got {value!r})."
        raise ValueError(msg)
    return seconds
