"""`Checkpoint`: save the state every N steps and/or epochs, keeping the last and the best k."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs

from .._checkpoint import (
    checkpoint_name,
    checkpoint_record,
    list_checkpoints,
    remove,
    remove_leftovers,
    save,
)
from .._checkpoint._lock import acquire, holds, new_run_id, release
from .._errors import CheckpointError, FtrainError, NonFiniteError, check_int, check_type
from .._events import EpochEnd, EvalEnd, Event, FitEnd, FitStart, Interrupted, IntervalEnd
from .._state import TrainState
from ._mode import resolve_mode

__all__ = ["Checkpoint", "CheckpointState"]


@checkpoint_record
@attrs.frozen
class CheckpointState:
    """Checkpoint's memory: the retained best files as ``(value, name)``, best first, the last
    file written, how often the current `fit` validates and where it ends (from its `FitStart`),
    and the id of the run (made when the run starts, kept across resumes). Read the paths with
    `Checkpoint.best_path` and `Checkpoint.last_path`."""

    best: tuple[tuple[float, str], ...] = ()
    last: str | None = None
    val_every_n_epochs: int | None = None
    limits: tuple[int | None, int | None] = (None, None)
    """``(max_epochs, max_steps)`` of the current `fit`."""
    run_id: str | None = None


class Checkpoint:
    """Save the state into ``dirpath`` as ``step-<step>.ckpt``; keep the newest and the best k.

    Saves happen at points where the state is complete, so resuming from any of them repeats the
    uninterrupted run: every ``every_n_steps`` optimizer steps at the log interval's end
    (``every_n_steps`` must be a multiple of `fit`'s ``log_every_n_steps``), after every
    ``every_n_epochs`` epochs (after validation when that epoch is validated), and at the end
    of a `fit` that reached its ``max_epochs`` or ``max_steps`` when that state is not saved yet
    (a run ending mid-epoch at ``max_steps`` leaves its final state). Put `Checkpoint` last in
    the callbacks list, so the memory of the callbacks before it is in the file.

    The files kept are found from the state: ``Checkpoint.best_path(state)`` (the best by
    ``monitor``) and ``Checkpoint.last_path(state)`` (the newest written), as the memory
    travels with the state and its checkpoints.

    Old files are deleted only after the new one is committed (written, fsynced, renamed), and
    leftover temporary files of interrupted writes are removed when `fit` starts.

    A directory belongs to one run. The run gets an id when it starts (kept in its checkpoints,
    so a resume is the same run), and while `fit` runs a lock file, ``ftrain.lock``, names the
    run, host and process writing there. A second run starting in the directory is refused with
    a `CheckpointError` naming the first, whether that one is still training or finished and
    left its checkpoints; a resume of the same run takes the directory back, also after a kill
    (its process is dead on this host). See the reliability page for the rules.

    Args:
        dirpath: the directory for checkpoints (created if missing).
        every_n_steps: save every n optimizer steps (None: never mid-epoch).
        every_n_epochs: save after every n epochs (None: never at epoch ends).
        monitor: a metric to rank checkpoints by (``"val_loss"``); None keeps no best.
        mode: ``"min"`` or ``"max"``; None picks ``"max"`` for names containing ``acc``.
        save_top_k: how many best checkpoints to keep (with ``monitor``).
        keep_last: how many of the newest checkpoints to keep.
        save_on_interrupt: also save when training is cut short (a stop signal `fit` handles, or
            an exception inside the epoch: the state after the last completed batch).
        name: the key of its memory in ``state.callback_state``.
    """

    memory_type: ClassVar[type] = CheckpointState

    def __init__(
        self,
        dirpath: str | os.PathLike[str],
        *,
        every_n_steps: int | None = None,
        every_n_epochs: int | None = 1,
        monitor: str | None = None,
        mode: str | None = None,
        save_top_k: int = 1,
        keep_last: int = 1,
        save_on_interrupt: bool = True,
        name: str = "checkpoint",
    ):
        check_type("dirpath", dirpath, (str, os.PathLike), "a directory path (str or os.PathLike)")
        check_int("every_n_steps", every_n_steps, minimum=1, optional=True)
        check_int("every_n_epochs", every_n_epochs, minimum=1, optional=True)
        check_type("monitor", monitor, (str, type(None)), "a metric name (str) or None")
        check_int("save_top_k", save_top_k)
        check_int("keep_last", keep_last, minimum=1)
        check_type("save_on_interrupt", save_on_interrupt, bool, "a bool")
        check_type("name", name, str, "a str")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.monitor = monitor
        self.mode = resolve_mode(mode, monitor)
        self.save_top_k = save_top_k
        self.keep_last = keep_last
        self.save_on_interrupt = save_on_interrupt
        self.name = name

    def __call__(self, state: TrainState, event: Event) -> TrainState:
        if isinstance(event, FitStart):
            memory = self._memory(state)
            run_id = memory.run_id or new_run_id()
            # A run is new when nothing of it was saved before: no id and no step trained.
            fresh = memory.run_id is None and state.step == 0
            self._start(state, event, run_id, fresh=fresh)
            memory = attrs.evolve(
                memory,
                val_every_n_epochs=event.val_every_n_epochs,
                limits=(event.max_epochs, event.max_steps),
                run_id=run_id,
            )
            return state.replace(callback_state={**state.callback_state, self.name: memory})
        elif isinstance(event, IntervalEnd):
            if self.every_n_steps and event.step % self.every_n_steps == 0:
                return self.save(state, event.metrics)
        elif isinstance(event, EpochEnd):
            if self._epoch_due(event.epoch) and not self._validated(state, event.epoch):
                return self.save(state, event.metrics)
        elif isinstance(event, EvalEnd):
            at_epoch_end = state.epoch_batch == 0 and state.epoch == event.epoch + 1
            if at_epoch_end and self._epoch_due(event.epoch):
                return self.save(state, event.metrics)
        elif isinstance(event, Interrupted):
            try:
                if self._saves_at(state, event):
                    state = self.save(state, {})
            except (FtrainError, OSError) as err:
                warnings.warn(f"No checkpoint written at the interruption: {err}", stacklevel=2)
            finally:
                self._release(state)
        elif isinstance(event, FitEnd):
            try:  # a run that reached its limits ends with a checkpoint of where it stopped
                name = checkpoint_name(state.step)
                saved = self._memory(state).last == name or (self.dirpath / name).exists()
                if self._reached_limit(state) and not saved:
                    state = self.save(state, {})
            finally:
                self._release(state)
        return state

    def save(self, state: TrainState, metrics: Mapping[str, Any]) -> TrainState:
        """Save ``state`` now (returns it with the updated memory), then apply retention."""
        memory = self._memory(state)
        fname = checkpoint_name(state.step)
        best = [b for b in memory.best if b[1] != fname]
        value = metrics.get(self.monitor) if self.monitor else None
        if isinstance(value, float) and math.isfinite(value):
            best.append((value, fname))
            best.sort(key=lambda b: b[0], reverse=self.mode == "max")
        memory = attrs.evolve(memory, best=tuple(best[: self.save_top_k]), last=fname)
        state = state.replace(callback_state={**state.callback_state, self.name: memory})
        save(state, self.dirpath / fname)  # commit first ...
        if state.rank == 0:
            self._retain(memory)  # ... then delete what is no longer kept
        return state

    def best_path(self, state: TrainState) -> Path | None:
        """The path of the best checkpoint kept (by ``monitor``) in ``state``'s run, or None.

        Example:
            >>> import tempfile, ftrain
            >>> from ftrain.callbacks import Checkpoint
            >>> batches = [ftrain.testing.toy_batch(seed=i) for i in range(4)]
            >>> ckpt = Checkpoint(tempfile.mkdtemp(), monitor="val_loss")
            >>> state, _ = ftrain.fit(ftrain.testing.toy_state(), (batches, batches), [ckpt],
            ...                       max_epochs=3)
            >>> best = ftrain.load(ftrain.testing.toy_state(), ckpt.best_path(state))
        """
        best = self._memory(state).best
        return self.dirpath / best[0][1] if best else None

    def last_path(self, state: TrainState) -> Path | None:
        """The path of the newest checkpoint written in ``state``'s run, or None."""
        last = self._memory(state).last
        return None if last is None else self.dirpath / last

    def _reached_limit(self, state: TrainState) -> bool:
        max_epochs, max_steps = self._memory(state).limits
        return (max_epochs is not None and state.epoch >= max_epochs) or (
            max_steps is not None and state.step >= max_steps
        )

    def _start(self, state: TrainState, event: FitStart, run_id: str, *, fresh: bool) -> None:
        if self.every_n_steps and self.every_n_steps % event.log_every_n_steps:
            msg = (
                f"Checkpoint `every_n_steps` ({self.every_n_steps}) must be a multiple of fit's "
                f"`log_every_n_steps` ({event.log_every_n_steps}): checkpoints are written at "
                "log-interval ends, where the epoch's logs are complete."
            )
            raise ValueError(msg)
        self._check_dirpath()
        if state.rank == 0:  # the process that writes the files
            self.dirpath.mkdir(parents=True, exist_ok=True)
            has_checkpoints = bool(list_checkpoints(self.dirpath))
            acquire(self.dirpath, run_id, has_checkpoints=has_checkpoints, fresh=fresh)
            remove_leftovers(self.dirpath)  # only once the directory is this run's

    def _check_dirpath(self) -> None:
        path = self.dirpath
        if path.is_symlink() and not path.exists():
            msg = (
                f"Checkpoint `dirpath` {str(path)!r} is a dangling symlink (to "
                f"{os.readlink(path)!r}, which is gone): point it at a directory or remove it."
            )
            raise CheckpointError(msg)
        if path.exists() and not path.is_dir():
            msg = (
                f"Checkpoint `dirpath` {str(path)!r} is a file, not a directory: give "
                "Checkpoint a directory to write its checkpoints into."
            )
            raise CheckpointError(msg)
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                msg = (
                    f"Checkpoint `dirpath` {str(path)!r} cannot be created: {str(parent)!r} is a "
                    "file, not a directory."
                )
                raise CheckpointError(msg)

    def _saves_at(self, state: TrainState, event: Interrupted) -> bool:
        # Never from weights a NaN may have reached, and only into a directory this run holds
        # (a failure at FitStart, e.g. another run's lock, must not write there).
        if not self.save_on_interrupt or isinstance(event.error, NonFiniteError):
            return False
        return state.rank != 0 or holds(self.dirpath, self._memory(state).run_id)

    def _release(self, state: TrainState) -> None:
        run_id = self._memory(state).run_id
        if state.rank == 0 and run_id is not None and self.dirpath.is_dir():
            try:
                release(self.dirpath, run_id)
            except (FtrainError, OSError) as err:
                warnings.warn(f"Could not release the checkpoint directory: {err}", stacklevel=3)

    def _epoch_due(self, epoch: int) -> bool:
        return self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0

    def _validated(self, state: TrainState, epoch: int) -> bool:
        every = self._memory(state).val_every_n_epochs  # then it saves at EvalEnd instead
        return every is not None and (epoch + 1) % every == 0

    def _memory(self, state: TrainState) -> CheckpointState:
        memory: CheckpointState = state.callback_state.get(self.name, CheckpointState())
        return memory

    def _retain(self, memory: CheckpointState) -> None:
        files = list_checkpoints(self.dirpath)
        keep = {p.name for p in files[-self.keep_last :]} | {f for _, f in memory.best}
        keep.add(memory.last or "")
        for p in files:
            if p.name not in keep:
                remove(p)
