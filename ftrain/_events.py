"""The small frozen records `fit` and the epoch functions emit to callbacks.

Events are types, not method names: a callback dispatches on ``isinstance(event, EpochEnd)`` or is
wrapped with `ftrain.on`. The order for one run is::

    FitStart
      EpochStart, (StepEnd, [IntervalEnd])*, EpochEnd, [EvalEnd]     once per epoch
    FitEnd

`Interrupted` comes instead of the rest when training is cut short: by an exception inside
`train_epoch` (the event carries it; the exception is re-raised after the callbacks ran) or by a
stop signal `fit` was asked to handle (then `FitEnd` follows and `fit` returns normally).
``IntervalEnd`` comes every ``log_every_n_steps`` optimizer steps, with metrics already brought to
the host (and averaged across processes): loggers listen to it and never sync on their own.
``EvalEnd`` also comes mid-epoch when validation runs every N steps. Epoch indices are 0-based,
as in ``DistributedSampler.set_epoch``; ``state.epoch`` counts completed epochs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import torch

__all__ = [
    "EpochEnd",
    "EpochStart",
    "EvalEnd",
    "FitEnd",
    "FitStart",
    "Interrupted",
    "IntervalEnd",
    "StepEnd",
]


@attrs.frozen
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


@attrs.frozen
class EpochStart:
    """An epoch (index ``epoch``) starts or resumes at batch ``first_batch``."""

    epoch: int
    num_batches: int | None
    first_batch: int = 0


@attrs.frozen
class StepEnd:
    """A training batch was processed. ``metrics`` are device tensors: reading them syncs."""

    step: int
    epoch: int
    batch: int
    metrics: Mapping[str, torch.Tensor]
    batch_size: int


@attrs.frozen
class IntervalEnd:
    """End of a log interval: sample-weighted means over it, as floats (one sync per interval)."""

    step: int
    epoch: int
    metrics: Mapping[str, float]


@attrs.frozen
class EpochEnd:
    """An epoch finished. ``metrics`` hold ``train_*`` means, ``lr``, ``epoch_time`` and
    ``samples_per_sec``."""

    epoch: int
    step: int
    metrics: Mapping[str, float]


@attrs.frozen
class EvalEnd:
    """Validation finished. ``metrics`` hold ``val_*`` means over every validation sample."""

    epoch: int
    step: int
    metrics: Mapping[str, float]


@attrs.frozen
class FitEnd:
    """`fit` is returning. ``history`` is what it returns beside the state."""

    step: int
    epoch: int
    history: tuple[Mapping[str, Any], ...]


@attrs.frozen
class Interrupted:
    """Training was cut short at ``step``: ``reason`` is ``"signal"`` or ``"exception"``.

    The state given with it is the last consistent one (after the last completed batch).
    """

    step: int
    epoch: int
    reason: str
    error: BaseException | None = None
