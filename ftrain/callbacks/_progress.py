"""`ProgressBar`: a tqdm bar per epoch, refreshed on a timer so it syncs rarely."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from .._events import EpochEnd, EpochStart, EvalEnd, FitEnd, StepEnd
from .._state import TrainState

__all__ = ["ProgressBar"]


class ProgressBar:
    """Show a tqdm progress bar per epoch with the loss and throughput.

    An observer: it returns the state unchanged and does I/O (only on rank 0). The loss shown is
    read from the device at most once per ``refresh_rate`` seconds (one host sync per refresh),
    never on every step. Epoch and validation summaries are printed when they arrive.

    Args:
        refresh_rate: seconds between bar updates.
        file: where to write (default ``sys.stderr``).
        leave: keep each epoch's finished bar on screen.

    Example:
        >>> import ftrain
        >>> bar = ftrain.callbacks.ProgressBar(refresh_rate=0.5)
    """

    def __init__(self, refresh_rate: float = 0.2, file: TextIO | None = None, leave: bool = True):
        if refresh_rate < 0:
            msg = f"`refresh_rate` must be >= 0 seconds (got {refresh_rate!r})."
            raise ValueError(msg)
        self.refresh_rate = refresh_rate
        self.file = file
        self.leave = leave
        self._bar: Any = None
        self._pending = 0
        self._samples = 0
        self._last = 0.0
        self._t0 = 0.0

    def __call__(self, state: TrainState, event: Any) -> TrainState:
        if state.rank != 0:
            return state
        if isinstance(event, StepEnd):
            self._pending += 1
            self._samples += event.batch_size
            now = time.perf_counter()
            if now - self._last >= self.refresh_rate and self._bar is not None:
                self._refresh(event, now)
        elif isinstance(event, EpochStart):
            self._open(event)
        elif isinstance(event, EpochEnd):
            self._close()
            self._write(f"epoch {event.epoch}: " + _fmt(event.metrics))
        elif isinstance(event, EvalEnd):
            self._write(f"epoch {event.epoch} step {event.step}: " + _fmt(event.metrics))
        elif isinstance(event, FitEnd):
            self._close()
        return state

    def _open(self, event: EpochStart) -> None:
        from tqdm.auto import tqdm

        self._close()
        self._bar = tqdm(
            total=event.num_batches,
            initial=event.first_batch,
            desc=f"epoch {event.epoch}",
            file=self.file or sys.stderr,
            leave=self.leave,
            dynamic_ncols=True,
        )
        self._pending = self._samples = 0
        self._t0 = self._last = time.perf_counter()

    def _refresh(self, event: StepEnd, now: float) -> None:
        # The one sync per refresh: the bar shows the latest batch's loss.
        loss = float(event.metrics["loss"]) if "loss" in event.metrics else float("nan")
        self._bar.update(self._pending)
        self._pending = 0
        rate = self._samples / max(now - self._t0, 1e-9)
        self._bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:,.0f}", refresh=False)
        self._last = now

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.update(self._pending)
            self._pending = 0
            self._bar.close()
            self._bar = None

    def _write(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text, file=self.file or sys.stderr)


def _fmt(metrics: Any) -> str:
    return "  ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
    )
