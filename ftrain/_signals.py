"""Signals during `fit`: stop signals, and Ctrl-C that waits for the batch boundary.

Inside `fit`, a first Ctrl-C (SIGINT) is recorded like a stop signal: the current batch finishes,
callbacks get `Interrupted` (a `Checkpoint` saves a consistent state) and `fit` returns. A second
Ctrl-C raises `HardInterrupt` (a `KeyboardInterrupt`) at once, wherever the program is; nothing is
saved from it, since the weights may be half updated.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

from ._errors import describe

__all__ = ["HardInterrupt", "catch_signals", "check_signals"]

_UNCATCHABLE = {getattr(signal, name) for name in ("SIGKILL", "SIGSTOP") if hasattr(signal, name)}


class HardInterrupt(KeyboardInterrupt):
    """A second Ctrl-C inside `fit`: training stops at once and nothing is saved."""


def check_signals(signals: Any) -> tuple[int, ...]:
    """Check `fit`'s ``stop_signals``: a sequence of catchable signal numbers."""
    if isinstance(signals, str | bytes | int) or not isinstance(signals, Sequence):
        msg = (
            "`stop_signals` must be a sequence of signal numbers such as (signal.SIGTERM,) "
            f"(got {describe(signals)})."
        )
        raise TypeError(msg)
    valid = signal.valid_signals()
    for sig in signals:
        if isinstance(sig, bool) or not isinstance(sig, int):
            msg = (
                "`stop_signals` must hold signal numbers such as signal.SIGTERM (got "
                f"{describe(sig)} in {tuple(signals)!r})."
            )
            raise TypeError(msg)
        if sig not in valid or sig in _UNCATCHABLE:
            name = signal.Signals(sig).name if sig in valid else str(sig)
            msg = (
                f"`stop_signals` holds {name}, which "
                + ("cannot be caught" if sig in valid else "is not a signal of this platform")
                + "; use catchable signals such as signal.SIGTERM or signal.SIGUSR1."
            )
            raise ValueError(msg)
    return tuple(signals)


@contextlib.contextmanager
def catch_signals(signals: Sequence[int], *, graceful_interrupt: bool) -> Iterator[list[int]]:
    """Yield a list that collects the numbers of ``signals`` received inside the block.

    With ``graceful_interrupt``, a first SIGINT is collected too and a second raises
    `HardInterrupt`, when SIGINT still has Python's default handler (a handler of the
    program's own is left alone). Handlers are installed only in the main thread, and the
    previous ones come back when the block ends, however it ends.
    """
    received: list[int] = []
    main = threading.current_thread() is threading.main_thread()
    if signals and not main:
        msg = "`stop_signals` can only be handled when `fit` runs in the main thread."
        raise ValueError(msg)

    def record(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if signal.SIGINT in received:
            raise HardInterrupt
        received.append(signum)
        print(
            "\nCtrl-C: stopping after the current batch, then saving (Ctrl-C again to stop at "
            "once and save nothing).",
            file=sys.stderr,
            flush=True,
        )

    handlers: dict[int, Any] = dict.fromkeys(signals, record)
    if (
        graceful_interrupt
        and main
        and signal.SIGINT not in handlers
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        handlers[signal.SIGINT] = interrupt
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
