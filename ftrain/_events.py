"""The small frozen records `fit` and the epoch functions emit to callbacks.

Events are types, not method names: a callback dispatches on ``isinstance(event, EpochEnd)`` or is
wrapped with `ftrain.on`. Every event is keyword-only and starts with the same two fields,
``step`` (optimizer steps so far) and ``epoch`` (the index of the epoch it belongs to), then its
own. The order for one run is::

    FitStart
      EpochStart, (StepEnd, [IntervalEnd])*, EpochEnd, [EvalEnd]     once per epoch
    FitEnd

`Interrupted` comes instead of the rest when training is cut short: by an exception inside
`train_epoch` (the event carries it; the exception is re-raised after the callbacks ran) or by a
stop signal `fit` was asked to handle (then `FitEnd` follows and `fit` returns normally).
``IntervalEnd`` comes every ``log_every_n_steps`` optimizer steps, with metrics already brought to
the host (and averaged across processes): loggers listen to it and never sync on their own.
``EvalEnd`` also comes mid-epoch when validation runs every N steps. Epoch indices are 0-based,
as in ``DistributedSampler.set_epoch``; ``state.epoch`` counts completed epochs, so on `EpochEnd`
``event.epoch == state.epoch - 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeAlias

import attrs
import torch

__all__ = [
    "EpochEnd",
    "EpochStart",
    "EvalEnd",
    "Event",
    "FitEnd",
    "FitStart",
    "Interrupted",
    "IntervalEnd",
    "StepEnd",
]


@attrs.frozen(kw_only=True)
class FitStart:
    """`fit` is starting (also when it continues a resumed run).

    ``val_every_n_epochs`` is None when `fit` has no validation loader.
    """

    step: int
    epoch: int
    max_epochs: int | None
    max_steps: int | None
    log_every_n_steps: int = 50
    val_every_n_epochs: int | None = None


@attrs.frozen(kw_only=True)
class EpochStart:
    """An epoch starts, or resumes at batch ``first_batch``; ``num_batches`` is None when the
    loader has no length."""

    step: int
    epoch: int
    num_batches: int | None
    first_batch: int = 0


@attrs.frozen(kw_only=True)
class StepEnd:
    """A training batch (index ``batch`` in the epoch) was processed.

    ``metrics`` are device tensors: reading them syncs.
    """

    step: int
    epoch: int
    batch: int
    metrics: Mapping[str, torch.Tensor]
    batch_size: int


@attrs.frozen(kw_only=True)
class _Summary:
    """The fields of the events that report host metrics (floats): ``step``, ``epoch``,
    ``metrics``. Each such event is its own subclass, so callbacks dispatch on the subclass."""

    step: int
    epoch: int
    metrics: Mapping[str, float]


@attrs.frozen(kw_only=True)
class IntervalEnd(_Summary):
    """End of a log interval: sample-weighted means over it, as floats (one sync per interval)."""


@attrs.frozen(kw_only=True)
class EpochEnd(_Summary):
    """An epoch finished. ``metrics`` hold ``train_*`` means, ``lr``, ``epoch_time`` and
    ``samples_per_sec``."""


@attrs.frozen(kw_only=True)
class EvalEnd(_Summary):
    """Validation finished. ``metrics`` hold ``val_*`` means over every validation sample."""


@attrs.frozen(kw_only=True)
class FitEnd:
    """`fit` is returning. ``history`` is what it returns beside the state."""

    step: int
    epoch: int
    history: tuple[Mapping[str, Any], ...]


@attrs.frozen(kw_only=True)
class Interrupted:
    """Training was cut short at ``step``, by a stop signal or by ``error``.

    The state given with it is the last consistent one (after the last completed batch).
    """

    step: int
    epoch: int
    reason: Literal["signal", "exception"]
    error: BaseException | None = None


Event: TypeAlias = (
    FitStart | EpochStart | StepEnd | IntervalEnd | EpochEnd | EvalEnd | Interrupted | FitEnd
)
"""Any event `fit` or `train_epoch` emits: what a `Callback` is called with."""
