"""Callback combinators: `chain`, `every`, `on`, `when`.

A callback is any callable ``(state, event) -> state``. These helpers build new callbacks from old
ones; they hold no mutable state of their own. Callbacks with memory (`CallbackWithMemory`) are
checked here for names that collide, when they are chained and when `fit` starts.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar, overload

import attrs

from ._errors import CallbackSignatureError, check_int, check_pair
from ._events import EpochEnd, EvalEnd, Event, Interrupted, IntervalEnd, StepEnd
from ._state import TrainState
from ._typing import Callback, CallbackWithMemory

__all__ = ["Watched", "chain", "check_callbacks", "check_memory", "every", "on", "when"]


class Watched:
    """Base of a callback that checks the callbacks it wraps itself (`fit`'s watcher): `chain`
    passes a single one through instead of wrapping it, so a step pays one dispatch, not two."""

    __slots__ = ()


@attrs.frozen
class _Chain:
    callbacks: tuple[Callback, ...]

    def __call__(self, state: TrainState, event: Event) -> TrainState:
        if type(event) is Interrupted:
            return interrupt_each(self.callbacks, state, event)
        for cb in self.callbacks:
            new = cb(state, event)
            if type(new) is not TrainState:
                _not_a_state(new, cb, event)
            state = new
        return state


def interrupt_each(
    callbacks: Sequence[Callback], state: TrainState, event: Interrupted
) -> TrainState:
    """Deliver `Interrupted` to each callback on its own: one that raises (a warning names it,
    and a note on the interrupting error) does not keep the ones after it from saving."""
    for cb in callbacks:
        try:
            new = cb(state, event)
        except Exception as err:  # a second Ctrl-C (KeyboardInterrupt) still stops at once
            note = (
                f"callback {_name(cb)!r} raised {type(err).__name__} ({err}) on Interrupted; "
                "the callbacks after it still got the event."
            )
            warnings.warn(note, stacklevel=3)
            add_note = getattr(event.error, "add_note", None)  # Python 3.11+
            if add_note is not None:
                add_note(note)
            continue
        if type(new) is TrainState:
            state = new
    return state


def chain(*callbacks: Callback) -> Callback:
    """Apply ``callbacks`` in order, threading the state through each one.

    The order is the order given, every time, for every event: no hidden priorities. `Interrupted`
    reaches every callback even when one before it raises (the error becomes a warning), so a
    failing logger cannot keep `Checkpoint` from saving.

    Raises:
        CallbackSignatureError: a callback cannot be called as ``cb(state, event)``.
        ValueError: two callbacks keep their memory under one ``name`` in
            ``state.callback_state`` (give one of them another ``name=``).

    Example:
        >>> import ftrain
        >>> seen = []
        >>> log = lambda state, event: (seen.append(type(event).__name__), state)[1]
        >>> cb = ftrain.chain(log, log)
        >>> start = ftrain.FitStart(step=0, epoch=0, max_epochs=1, max_steps=None)
        >>> state = cb(ftrain.testing.toy_state(), start)
        >>> seen
        ['FitStart', 'FitStart']
    """
    if len(callbacks) == 1 and isinstance(callbacks[0], _Chain | Watched):
        return callbacks[0]
    flat: list[Callback] = []
    for cb in check_callbacks(callbacks, "chain"):
        flat.extend(cb.callbacks if isinstance(cb, _Chain) else (cb,))
    _check_unique_names(flat)
    return _Chain(tuple(flat))


@attrs.frozen
class _On:
    types: tuple[type, ...]
    callback: Callback

    def __call__(self, state: TrainState, event: Event) -> TrainState:
        if isinstance(event, self.types):
            return self.callback(state, event)
        return state


_E = TypeVar("_E")


@overload
def on(event_type: type[_E], callback: Callable[[TrainState, _E], TrainState]) -> Callback: ...


@overload
def on(event_type: tuple[type, ...], callback: Callback) -> Callback: ...


def on(event_type: type | tuple[type, ...], callback: Callable[..., TrainState]) -> Callback:
    """Call ``callback`` only for events of ``event_type`` (a type or a tuple of types).

    Example:
        >>> import ftrain
        >>> cb = ftrain.on(ftrain.EpochEnd, lambda state, event: state.replace(should_stop=True))
        >>> start = ftrain.FitStart(step=0, epoch=0, max_epochs=1, max_steps=None)
        >>> cb(ftrain.testing.toy_state(), start).should_stop
        False
    """
    types = event_type if isinstance(event_type, tuple) else (event_type,)
    if not types or not all(isinstance(t, type) for t in types):
        msg = f"`event_type` must be an event class or a tuple of them (got {event_type!r})."
        raise TypeError(msg)
    check_callbacks((callback,), "on")
    return _On(types, callback)


_COUNTERS: dict[type, Callable[[Any], int]] = {
    StepEnd: lambda e: e.step,
    IntervalEnd: lambda e: e.step,
    EpochEnd: lambda e: e.epoch + 1,
    EvalEnd: lambda e: e.epoch + 1,
}


@attrs.frozen
class _Every:
    n: int
    event_type: type
    callback: Callback

    def __call__(self, state: TrainState, event: Event) -> TrainState:
        if isinstance(event, self.event_type) and _COUNTERS[self.event_type](event) % self.n == 0:
            return self.callback(state, event)
        return state


def every(n: int, callback: Callback, *, event_type: type = StepEnd) -> Callback:
    """Call ``callback`` on every ``n``-th event of ``event_type`` (default `StepEnd`).

    Steps are counted by ``state.step`` (optimizer steps), epochs by the number of completed
    epochs, so ``every(2, cb, event_type=EpochEnd)`` fires after epochs 2, 4, ...

    Example:
        >>> import ftrain
        >>> cb = ftrain.every(100, lambda state, event: state.replace(should_stop=True))
        >>> event = ftrain.StepEnd(step=100, epoch=0, batch=99, metrics={}, batch_size=8)
        >>> cb(ftrain.testing.toy_state(), event).should_stop
        True
    """
    check_int("n", n, minimum=1)
    if event_type not in _COUNTERS:
        names = ", ".join(t.__name__ for t in _COUNTERS)
        msg = f"`event_type` must be one of {names} (got {event_type!r})."
        raise ValueError(msg)
    check_callbacks((callback,), "every")
    return _Every(n, event_type, callback)


@attrs.frozen
class _When:
    predicate: Callable[[TrainState, Any], bool]
    callback: Callback

    def __call__(self, state: TrainState, event: Event) -> TrainState:
        return self.callback(state, event) if self.predicate(state, event) else state


def when(predicate: Callable[[TrainState, Any], bool], callback: Callback) -> Callback:
    """Call ``callback`` only when ``predicate(state, event)`` is true.

    Example:
        >>> import ftrain
        >>> late = ftrain.when(lambda s, e: s.step >= 10, lambda s, e: s.replace(should_stop=True))
        >>> late(ftrain.testing.toy_state(), None).should_stop
        False
    """
    check_callbacks((predicate,), "when", what="predicate")
    check_callbacks((callback,), "when")
    return _When(predicate, callback)


_COMBINATORS = (_Chain, _On, _Every, _When)


def check_callbacks(
    callbacks: Iterable[Any], where: str, *, what: str = "callback"
) -> Sequence[Callback]:
    """Check, once at registration, that each callback can be called as ``cb(state, event)``."""
    if callable(callbacks) and not isinstance(callbacks, Sequence):
        callbacks = (callbacks,)
    out = []
    for i, cb in enumerate(callbacks):
        name = getattr(cb, "__name__", type(cb).__name__)
        if not callable(cb):
            msg = (
                f"{what} {i} passed to `{where}` must be callable as {what}(state, event) "
                f"(got {type(cb).__name__} {cb!r})."
            )
            raise CallbackSignatureError(msg)
        if isinstance(cb, _COMBINATORS):  # built by chain/on/every/when: checked then
            out.append(cb)
            continue
        check_pair(cb, functools.partial(_refused_callback, f"{what} {name!r} passed to `{where}`"))
        out.append(cb)
    return out


def _refused_callback(which: str, signature: inspect.Signature) -> CallbackSignatureError:
    return CallbackSignatureError(
        f"{which} must accept (state, event), but its signature is {signature}. A callback is a "
        "function (state, event) -> state."
    )


def _name(cb: object) -> str:
    return str(getattr(cb, "__name__", type(cb).__name__))


def _not_a_state(result: Any, cb: Any, event: Any) -> None:
    msg = (
        f"callback {_name(cb)!r} must return a TrainState (got {type(result).__name__} on "
        f"{type(event).__name__}). An observer returns the state it was given."
    )
    raise CallbackSignatureError(msg)


def _with_memory(callbacks: Iterable[Any]) -> Iterator[CallbackWithMemory]:
    """The callbacks with memory in ``callbacks``, looking inside chain/on/every/when."""
    for cb in callbacks:
        if isinstance(cb, _Chain):
            yield from _with_memory(cb.callbacks)
        elif isinstance(cb, _On | _Every | _When):
            yield from _with_memory((cb.callback,))
        elif isinstance(cb, CallbackWithMemory):
            yield cb


def _check_unique_names(callbacks: Sequence[Callback]) -> None:
    owners: dict[str, CallbackWithMemory] = {}
    for cb in _with_memory(callbacks):
        first = owners.setdefault(cb.name, cb)
        if first is not cb:
            a, b = _label(first), _label(cb)
            both = f"two {a} callbacks" if a == b else f"callbacks {a} and {b}"
            msg = (
                f"{both} both keep their memory in "
                f"`state.callback_state[{cb.name!r}]`, so each would read the other's. Give one "
                f"of them its own `name=`, e.g. {type(cb).__name__}(..., name={cb.name + '_2'!r})."
            )
            raise ValueError(msg)


def check_memory(state: TrainState, callback: Callback) -> None:
    """Refuse a callback whose memory name holds something else in ``state.callback_state``
    (user run state, or another callback's record from a checkpoint)."""
    for cb in _with_memory((callback,)):
        held = state.callback_state.get(cb.name)
        if held is not None and not isinstance(held, cb.memory_type):
            msg = (
                f"callback {_label(cb)} keeps a {cb.memory_type.__name__} in "
                f"`state.callback_state[{cb.name!r}]`, but the state holds a "
                f"{type(held).__name__} there. Give the callback its own `name=`, e.g. "
                f"{type(cb).__name__}(..., name={cb.name + '_2'!r}), or store the other value "
                "under another key."
            )
            raise ValueError(msg)


def _label(cb: object) -> str:
    return repr(cb) if attrs.has(type(cb)) else type(cb).__name__
