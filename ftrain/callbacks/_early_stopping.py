"""`EarlyStopping`: stop when a monitored metric stops improving."""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs

from .._checkpoint import checkpoint_record
from .._events import EpochEnd, EvalEnd
from .._state import TrainState

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
    under DDP every rank decides the same.

    Attributes:
        monitor: the metric to watch, e.g. ``"val_loss"`` or ``"val_acc"``.
        mode: ``"min"`` or ``"max"``; None picks ``"max"`` for names containing ``acc`` and
            ``"min"`` otherwise.
        patience: evaluations without improvement before stopping.
        min_delta: the smallest change that counts as an improvement.
        name: the key of its memory in ``state.callback_state``.

    Example:
        >>> import ftrain
        >>> stop = ftrain.callbacks.EarlyStopping(monitor="val_loss", patience=1)
        >>> state = ftrain.testing.toy_state()
        >>> for loss in (1.0, 2.0):
        ...     state = stop(state, ftrain.EvalEnd(epoch=0, step=0, metrics={"val_loss": loss}))
        >>> state.should_stop
        True
    """

    monitor: str = "val_loss"
    mode: Literal["min", "max"] | None = attrs.field(default=None)
    patience: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    min_delta: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    name: str = "early_stopping"

    @mode.validator
    def _check_mode(self, _attribute: Any, value: Any) -> None:
        if value not in (None, "min", "max"):
            msg = f"`mode` must be 'min', 'max' or None (got {value!r})."
            raise ValueError(msg)

    @property
    def resolved_mode(self) -> str:
        if self.mode is not None:
            return self.mode
        return "max" if "acc" in self.monitor else "min"

    def __call__(self, state: TrainState, event: Any) -> TrainState:
        wanted = EpochEnd if self.monitor.startswith("train_") else EvalEnd
        if not isinstance(event, wanted):
            return state
        if self.monitor not in event.metrics:
            available = ", ".join(sorted(event.metrics)) or "none"
            msg = (
                f"EarlyStopping `monitor` {self.monitor!r} is not among the metrics of "
                f"{type(event).__name__} (available: {available})."
            )
            raise KeyError(msg)
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
