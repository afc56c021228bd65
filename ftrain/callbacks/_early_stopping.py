"""`EarlyStopping`: stop when a monitored metric stops improving."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import attrs

from .._checkpoint import checkpoint_record
from .._errors import check_int, check_number, check_type
from .._events import EpochEnd, EvalEnd, Event
from .._state import TrainState
from ._mode import resolve_mode

__all__ = ["EarlyStopping", "EarlyStoppingState"]


@checkpoint_record
@attrs.frozen
class EarlyStoppingState:
    """EarlyStopping's memory, kept in ``state.callback_state[name]`` (so it is checkpointed)."""

    best: float | None = None
    best_step: int = 0
    wait: int = 0
    stopped_at_epoch: int | None = None


@attrs.frozen
class EarlyStopping:
    """Ask `fit` to stop when ``monitor`` has not improved for ``patience`` evaluations.

    It reacts to `EvalEnd` (``val_*`` metrics) or, for a ``train_*`` metric, to `EpochEnd`. Its
    memory (best value, patience counter) lives in ``state.callback_state[name]``; stopping means
    returning a state with ``should_stop=True``. Every process sees the same averaged metrics, so
    under DDP every rank decides the same. Two `EarlyStopping` callbacks in one run need two
    names (`fit` refuses a shared one).

    Attributes:
        monitor: the metric to watch, e.g. ``"val_loss"`` or ``"val_acc"``.
        mode: ``"min"`` or ``"max"``; None picks ``"max"`` for names containing ``acc`` and
            ``"min"`` otherwise.
        patience: evaluations without improvement before stopping.
        min_delta: the smallest change that counts as an improvement.
        name: the key of its memory in ``state.callback_state``.

    Raises:
        ValueError: ``monitor`` is not among the metrics of the event it watches (the message
            lists those there).

    Example:
        >>> import ftrain
        >>> stop = ftrain.callbacks.EarlyStopping(monitor="val_loss", patience=1)
        >>> state = ftrain.testing.toy_state()
        >>> for loss in (1.0, 2.0):
        ...     state = stop(state, ftrain.EvalEnd(step=0, epoch=0, metrics={"val_loss": loss}))
        >>> state.should_stop
        True
    """

    memory_type: ClassVar[type] = EarlyStoppingState

    monitor: str = attrs.field(default="val_loss")
    mode: Literal["min", "max"] | None = attrs.field(default=None)
    patience: int = attrs.field(default=3)
    min_delta: float = attrs.field(default=0.0)
    name: str = attrs.field(default="early_stopping")

    def __attrs_post_init__(self) -> None:
        check_type("monitor", self.monitor, str, "a metric name (str)")
        resolve_mode(self.mode, self.monitor)
        check_int("patience", self.patience)
        check_number("min_delta", self.min_delta, minimum=0.0)
        check_type("name", self.name, str, "a str")

    @property
    def resolved_mode(self) -> Literal["min", "max"]:
        """``mode``, or the one inferred from ``monitor``."""
        return resolve_mode(self.mode, self.monitor)

    def __call__(self, state: TrainState, event: Event) -> TrainState:
        wanted = EpochEnd if self.monitor.startswith("train_") else EvalEnd
        if not isinstance(event, wanted):
            return state
        if self.monitor not in event.metrics:
            available = ", ".join(sorted(event.metrics)) or "none"
            msg = (
                f"EarlyStopping `monitor` {self.monitor!r} is not among the metrics of "
                f"{type(event).__name__} (available: {available}). Pass one of those as "
                "`monitor=`."
            )
            raise ValueError(msg)
        value = float(event.metrics[self.monitor])
        memory = state.callback_state.get(self.name, EarlyStoppingState())
        if self._improved(value, memory.best):
            memory = attrs.evolve(memory, best=value, best_step=event.step, wait=0)
        else:
            memory = attrs.evolve(memory, wait=memory.wait + 1)
        stop = memory.wait >= max(self.patience, 1) or math.isnan(value)
        if stop:
            memory = attrs.evolve(memory, stopped_at_epoch=event.epoch)
        callback_state = {**state.callback_state, self.name: memory}
        return state.replace(callback_state=callback_state, should_stop=state.should_stop or stop)

    def _improved(self, value: float, best: float | None) -> bool:
        if math.isnan(value):
            return False
        if best is None:
            return True
        if self.resolved_mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta
