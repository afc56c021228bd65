"""LR schedulers that step at epoch ends or on a metric, and `step_scheduler`, which steps the
metric-driven ones (``ReduceLROnPlateau``) on the metric the user named.

Per-step schedulers step inside `apply_gradients`; ``"epoch"``-interval ones at the end of
`train_epoch`; metric-driven ones when `step_scheduler` is called with the epoch's metrics, which
`fit` does after each epoch's validation (after each epoch when there is no validation) and a
custom loop does itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs
import torch

from ._errors import describe

if TYPE_CHECKING:
    from ._phases import Phase
    from ._state import TrainState

__all__ = [
    "check_scheduler",
    "is_metric_driven",
    "resolve_interval",
    "settle_scheduler",
    "step_epoch_scheduler",
    "step_scheduler",
]

_Plateau = torch.optim.lr_scheduler.ReduceLROnPlateau


def is_metric_driven(scheduler: object) -> bool:
    """Whether ``scheduler`` steps on a metric (``ReduceLROnPlateau``)."""
    return isinstance(scheduler, _Plateau)


def resolve_interval(scheduler: object, interval: str | None) -> Literal["step", "epoch"]:
    """The interval a scheduler steps at: as given, else ``"epoch"`` for a metric-driven one
    and ``"step"`` for the others."""
    if interval is not None:
        return "epoch" if interval == "epoch" else "step"
    return "epoch" if is_metric_driven(scheduler) else "step"


def settle_scheduler(phase: Phase) -> Phase:
    """``phase`` (its scheduler built) with its interval resolved, after the checks at create."""
    interval = resolve_interval(phase.scheduler, phase.scheduler_interval)
    where = f" of phase {phase.name!r}" if phase.name else ""
    check_scheduler(phase.scheduler, interval, phase.scheduler_monitor, where)
    if interval == phase.scheduler_interval:
        return phase
    return attrs.evolve(phase, scheduler_interval=interval)


def check_scheduler(scheduler: object, interval: str, monitor: str | None, where: str) -> None:
    """Refuse, at create, the combinations that cannot work (``where`` names the phase)."""
    if monitor is not None and not isinstance(monitor, str):
        msg = (
            f"`scheduler_monitor`{where} must be a metric name such as 'val_acc' "
            f"(got {describe(monitor)})."
        )
        raise TypeError(msg)
    if not is_metric_driven(scheduler):
        if monitor is not None:
            msg = (
                f"`scheduler_monitor={monitor!r}`{where} was given, but the scheduler "
                f"({describe(scheduler)}) does not step on a metric; only ReduceLROnPlateau "
                "does. Drop scheduler_monitor."
            )
            raise ValueError(msg)
        return
    if interval == "step":
        msg = (
            f"ReduceLROnPlateau{where} steps on a metric measured at an epoch's end, so it cannot "
            "step after every optimizer step: drop scheduler_interval='step' (it steps with "
            "ftrain.step_scheduler, which fit calls after each validation)."
        )
        raise ValueError(msg)
    if monitor is None and scheduler.mode == "max":  # type: ignore[attr-defined]
        msg = (
            f"ReduceLROnPlateau(mode='max'){where} needs to know which metric to maximise: pass "
            "scheduler_monitor='val_acc' (the name as logged, e.g. 'val_acc' or 'train_acc')."
        )
        raise ValueError(msg)


def step_epoch_scheduler(state: TrainState) -> None:
    """Step ``"epoch"``-interval schedulers at an epoch's end (not the metric-driven ones)."""
    for _, scheduler, interval, _ in _schedulers(state):
        if interval == "epoch" and not is_metric_driven(scheduler):
            scheduler.step()


def step_scheduler(state: TrainState, metrics: Mapping[str, Any]) -> TrainState:
    """Step the state's metric-driven schedulers (``ReduceLROnPlateau``) on the metrics of an epoch.

    Each such scheduler steps on the metric named by its ``scheduler_monitor`` (given to
    `TrainState.create` or `ftrain.Phase`), in the direction of its own ``mode``:
    ``ReduceLROnPlateau(o, mode="max")`` with ``scheduler_monitor="val_acc"`` lowers the learning
    rate when the accuracy stops rising. Without a monitor (``mode="min"`` only) it watches
    ``val_loss``, or ``train_loss`` when ``metrics`` has no validation (a phase's own
    ``val_<phase>_loss``, ``train_<phase>_loss``). Other schedulers are left alone: they step in
    `apply_gradients` or at the end of `train_epoch`.

    `fit` calls it after each epoch's validation (after each epoch when there is no validation)
    with the epoch's train logs and validation metrics; call it the same way in a loop of your
    own, once per epoch.

    Args:
        state: a live state.
        metrics: the epoch's metrics as floats, e.g. ``{**train_logs, **val_metrics}``.

    Returns:
        ``state`` (the schedulers and the optimizer's learning rates changed in place).

    Raises:
        ValueError: the monitored metric is not in ``metrics`` (the message lists those that
            are), or it is not a number.

    Example:
        >>> import torch, ftrain
        >>> state = ftrain.TrainState.create(
        ...     model=torch.nn.Linear(2, 1),
        ...     optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
        ...     loss_fn=lambda m, b: m(b).mean(),
        ...     scheduler=lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(
        ...         o, mode="max", patience=0, factor=0.5
        ...     ),
        ...     scheduler_monitor="val_acc",
        ... )
        >>> for acc in (0.5, 0.7, 0.7):
        ...     state = ftrain.step_scheduler(state, {"val_acc": acc, "val_loss": 1.0})
        ...     print(state.lr)
        1.0
        1.0
        0.5
    """
    from ._state import check_live

    check_live(state, "step_scheduler")
    for name, scheduler, _, monitor in _schedulers(state):
        if not is_metric_driven(scheduler):
            continue
        key = monitor
        if key is None:
            own = f"{name}_loss" if name else "loss"
            key = f"val_{own}" if f"val_{own}" in metrics else f"train_{own}"
        if key not in metrics:
            where = f" of phase {name!r}" if name else ""
            msg = (
                f"The scheduler{where} watches {key!r}, which is not among the metrics it was "
                f"given ({', '.join(sorted(metrics)) or 'none'}). Name a logged metric with "
                "scheduler_monitor=..., e.g. 'val_acc', and validate every epoch."
            )
            raise ValueError(msg)
        value = metrics[key]
        if isinstance(value, torch.Tensor):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            msg = (
                f"The metric {key!r} given to `step_scheduler` must be a number "
                f"(got {describe(value)})."
            )
            raise ValueError(msg)
        scheduler.step(value)
    return state


def _schedulers(state: TrainState) -> Iterator[tuple[str, Any, str, str | None]]:
    """``(phase name, scheduler, interval, monitor)`` for each scheduler the state holds."""
    for p in state.phases:
        if p.scheduler is not None:
            yield p.name, p.scheduler, p.scheduler_interval or "step", p.scheduler_monitor
