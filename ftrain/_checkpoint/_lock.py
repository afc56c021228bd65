"""Which run a checkpoint directory belongs to, and whether that run is training now.

`Checkpoint` keeps a small file, ``ftrain.lock``, in its directory: the run id, the host and the
process id of the run writing there, or no process once that run stopped cleanly. It is taken
when `fit` starts and released when `fit` ends or is interrupted, so two live runs never write
into one directory, and a new run never mixes its checkpoints with another run's.

Who may take the directory:

- the same run (a resume: the run id is in its checkpoints) when the lock is released, when it
  is this process's own, or when its process is dead on this host (a killed run);
- another run only when the directory holds no checkpoint and the lock's process is not alive
  (a run killed before its first save left nothing to keep).

Anything else is refused with a `CheckpointError` naming the other run.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any

from .._errors import CheckpointError
from ._format import fsync_dir

__all__ = ["LOCK_NAME", "acquire", "holds", "new_run_id", "release"]

LOCK_NAME = "ftrain.lock"


def new_run_id() -> str:
    """A fresh run id: random, 16 hex digits."""
    return secrets.token_hex(8)


def acquire(directory: Path, run_id: str, *, has_checkpoints: bool, fresh: bool) -> None:
    """Take ``directory`` for the run ``run_id`` in this process, or raise `CheckpointError`.

    ``fresh``: the run starts now (it was not resumed from a checkpoint).
    """
    path = directory / LOCK_NAME
    mine = {"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid()}
    held = _read(path)
    if held is None and not (fresh and has_checkpoints):
        try:  # atomically: of two runs starting at once, one gets it
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            held = _read(path)
        else:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(mine))
            return
    if held is not None:
        _check_may_take(path, held, run_id, has_checkpoints)
    elif fresh and has_checkpoints:
        msg = (
            f"Checkpoint directory {str(directory)!r} already holds checkpoints of another run "
            f"(no {LOCK_NAME} says which). A new run must not mix its checkpoints with them: "
            "resume that run with fit(..., resume=<its directory>), or give this run a new "
            "directory (or delete the old checkpoints)."
        )
        raise CheckpointError(msg)
    _write(path, mine)


def holds(directory: Path, run_id: str | None) -> bool:
    """Whether this process holds ``directory``'s lock for ``run_id``."""
    try:
        held = _read(directory / LOCK_NAME)
    except CheckpointError:
        return False
    return held is not None and held.get("run_id") == run_id and _ours(held)


def release(directory: Path, run_id: str) -> None:
    """Mark the lock of ``run_id`` released (the directory still belongs to that run)."""
    path = directory / LOCK_NAME
    held = _read(path)
    if held is not None and held.get("run_id") == run_id and _ours(held):
        _write(path, {"run_id": run_id, "host": None, "pid": None})


def _check_may_take(path: Path, held: dict[str, Any], run_id: str, has_checkpoints: bool) -> None:
    other, host, pid = held.get("run_id"), held.get("host"), held.get("pid")
    running = pid is not None and not _ours(held) and not _dead_here(host, pid)
    if other == run_id and not running:
        return
    if other != run_id and not running and not has_checkpoints:
        return  # a run that saved nothing here, and is not running: nothing to keep
    where = f"process {pid} on host {host!r}" if pid is not None else "no process (stopped)"
    if running:
        what = f"is in use by run {other!r} ({where}, per {str(path)!r})"
        advice = (
            "Two runs must not write into one directory: give this run another directory, or "
            f"wait for that run to end. If that process is gone, delete {str(path)!r}."
        )
    else:
        what = f"belongs to another run, {other!r} ({where}), whose checkpoints are in it"
        advice = (
            "A new run must not mix its checkpoints with another run's: resume that run with "
            "fit(..., resume=<its directory>), or give this run a new directory (or delete the "
            "old one)."
        )
    msg = f"Checkpoint directory {str(path.parent)!r} {what}. {advice}"
    raise CheckpointError(msg)


def _ours(held: dict[str, Any]) -> bool:
    return held.get("pid") == os.getpid() and held.get("host") == socket.gethostname()


def _dead_here(host: Any, pid: Any) -> bool:
    """True when ``pid`` names no live process on this host (unknown hosts count as alive)."""
    if host != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        msg = (
            f"Cannot read the lock {str(path)!r} of a checkpoint directory ({err}). Delete it if "
            "no run is writing into this directory."
        )
        raise CheckpointError(msg) from None
    if not isinstance(data, dict):
        msg = f"The lock {str(path)!r} is not an ftrain lock file; delete it if no run uses it."
        raise CheckpointError(msg)
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{LOCK_NAME}.{secrets.token_hex(4)}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
    fsync_dir(path.parent)
