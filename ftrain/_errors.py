"""The exceptions ftrain raises.

Bad arguments raise the built-in :class:`TypeError` or :class:`ValueError` with a message that
names the argument, what was expected and what came. The classes below are for failures that are
ftrain's own: a consumed state used again, a placement mistake, a non-finite loss, a callback with
the wrong signature. All derive from :class:`FtrainError`, so ``except ftrain.FtrainError`` catches
every one of them.
"""

from __future__ import annotations

__all__ = [
    "CallbackSignatureError",
    "CheckpointError",
    "FtrainError",
    "NonFiniteError",
    "PlacementError",
    "StaleStateError",
]


class FtrainError(Exception):
    """Base class of every error ftrain raises on its own behalf."""


class StaleStateError(FtrainError):
    """A `TrainState` whose weights were advanced by a later step was used again.

    ftrain updates parameters and optimizer buffers in place (like buffer donation in JAX), so
    the input state of a step is consumed. Keep a copy with `ftrain.fork(state)` before the step
    if you need the old weights.
    """


class PlacementError(FtrainError):
    """`place` was asked for something it cannot do (placed twice, device not available, ...)."""


class NonFiniteError(FtrainError, FloatingPointError):
    """A loss or metric became NaN or infinite during training."""


class CallbackSignatureError(FtrainError, TypeError):
    """A callback or loss function cannot be called the way ftrain calls it."""


class CheckpointError(FtrainError):
    """A checkpoint is missing, truncated, corrupt, from a newer version or from another model."""
