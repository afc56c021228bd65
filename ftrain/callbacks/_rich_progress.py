"""`RichProgressBar`: the progress bar drawn with rich (needs the ``rich`` extra)."""

from __future__ import annotations

from typing import Any

from .._events import EpochStart
from .._optional import require
from ._progress import EpochBar

__all__ = ["RichProgressBar"]


class RichProgressBar(EpochBar):
    """A rich progress bar per epoch with loss and throughput; same contract as `ProgressBar`.

    The loss is read from the device at most once per ``refresh_rate`` seconds, and the bar is
    drawn at the first refresh (an epoch shorter than ``refresh_rate`` prints only its summary).
    An observer that does I/O, on rank 0 only.

    Args:
        refresh_rate: seconds between updates.
        console: a ``rich.console.Console`` to draw on (default: a new one on stderr).

    Example:
        >>> import ftrain
        >>> bar = ftrain.callbacks.RichProgressBar(refresh_rate=0.5)
    """

    def __init__(self, refresh_rate: float = 0.2, console: Any = None):
        super().__init__(refresh_rate)
        require("rich", "rich", "RichProgressBar")
        self.console = console
        self._progress: Any = None
        self._task: Any = None

    def _open(self, event: EpochStart) -> None:
        progress = require("rich.progress", "rich", "RichProgressBar")
        self._progress = progress.Progress(
            progress.TextColumn("[bold]epoch {task.fields[epoch]}"),
            progress.BarColumn(),
            progress.MofNCompleteColumn(),
            progress.TimeElapsedColumn(),
            progress.TextColumn("loss {task.fields[loss]}  {task.fields[rate]} samples/s"),
            console=self._console(),
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

    def _show(self, advance: int, loss: float, rate: float) -> None:
        self._progress.update(self._task, advance=advance, loss=f"{loss:.4f}", rate=f"{rate:,.0f}")

    def _close(self, advance: int) -> None:
        self._progress.update(self._task, advance=advance)
        self._progress.stop()
        self._progress = None

    def _write(self, text: str) -> None:
        self._console().print(text)

    def _console(self) -> Any:
        # A default console is made per use and never kept: the callback stays picklable, and
        # summaries print even in epochs too short to draw a bar.
        console_mod = require("rich.console", "rich", "RichProgressBar")
        return self.console or console_mod.Console(stderr=True)
