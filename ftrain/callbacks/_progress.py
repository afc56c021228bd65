"""`ProgressBar`: a tqdm bar per epoch, refreshed on a timer so it syncs rarely."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from .._errors import check_number
from .._events import EpochEnd, EpochStart, EvalEnd, Event, FitEnd, StepEnd
from .._state import TrainState

__all__ = ["EpochBar", "ProgressBar"]


class EpochBar:
    """What every progress bar shares: event dispatch, throughput and the refresh timer.

    Subclasses draw: `_open` an epoch's bar, `_show` progress, `_close` it, `_write` a line.
    """

    def __init__(self, refresh_rate: float = 0.2):
        check_number("refresh_rate", refresh_rate, minimum=0)
        self.refresh_rate = refresh_rate
        self._epoch: EpochStart | None = None  # the open epoch (rank 0 only)
        self._shown = False  # whether its bar was drawn yet
        self._pending = 0
        self._samples = 0
        self._t0 = self._last = 0.0

    def __call__(self, state: TrainState, event: Event) -> TrainState:
        if type(event) is StepEnd:  # the per-step path: a few comparisons, no device read
            if self._epoch is not None:
                self._pending += 1
                self._samples += event.batch_size
                now = time.perf_counter()
                if now - self._last >= self.refresh_rate:
                    self._refresh(event, now)
            return state
        if state.rank != 0:
            return state
        if isinstance(event, EpochStart):
            self._end_bar()
            self._epoch, self._shown = event, False
            self._pending = self._samples = 0
            self._t0 = self._last = time.perf_counter()
        elif isinstance(event, EpochEnd):
            self._end_bar()
            self._write(f"epoch {event.epoch}: " + _fmt(event.metrics))
        elif isinstance(event, EvalEnd):
            self._write(f"epoch {event.epoch} step {event.step}: " + _fmt(event.metrics))
        elif isinstance(event, FitEnd):
            self._end_bar()
        return state

    def _refresh(self, event: StepEnd, now: float) -> None:
        # The bar is drawn at the first refresh, so an epoch shorter than `refresh_rate` costs
        # no bar at all (its summary line is still printed).
        if not self._shown:
            assert self._epoch is not None
            self._open(self._epoch)
            self._shown = True
        # The one sync per refresh: the bar shows the latest batch's loss.
        loss = float(event.metrics["loss"]) if "loss" in event.metrics else float("nan")
        self._show(self._pending, loss, self._samples / max(now - self._t0, 1e-9))
        self._pending, self._last = 0, now

    def _end_bar(self) -> None:
        if self._epoch is not None and self._shown:
            self._close(self._pending)
        self._epoch, self._shown, self._pending = None, False, 0

    def _open(self, event: EpochStart) -> None:
        raise NotImplementedError

    def _show(self, advance: int, loss: float, rate: float) -> None:
        raise NotImplementedError

    def _close(self, advance: int) -> None:
        raise NotImplementedError

    def _write(self, text: str) -> None:
        raise NotImplementedError


class ProgressBar(EpochBar):
    """Show a tqdm progress bar per epoch with the loss and throughput.

    An observer: it returns the state unchanged and does I/O (only on rank 0). The loss shown is
    read from the device at most once per ``refresh_rate`` seconds (one host sync per refresh),
    never on every step. The bar is drawn at the first refresh, ``refresh_rate`` seconds into an
    epoch, so an epoch shorter than that prints only its summary line. Epoch and validation
    summaries are printed when they arrive.

    Args:
        refresh_rate: seconds between bar updates.
        file: where to write (default ``sys.stderr``).
        leave: keep each epoch's finished bar on screen.

    Example:
        >>> import ftrain
        >>> bar = ftrain.callbacks.ProgressBar(refresh_rate=0.5)
    """

    def __init__(self, refresh_rate: float = 0.2, file: TextIO | None = None, leave: bool = True):
        super().__init__(refresh_rate)
        self.file = file
        self.leave = leave
        self._bar: Any = None

    def _open(self, event: EpochStart) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=event.num_batches,
            initial=event.first_batch,
            desc=f"epoch {event.epoch}",
            file=self.file or sys.stderr,
            leave=self.leave,
            dynamic_ncols=True,
        )

    def _show(self, advance: int, loss: float, rate: float) -> None:
        self._bar.update(advance)
        self._bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{rate:,.0f}", refresh=False)

    def _close(self, advance: int) -> None:
        self._bar.update(advance)
        self._bar.close()
        self._bar = None

    def _write(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(text, file=self.file or sys.stderr)


def _fmt(metrics: Any) -> str:
    return "  ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
    )
