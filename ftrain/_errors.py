"""The exceptions ftrain raises.

Bad arguments raise the built-in :class:`TypeError` or :class:`ValueError` with a message that
names the argument, what was expected and what came. The classes below are for failures that are
ftrain's own: a consumed state used again, a placement mistake, a non-finite loss, a callback with
the wrong signature. All derive from :class:`FtrainError`, so ``except ftrain.FtrainError`` catches
every one of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

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


# Argument checks. One policy everywhere (attrs' rule): a value of the wrong type raises
# `TypeError`, a value of the right type outside what is allowed raises `ValueError`; both name the
# argument, say what was expected and show what came.


def describe(value: object) -> str:
    """A short description of ``value`` for an error message: its type and a clipped repr."""
    if isinstance(value, type):
        return value.__qualname__
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def check_int(name: str, value: object, *, minimum: int | None = 0, optional: bool = False) -> None:
    """Check that ``value`` is an int (not a bool) ``>= minimum`` (or None, when ``optional``).

    >>> check_int("max_epochs", 1.5, optional=True)
    Traceback (most recent call last):
    ...
    TypeError: `max_epochs` must be an int >= 0 or None (got float 1.5).
    >>> check_int("every", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: `every` must be an int >= 1 (got 0).
    """
    if value is None and optional:
        return
    bound = "" if minimum is None else f" >= {minimum}"
    or_none = " or None" if optional else ""
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"`{name}` must be an int{bound}{or_none} (got {describe(value)})."
        raise TypeError(msg)
    if minimum is not None and value < minimum:
        msg = f"`{name}` must be an int{bound}{or_none} (got {value})."
        raise ValueError(msg)


def check_number(
    name: str, value: object, *, minimum: float | None = None, positive: bool = False
) -> None:
    """Check that ``value`` is a real number (int or float, not a bool), finite and in range.

    >>> check_number("max_norm", "1", positive=True)
    Traceback (most recent call last):
    ...
    TypeError: `max_norm` must be a number > 0 (got str '1').
    """
    bound = " > 0" if positive else "" if minimum is None else f" >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"`{name}` must be a number{bound} (got {describe(value)})."
        raise TypeError(msg)
    if (
        value != value  # NaN
        or value in (float("inf"), float("-inf"))
        or (positive and value <= 0)
        or (minimum is not None and value < minimum)
    ):
        msg = f"`{name}` must be a finite number{bound} (got {value!r})."
        raise ValueError(msg)


def check_type(name: str, value: object, expected: type | tuple[type, ...], what: str) -> None:
    """Check ``isinstance(value, expected)``; ``what`` says it in words ("a str or None").

    >>> check_type("prefix", 5, str, "a str")
    Traceback (most recent call last):
    ...
    TypeError: `prefix` must be a str (got int 5).
    """
    wrong_bool = isinstance(value, bool) and bool not in _as_tuple(expected)
    if wrong_bool or not isinstance(value, expected):
        msg = f"`{name}` must be {what} (got {describe(value)})."
        raise TypeError(msg)


def check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    """Check that ``value`` is one of ``choices``.

    >>> check_choice("mode", "maximum", ("min", "max"))
    Traceback (most recent call last):
    ...
    ValueError: `mode` must be one of 'min', 'max' (got 'maximum').
    """
    if value not in choices:
        options = ", ".join(repr(c) for c in choices)
        msg = f"`{name}` must be one of {options} (got {value!r})."
        raise ValueError(msg)


def check_callable(name: str, value: object, arguments: str, example: str) -> None:
    """Check that ``value`` is callable with two positional arguments (``arguments`` says which).

    >>> check_callable("step_fn", "sgd", "(state, batch)", "train_step")
    Traceback (most recent call last):
    ...
    TypeError: `step_fn` must be a function (state, batch) such as train_step (got str 'sgd').
    """
    if not callable(value):
        msg = f"`{name}` must be a function {arguments} such as {example} (got {describe(value)})."
        raise TypeError(msg)

    def refuse(signature: inspect.Signature) -> TypeError:
        got = describe(value)
        return TypeError(
            f"`{name}` must be a function {arguments} such as {example}, but its signature is "
            f"{signature} (got {got})."
        )

    check_pair(value, refuse)


def check_pair(fn: Callable[..., Any], refuse: Callable[[inspect.Signature], Exception]) -> None:
    """Raise ``refuse(signature)`` when ``fn`` cannot be called with two positional arguments
    (a callable without a signature to read, a builtin or C function, goes unchecked)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(None, None)
    except TypeError:
        raise refuse(signature) from None


def _as_tuple(expected: type | tuple[type, ...]) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)
