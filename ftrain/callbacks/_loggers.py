"""`CSVLogger` and `TensorBoardLogger`: write the logs `fit` already brought to the host.

Both listen to `IntervalEnd` (train metrics every log interval), `EpochEnd` and `EvalEnd`: the
metrics there are floats, synced once per interval by the loop, so a logger never syncs the
device itself. Only rank 0 writes.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._errors import check_type
from .._events import EpochEnd, EvalEnd, Event, FitEnd, IntervalEnd
from .._optional import require
from .._state import TrainState

__all__ = ["CSVLogger", "TensorBoardLogger"]

_LOGGED = (IntervalEnd, EpochEnd, EvalEnd)


class CSVLogger:
    """Append one row per log interval, epoch and validation to a CSV file.

    Columns are ``event`` (``interval``: train means over the last log interval; ``epoch``: the
    epoch's train means, lr and timing; ``val``: validation), ``step``, ``epoch`` and every metric
    seen so far; when a new metric appears the file is rewritten with the wider header (missing
    cells are empty). An observer that does I/O.

    Args:
        path: the CSV file, or a directory to write ``metrics.csv`` into (created if missing).
        append: keep rows already in the file (resuming a run) instead of starting afresh.

    Example:
        >>> import tempfile, ftrain
        >>> log = ftrain.callbacks.CSVLogger(tempfile.mkdtemp())
        >>> event = ftrain.EpochEnd(step=10, epoch=0, metrics={"train_loss": 0.5})
        >>> state = log(ftrain.testing.toy_state(), event)
        >>> log.path.read_text().splitlines()
        ['event,step,epoch,train_loss', 'epoch,10,0,0.5']
    """

    def __init__(self, path: str | os.PathLike[str], *, append: bool = False):
        check_type(
            "path", path, (str, os.PathLike), "a file or directory path (str or os.PathLike)"
        )
        p = Path(path)
        self.path = p / "metrics.csv" if p.suffix != ".csv" else p
        self._rows: list[dict[str, Any]] = []
        self._columns: list[str] = ["event", "step", "epoch"]
        self._started = False
        self._append = append

    def __call__(self, state: TrainState, event: Event) -> TrainState:
        if not isinstance(event, _LOGGED) or state.rank != 0:
            return state
        if not self._started:
            self._start()
        kind = {IntervalEnd: "interval", EpochEnd: "epoch", EvalEnd: "val"}[type(event)]
        row = {"event": kind, "step": event.step, "epoch": event.epoch, **event.metrics}
        self._rows.append(row)
        new = [k for k in row if k not in self._columns]
        if new:
            self._columns += new
            self._rewrite()
        else:
            with self.path.open("a", newline="") as f:
                csv.DictWriter(f, self._columns).writerow(row)
        return state

    def _start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._append and self.path.exists():
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                self._columns = list(reader.fieldnames or self._columns)
                self._rows = list(reader)
        self._rewrite()
        self._started = True

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, self._columns)
            writer.writeheader()
            writer.writerows(self._rows)
        os.replace(tmp, self.path)


class TensorBoardLogger:
    """Write scalars to TensorBoard event files (needs the ``tensorboard`` extra).

    Train metrics are written at every log interval against ``state.step``; epoch and
    validation metrics at their events. An observer that does I/O; only rank 0 writes.

    Args:
        log_dir: the run directory TensorBoard reads (``tensorboard --logdir``).

    Example:
        >>> import tempfile, ftrain
        >>> tb = ftrain.callbacks.TensorBoardLogger(tempfile.mkdtemp())
        >>> event = ftrain.IntervalEnd(step=10, epoch=0, metrics={"train_loss": 0.5})
        >>> state = tb(ftrain.testing.toy_state(), event)
        >>> state = tb(state, ftrain.FitEnd(step=10, epoch=1, history=()))
    """

    def __init__(self, log_dir: str | os.PathLike[str]):
        self.log_dir = Path(log_dir)
        self._writer: Any = None

    def __call__(self, state: TrainState, event: Event) -> TrainState:
        if state.rank != 0:
            return state
        if isinstance(event, IntervalEnd):
            self._scalars(event.metrics, event.step, prefix="step/")
        elif isinstance(event, EpochEnd | EvalEnd):
            self._scalars(
                event.metrics, event.step, prefix="epoch/" if isinstance(event, EpochEnd) else ""
            )
            self._writer.flush()
        elif isinstance(event, FitEnd) and self._writer is not None:
            self._writer.close()
            self._writer = None
        return state

    def _scalars(self, metrics: Mapping[str, float], step: int, prefix: str) -> None:
        if self._writer is None:
            tb = require("torch.utils.tensorboard", "tensorboard", "TensorBoardLogger")
            self._writer = tb.SummaryWriter(log_dir=str(self.log_dir))
        for key, value in metrics.items():
            self._writer.add_scalar(prefix + key, value, global_step=step)
