"""Sharded checkpoints: a directory written by every process with torch.distributed.checkpoint.

Directory layout (written under FSDP with several processes)::

    step-000000009.ckpt/
        __0_0.distcp, __1_0.distcp, ...   each process's shards of model and optimizer state
        .metadata                         torch.distributed.checkpoint's index of the shards
        state.ftrain                      counters, scheduler, scaler, callback memory, optimizer
                                          hyperparameters: an ftrain checkpoint file (header and
                                          checksum) without the tensors
        manifest.json                     every file above with its size and SHA-256

Every process writes its own shards into a hidden temporary directory; the first process then
writes ``state.ftrain`` and the manifest (written last, fsynced) and renames the directory into
place, so a kill at any moment leaves no directory that validates half-written. Loading verifies
every file against the manifest first and reads torch's files without running code from them
(``_restricted.py``); any number of processes, or one process without a process group, loads it.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import CheckpointError
from ._format import fsync_dir, read_file, remove, sibling, write_record
from ._match import check_matches
from ._restricted import read_metadata, safe_planner, safe_reader
from ._tensors import load_hyperparameters, state_dicts

if TYPE_CHECKING:
    from .._state import TrainState

__all__ = ["load_sharded", "read_directory", "save_sharded", "write_manifest"]

MANIFEST = "manifest.json"
STATE_FILE = "state.ftrain"
SHARDED_FORMAT = "ftrain-sharded"
SHARDED_VERSION = 1


def save_sharded(
    state: TrainState,
    target: Path,
    record: dict[str, Any],
    *,
    averages: dict[str, Any] | None = None,
) -> Path:
    """Every rank writes its shards (and those of the averaged weights, ``averages``); rank 0
    adds the tensor-free ``record`` and commits."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.filesystem import FileSystemWriter
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    model_sd, optims = state_dicts(state, full=False)
    tmp = sibling(target, "tmp")
    distributed = dist.is_available() and dist.is_initialized()
    if state.rank == 0:
        remove(tmp)
        tmp.mkdir(parents=True)
    if distributed:
        dist.barrier()
    content: dict[str, Any] = {"model": model_sd}
    with_state = sorted(name for name, sd in optims.items() if sd["state"])
    if with_state:
        content["optimizer_state"] = {_key(n): optims[n]["state"] for n in with_state}
    if averages:
        content["averages"] = averages
    with _single_process_intended():
        dcp_save(content, storage_writer=FileSystemWriter(tmp))  # every rank's shards, .metadata
    _collect_dcp_garbage()
    if state.rank == 0:
        record["sharded"] = {
            "world_size": state.world_size,
            "optimizer_state": with_state,
            "param_groups": {name: sd["param_groups"] for name, sd in optims.items()},
        }
        with (tmp / STATE_FILE).open("wb") as f:
            write_record(f, record)
        write_manifest(tmp, state.world_size)  # last: a directory without it never validates
        fsync_dir(tmp)
        old = sibling(target, "old")
        if target.exists():
            remove(old)
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(target.parent)
        remove(old)
    if distributed:
        dist.barrier()
    return target


def load_sharded(
    state: TrainState,
    directory: Path,
    data: dict[str, Any],
    *,
    averages: dict[str, Any] | None = None,
) -> None:
    """Load the shards of ``directory`` (whose record is ``data``) into ``state``'s objects,
    and into the tensors of ``averages`` (the averaged weights, filled in place).

    Each process reads the parts of the shards it holds (torch.distributed.checkpoint reshards).
    """
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    sharded = data["sharded"]
    metadata = read_metadata(directory / ".metadata")
    saved = {
        k.removeprefix("model."): tuple(v.size) if hasattr(v, "size") else None
        for k, v in metadata.state_dict_metadata.items()
        if k.startswith("model.")
    }
    check_matches(state, directory, saved, sharded["param_groups"])
    with_state = set(sharded["optimizer_state"])
    model_sd = get_model_state_dict(state.model)
    optim_sds = {}
    for phase in state.phases:
        had_state = bool(phase.optimizer.state)
        # initialises Adam & co., so the load has tensors to fill
        optim_sds[phase.name] = (get_optimizer_state_dict(state.model, phase.optimizer), had_state)
    content: dict[str, Any] = {"model": model_sd}
    if with_state:
        content["optimizer_state"] = {_key(n): optim_sds[n][0]["state"] for n in with_state}
    if averages:
        content["averages"] = averages
    try:
        with _single_process_intended():
            dcp_load(content, storage_reader=safe_reader(directory), planner=safe_planner())
        _collect_dcp_garbage()
    except CheckpointError:
        raise
    except Exception as err:
        msg = (
            f"Checkpoint {str(directory)!r} could not be loaded into the template state "
            f"({type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}). "
            "Load it into a state built like the one that saved it."
        )
        raise CheckpointError(msg) from None
    set_model_state_dict(state.model, model_sd)
    for phase in state.phases:
        optim_sd, had_state = optim_sds[phase.name]
        groups = sharded["param_groups"][phase.name]
        if phase.name in with_state:
            optim_sd["state"] = content["optimizer_state"][_key(phase.name)]
            optim_sd["param_groups"] = groups
            set_optimizer_state_dict(state.model, phase.optimizer, optim_state_dict=optim_sd)
        else:  # the saved optimizer had no state: drop what get_optimizer_state_dict made
            if not had_state:
                phase.optimizer.state.clear()
            load_hyperparameters(phase.optimizer, groups)


def _key(phase: str) -> str:
    """A phase's key among the shards (the unnamed phase of one optimizer included)."""
    return f"phase_{phase}"


def read_directory(directory: Path) -> dict[str, Any]:
    """Verify every file of a shard directory; return its tensor-free record."""
    verify_directory(directory)
    data = read_file(directory / STATE_FILE)
    if "sharded" not in data:
        msg = f"Checkpoint directory {str(directory)!r} holds no sharded ftrain state."
        raise CheckpointError(msg)
    return data


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(directory: Path, world_size: int) -> None:
    """Record every file of ``directory`` with its size and checksum; fsync it."""
    files = {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {
        "format": SHARDED_FORMAT,
        "version": SHARDED_VERSION,
        "world_size": world_size,
        "files": files,
    }
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    with (directory / MANIFEST).open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def verify_directory(directory: Path) -> dict[str, Any]:
    """Check a sharded checkpoint's manifest, file sizes and checksums; return the manifest.

    Raises:
        CheckpointError: naming the directory and the file that is missing, short or corrupt.
    """
    where = str(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_bytes())
    except FileNotFoundError:
        msg = (
            f"Checkpoint directory {where!r} has no {MANIFEST}: it is not a complete ftrain "
            "checkpoint (the save was probably interrupted)."
        )
        raise CheckpointError(msg) from None
    except (OSError, ValueError) as err:
        msg = f"Checkpoint directory {where!r} has an unreadable {MANIFEST} ({err})."
        raise CheckpointError(msg) from None
    if not isinstance(manifest, dict) or manifest.get("format") != SHARDED_FORMAT:
        msg = f"{where!r} is not an ftrain sharded checkpoint (its {MANIFEST} says otherwise)."
        raise CheckpointError(msg)
    if manifest.get("version", 0) > SHARDED_VERSION:
        msg = (
            f"Checkpoint {where!r} has sharded format version {manifest['version']}, newer than "
            f"this ftrain reads ({SHARDED_VERSION}). Upgrade ftrain to load it."
        )
        raise CheckpointError(msg)
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
        for v in files.values()
    ):
        msg = f"Checkpoint {where!r} has a malformed {MANIFEST} (no size and sha256 per file)."
        raise CheckpointError(msg)
    for required in (STATE_FILE, ".metadata"):
        if required not in files:
            msg = f"Checkpoint {where!r} lists no {required} in its {MANIFEST}."
            raise CheckpointError(msg)
    for name, info in files.items():
        if Path(name).name != name or name in (".", ".."):
            msg = f"Checkpoint {where!r} lists a file outside the directory: {name!r}."
            raise CheckpointError(msg)
        p = directory / name
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            msg = f"Checkpoint {where!r} is missing {name} (listed in its {MANIFEST})."
            raise CheckpointError(msg) from None
        if size != info["size"]:
            msg = (
                f"Checkpoint {where!r} is damaged: {name} has {size} bytes, its {MANIFEST} "
                f"says {info['size']}."
            )
            raise CheckpointError(msg)
        if _sha256(p) != info["sha256"]:
            msg = f"Checkpoint {where!r} is corrupt: the checksum of {name} does not match."
            raise CheckpointError(msg)
    return manifest


@contextlib.contextmanager
def _single_process_intended() -> Iterator[None]:
    # torch warns on every save/load without a process group; one process is intended here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield


def _collect_dcp_garbage() -> None:
    # torch.distributed.checkpoint leaves reference cycles that hold the process group's pending
    # work; freed later (at interpreter exit, after the group is gone), they can abort the
    # process ("terminate called without an active exception"). Free them now.
    gc.collect()
