"""Stop signals for `fit`: record them for one block instead of their default action."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence

__all__ = ["catch_signals"]


@contextlib.contextmanager
def catch_signals(signals: Sequence[int]) -> Iterator[list[int]]:
    """Yield a list that collects the numbers of ``signals`` received inside the block.

    The previous handlers come back when the block ends, however it ends.
    """
    received: list[int] = []
    if not signals:
        yield received
        return
    if threading.current_thread() is not threading.main_thread():
        msg = "`stop_signals` can only be handled when `fit` runs in the main thread."
        raise ValueError(msg)
    previous = {
        sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in signals
    }
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
