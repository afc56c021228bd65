"""`RichProgressBar`: the progress bar drawn with rich (needs the ``rich`` extra)."""

from __future__ import annotations

import time
from typing import Any

from .._events import EpochEnd, EpochStart, EvalEnd, FitEnd, StepEnd
from .._optional import require
from .._state import TrainState
from ._progress import _fmt

__all__ = ["RichProgressBar"]


class RichProgressBar:
    """A rich progress bar per epoch with loss and throughput; same contract as `ProgressBar`.

    The loss is read from the device at most once per ``refresh_rate`` seconds. An observer
    that does I/O, on rank 0 only.

    Args:
        refresh_rate: seconds between updates.
        console: a ``rich.console.Console`` to draw on (default: a new one on stderr).
    """

    def __init__(self, refresh_rate: float = 0.2, console: Any = None):
        if refresh_rate < 0:
            msg = f"`refresh_rate` must be >= 0 seconds (got {refresh_rate!r})."
            raise ValueError(msg)
        require("rich", "rich", "RichProgressBar")
        self.refresh_rate = refresh_rate
        self.console = console
        self._progress: Any = None
        self._task: Any = None
        self._pending = 0
        self._samples = 0
        self._t0 = self._last = 0.0

    def __call__(self, state: TrainState, event: Any) -> TrainState:
        if state.rank != 0:
            return state
        if isinstance(event, StepEnd):
            self._pending += 1
            self._samples += event.batch_size
            now = time.perf_counter()
            if self._progress is not None and now - self._last >= self.refresh_rate:
                loss = float(event.metrics["loss"]) if "loss" in event.metrics else float("nan")
                rate = self._samples / max(now - self._t0, 1e-9)
                self._progress.update(
                    self._task, advance=self._pending, loss=f"{loss:.4f}", rate=f"{rate:,.0f}"
                )
                self._pending, self._last = 0, now
        elif isinstance(event, EpochStart):
            self._open(event)
        elif isinstance(event, EpochEnd):
            self._close()
            self._print(f"epoch {event.epoch}: " + _fmt(event.metrics))
        elif isinstance(event, EvalEnd):
            self._print(f"epoch {event.epoch} step {event.step}: " + _fmt(event.metrics))
        elif isinstance(event, FitEnd):
            self._close()
        return state

    def _open(self, event: EpochStart) -> None:
        progress = require("rich.progress", "rich", "RichProgressBar")
        console_mod = require("rich.console", "rich", "RichProgressBar")
        self._close()
        self.console = self.console or console_mod.Console(stderr=True)
        self._progress = progress.Progress(
            progress.TextColumn("[bold]epoch {task.fields[epoch]}"),
            progress.BarColumn(),
            progress.MofNCompleteColumn(),
            progress.TimeElapsedColumn(),
            progress.TextColumn("loss {task.fields[loss]}  {task.fields[rate]} samples/s"),
            console=self.console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(
            "train",
            total=event.num_batches,
            completed=event.first_batch,
            epoch=event.epoch,
            loss="-",
            rate="-",
        )
        self._pending = self._samples = 0
        self._t0 = self._last = time.perf_counter()

    def _close(self) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=self._pending)
            self._progress.stop()
            self._progress = None
            self._pending = 0

    def _print(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)
