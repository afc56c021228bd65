"""A directory of checkpoints: their names, listing, the newest good one, leftovers.

A checkpoint is a file, or a directory of shards (``_sharded.py``); both are named
``step-<step>.ckpt``, and interrupted writes leave hidden ``.step-*.tmp`` / ``.step-*.old``
entries beside them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from .._errors import CheckpointError, check_type
from ._format import read_file, remove
from ._sharded import MANIFEST, read_directory

__all__ = [
    "checkpoint_name",
    "latest_checkpoint",
    "list_checkpoints",
    "read_verified",
    "remove_leftovers",
]

CHECKPOINT_GLOB = "step-*.ckpt"


def checkpoint_name(step: int) -> str:
    """The file name `Checkpoint` gives the checkpoint of ``step``."""
    return f"step-{step:09d}.ckpt"


def read_verified(path: Path) -> dict[str, Any]:
    """Verify the checkpoint file or shard directory at ``path``; return its stored data.

    Run state is returned as stored (records not rebuilt); a shard directory's model and
    optimizer stay in its shards.

    Raises:
        CheckpointError: with the file name and what is wrong with it.
    """
    if not path.is_dir():
        return read_file(path)
    if not (path / MANIFEST).exists():  # not a shard directory: say what it is instead
        found = list_checkpoints(path)
        if found:
            msg = (
                f"{str(path)!r} is a run directory holding {len(found)} checkpoint(s), not a "
                f"checkpoint: load one of its files, e.g. {str(found[-1])!r}, or the newest that "
                "validates: ftrain.load(template, ftrain.latest_checkpoint(directory))."
            )
        elif not any(path.iterdir()):
            msg = f"{str(path)!r} is an empty directory, not a checkpoint."
        else:
            msg = (
                f"Checkpoint directory {str(path)!r} has no manifest.json: it is neither a "
                "checkpoint file nor a complete directory of shards (an interrupted sharded "
                "save leaves one)."
            )
        raise CheckpointError(msg)
    return read_directory(path)


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """The ``step-*.ckpt`` files of ``directory``, oldest step first (not validated)."""
    found = []
    for p in Path(directory).glob(CHECKPOINT_GLOB):
        try:
            found.append((int(p.stem.split("-", 1)[1]), p))
        except ValueError:
            continue
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The newest checkpoint in ``directory`` that validates, or None.

    Newer files that fail validation (truncated, corrupt) are skipped with a warning naming them,
    so resuming falls back to the previous good checkpoint.

    Example:
        >>> import tempfile, ftrain
        >>> ftrain.latest_checkpoint(tempfile.mkdtemp()) is None
        True
    """
    check_type("directory", directory, (str, os.PathLike), "a str or os.PathLike")
    if Path(directory).exists() and not Path(directory).is_dir():
        msg = (
            f"`directory` must be a directory of checkpoints (got the file {str(directory)!r}; "
            "load a file with ftrain.load directly)."
        )
        raise ValueError(msg)
    for path in reversed(list_checkpoints(directory)):
        try:
            read_verified(path)
        except CheckpointError as err:
            warnings.warn(f"Skipping a bad checkpoint: {err}", stacklevel=2)
            continue
        return path
    return None


def remove_leftovers(directory: Path) -> None:
    """Delete what interrupted writes left in ``directory`` (temporary files and directories)."""
    if directory.is_dir():
        for leftover in [*directory.glob(".step-*.tmp"), *directory.glob(".step-*.old")]:
            remove(leftover)
