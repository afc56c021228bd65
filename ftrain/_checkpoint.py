"""`save` and `load`: one checkpoint per run state, atomic and verified.

A checkpoint is one file, or, for a state placed with `FSDP` on several processes, a directory
of shards (see ``ftrain/_sharded.py`` for its layout); `load` reads either into any placement.

File layout (version 1)::

    b"FTRAINCK"  magic, 8 bytes
    uint32       format version
    uint64       payload length in bytes
    32 bytes     SHA-256 of the payload
    payload      torch.save() of a dict of tensors and plain values (never a pickled object)

`save` writes to a temporary file in the target directory, flushes and fsyncs it, renames it over
the target and fsyncs the directory, so a kill at any moment leaves either the old file or the new
one. `load` checks magic, version, length and checksum before unpickling with
``torch.load(weights_only=True)``, so a truncated, corrupted or crafted file is reported as such
and never runs code.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import io
import os
import struct
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from ._errors import CheckpointError, NonFiniteError
from ._sharded import (
    STATE_FILE,
    read_metadata,
    remove,
    safe_planner,
    safe_reader,
    verify_directory,
    write_manifest,
)
from ._state import TrainState, advance, check_live

__all__ = [
    "FORMAT_VERSION",
    "checkpoint_name",
    "latest_checkpoint",
    "list_checkpoints",
    "load",
    "read_checkpoint",
    "save",
    "validate",
]

MAGIC = b"FTRAINCK"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIQ32s")
_RECORD = "__ftrain_record__"
# Records a checkpoint may rebuild by name: ftrain's own callback memories. Anything else comes
# back as a plain dict, so loading never imports a module a file names.
_KNOWN_RECORDS = {
    "ftrain.callbacks._early_stopping.EarlyStoppingState",
    "ftrain.callbacks._monitors.TimerState",
    "ftrain.callbacks._checkpoint.CheckpointState",
}


def save(state: TrainState, path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically; the state is not consumed.

    Stores the model, optimizer, scheduler and scaler state dicts, ``step``, ``epoch``, the
    position inside the epoch, the RNG counters (``seed``, ``step``, ``micro_step``: ftrain's
    randomness is derived from them) and ``callback_state``. Only rank 0 writes under DDP.

    Args:
        state: a live state whose parameters are all finite.
        path: the file to write; its directory is created if missing.

    Returns:
        The path written.

    Raises:
        NonFiniteError: a parameter is NaN or infinite (the last good checkpoint stays good).

    Example:
        >>> import os, tempfile, ftrain
        >>> path = os.path.join(tempfile.mkdtemp(), "a.ckpt")
        >>> path = ftrain.save(ftrain.testing.toy_state(), path)
        >>> ftrain.load(ftrain.testing.toy_state(), path).step
        0
    """
    check_live(state, "save")
    target = Path(path)
    bad = _nonfinite_parameters(state)
    if bad:
        msg = (
            f"Refusing to save a checkpoint at step {state.step}: parameters are not finite "
            f"({', '.join(bad[:5])}). The last good checkpoint is left as it was."
        )
        raise NonFiniteError(msg)
    if _sharded(state):
        return _save_sharded(state, target)
    payload_data = _payload(state)  # a collective under FSDP: every rank takes part
    if state.rank != 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_record(f, payload_data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def _write_record(f: Any, data: dict[str, Any]) -> None:
    """Write header + ``torch.save`` payload to an open binary file and fsync it."""
    buffer = io.BytesIO()
    torch.save(data, buffer)
    payload = buffer.getvalue()
    f.write(_HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest()))
    f.write(payload)
    f.flush()
    os.fsync(f.fileno())


def _sharded(state: TrainState) -> bool:
    return state.strategy.sharded_checkpoint


def _collect_dcp_garbage() -> None:
    # torch.distributed.checkpoint leaves reference cycles that hold the process group's pending
    # work; freed later (at interpreter exit, after the group is gone), they can abort the
    # process ("terminate called without an active exception"). Free them now.
    gc.collect()


def _save_sharded(state: TrainState, target: Path) -> Path:
    """Every rank writes its shards (torch.distributed.checkpoint); rank 0 commits the directory."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.filesystem import FileSystemWriter
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    fresh = not state.optimizer.state
    model_sd, optim_sd = get_state_dict(state.model, state.optimizer)
    if fresh:  # get_state_dict initialised the optimizer (Adam's step=1): undo, save none
        state.optimizer.state.clear()
        optim_sd["state"] = {}
    tmp = target.parent / f".{target.name}.tmp"
    distributed = dist.is_available() and dist.is_initialized()
    if state.rank == 0:
        remove(tmp)
        tmp.mkdir(parents=True)
    if distributed:
        dist.barrier()
    content: dict[str, Any] = {"model": model_sd}
    if optim_sd["state"]:
        content["optimizer_state"] = optim_sd["state"]
    with _single_process_intended():
        dcp_save(content, storage_writer=FileSystemWriter(tmp))  # every rank's shards, .metadata
    _collect_dcp_garbage()
    if state.rank == 0:
        record = _payload(state, tensors=False)
        record["sharded"] = {
            "world_size": state.world_size,
            "optimizer_state": bool(optim_sd["state"]),
            "param_groups": optim_sd["param_groups"],
        }
        with (tmp / STATE_FILE).open("wb") as f:
            _write_record(f, record)
        write_manifest(tmp, state.world_size)  # last: a directory without it never validates
        _fsync_dir(tmp)
        old = target.parent / f".{target.name}.old"
        if target.exists():
            remove(old)
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        remove(old)
    if distributed:
        dist.barrier()
    return target


def load(state: TrainState, path: str | os.PathLike[str]) -> TrainState:
    """Fill the template ``state`` with the checkpoint at ``path``; the template is consumed.

    The template gives the model, optimizer and placement; keys and shapes must match (every
    mismatch is named). Tensors land on the template's device, whatever device they were saved
    from.

    Returns:
        A live state with the checkpoint's weights, optimizer state, counters and callback memory.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, not an ftrain checkpoint, from
            a newer format version, or does not match the template.

    Example:
        >>> import os, tempfile, ftrain
        >>> state, _ = ftrain.train_step(ftrain.testing.toy_state(), ftrain.testing.toy_batch())
        >>> path = ftrain.save(state, os.path.join(tempfile.mkdtemp(), "step-1.ckpt"))
        >>> template = ftrain.testing.toy_state()
        >>> restored = ftrain.load(template, path)
        >>> restored.step, template.is_live
        (1, False)
    """
    check_live(state, "load")
    if Path(path).is_dir():
        data = _load_sharded(state, Path(path))
    else:
        data = read_checkpoint(path)
        _check_matches(state, data, Path(path))
        _load_full(state, data)
    for name in ("scheduler", "scaler"):
        obj, saved = getattr(state, name), data[name]
        if (obj is None) != (saved is None):
            msg = (
                f"Checkpoint {str(path)!r} {'has' if saved is not None else 'has no'} {name} "
                f"state but the template {'has no' if obj is None else 'has a'} {name}: build "
                "the template the way the saved run was built."
            )
            raise CheckpointError(msg)
        if obj is not None:
            obj.load_state_dict(saved)
    meta = data["meta"]
    return advance(
        state,
        "load",
        step=meta["step"],
        epoch=meta["epoch"],
        epoch_batch=meta["epoch_batch"],
        micro_step=meta["micro_step"],
        seed=meta["seed"],
        epoch_totals={k: (float(s), float(n)) for k, (s, n) in meta["epoch_totals"].items()},
        callback_state=_decode(data["callback_state"]),
        should_stop=False,
    )


def _load_full(state: TrainState, data: Mapping[str, Any]) -> None:
    # Full (unsharded) state dicts keyed by parameter names: the same file loads into one
    # process, DDP, or FSDP with any number of processes (each rank takes its shard).
    # torch.distributed.checkpoint is imported here, not at import time (it costs ~0.8 s).
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(state.model, data["model"], options=full)
    saved_optim = data["optimizer"]
    if saved_optim["state"]:
        set_optimizer_state_dict(
            state.model, state.optimizer, optim_state_dict=saved_optim, options=full
        )
    else:  # a stateless optimizer (plain SGD) or one that never stepped: hyperparameters only
        _load_hyperparameters(state, saved_optim["param_groups"])


def _load_hyperparameters(state: TrainState, saved_groups: list[dict[str, Any]]) -> None:
    for group, saved in zip(state.optimizer.param_groups, saved_groups, strict=True):
        group.update({k: v for k, v in saved.items() if k != "params"})


def _load_sharded(state: TrainState, directory: Path) -> dict[str, Any]:
    """Load a sharded directory into ``state``'s model and optimizer; return the rest.

    Each process reads the parts of the shards it holds (torch.distributed.checkpoint reshards:
    any number of processes, or one process without a process group, loads the directory).
    """
    from torch.distributed.checkpoint.state_dict import (
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    data = read_checkpoint(directory)
    sharded = data["sharded"]
    _check_sharded_matches(state, directory, sharded)
    had_state = bool(state.optimizer.state)
    model_sd, optim_sd = get_state_dict(state.model, state.optimizer)  # initialises Adam & co.
    content: dict[str, Any] = {"model": model_sd}
    if sharded["optimizer_state"]:
        content["optimizer_state"] = optim_sd["state"]
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
    if sharded["optimizer_state"]:
        optim_sd["state"] = content["optimizer_state"]
        optim_sd["param_groups"] = sharded["param_groups"]
        set_state_dict(
            state.model, state.optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd
        )
    else:  # the saved optimizer had no state: drop what get_state_dict initialised
        set_model_state_dict(state.model, model_sd)
        if not had_state:
            state.optimizer.state.clear()
        _load_hyperparameters(state, sharded["param_groups"])
    return data


@contextlib.contextmanager
def _single_process_intended() -> Iterator[None]:
    # torch warns on every save/load without a process group; one process is intended here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
        yield


def _check_sharded_matches(state: TrainState, directory: Path, sharded: Mapping[str, Any]) -> None:
    metadata = read_metadata(directory / ".metadata")
    saved = {
        k.removeprefix("model."): tuple(getattr(v, "size", ()))
        for k, v in metadata.state_dict_metadata.items()
        if k.startswith("model.")
    }
    own = {k: tuple(v.shape) for k, v in state.model.state_dict().items()}
    problems = []
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    if missing:
        problems.append(f"missing keys {missing[:10]}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:10]}")
    shapes = [
        f"{k}: checkpoint {saved[k]} vs model {shape}"
        for k, shape in own.items()
        if k in saved and saved[k] != shape
    ]
    if shapes:
        problems.append("shape mismatches " + "; ".join(shapes[:10]))
    groups = [len(g["params"]) for g in state.optimizer.param_groups]
    saved_groups = [len(g["params"]) for g in sharded["param_groups"]]
    if groups != saved_groups:
        problems.append(
            f"optimizer parameter groups {saved_groups} in the checkpoint vs {groups} in the "
            "template"
        )
    if problems:
        msg = (
            f"Checkpoint {str(directory)!r} does not match the template state: "
            + "; ".join(problems)
            + ". Load it into a state built like the one that saved it."
        )
        raise CheckpointError(msg)


def read_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read and verify a checkpoint file; return its contents as plain data.

    For a sharded checkpoint directory every file is verified against its manifest and the
    tensor-free record (counters, scheduler, scaler, callback memory) is returned; the model
    and optimizer shards are read by `load` into a template state.

    Raises:
        CheckpointError: with the file name and what is wrong with it.
    """
    p = Path(path)
    if p.is_dir():  # sharded: verify every file, return the tensor-free record
        verify_directory(p)
        data = read_checkpoint(p / STATE_FILE, map_location)
        if "sharded" not in data:
            msg = f"Checkpoint directory {str(p)!r} holds no sharded ftrain state."
            raise CheckpointError(msg)
        return data
    try:
        raw = p.read_bytes()
    except OSError as err:
        msg = f"Cannot read checkpoint {str(p)!r}: {err.strerror or err}."
        raise CheckpointError(msg) from None
    if len(raw) < _HEADER.size:
        what = "empty" if not raw else f"truncated ({len(raw)} bytes)"
        msg = f"Checkpoint {str(p)!r} is {what}: it is not a complete ftrain checkpoint."
        raise CheckpointError(msg)
    magic, version, length, digest = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        msg = (
            f"{str(p)!r} is not an ftrain checkpoint (no ftrain header). ftrain reads only files "
            "written by ftrain.save; it never unpickles other files."
        )
        raise CheckpointError(msg)
    if version > FORMAT_VERSION:
        msg = (
            f"Checkpoint {str(p)!r} has format version {version}, newer than this ftrain reads "
            f"({FORMAT_VERSION}). Upgrade ftrain to load it."
        )
        raise CheckpointError(msg)
    payload = raw[_HEADER.size :]
    if len(payload) != length:
        msg = (
            f"Checkpoint {str(p)!r} is truncated: {len(payload)} of {length} payload bytes "
            "present (the write was probably interrupted)."
        )
        raise CheckpointError(msg)
    if hashlib.sha256(payload).digest() != digest:
        msg = f"Checkpoint {str(p)!r} is corrupt: its checksum does not match its contents."
        raise CheckpointError(msg)
    try:
        data = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:  # weights_only refusals and damaged archives alike
        text = str(err)
        detail = next((ln.strip() for ln in text.splitlines() if "Unsupported global" in ln), "")
        reason = detail or text.splitlines()[0][:300] if text else type(err).__name__
        msg = (
            f"Checkpoint {str(p)!r} could not be read safely ({type(err).__name__}: {reason}). "
            "ftrain loads with weights_only=True and never runs code from a checkpoint."
        )
        raise CheckpointError(msg) from None
    if not isinstance(data, dict) or data.get("format") != "ftrain":
        msg = f"Checkpoint {str(p)!r} does not hold an ftrain state."
        raise CheckpointError(msg)
    return data


def validate(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a complete, uncorrupted ftrain checkpoint."""
    try:
        read_checkpoint(path)
    except CheckpointError:
        return False
    return True


def _payload(state: TrainState, tensors: bool = True) -> dict[str, Any]:
    """The checkpoint's contents; without the model and optimizer when ``tensors`` is False."""
    data = {
        "format": "ftrain",
        "meta": {
            "step": state.step,
            "epoch": state.epoch,
            "epoch_batch": state.epoch_batch,
            "micro_step": state.micro_step,
            "seed": state.seed,
            "epoch_totals": {k: [s, n] for k, (s, n) in state.epoch_totals.items()},
            "torch_version": str(torch.__version__),
        },
        "scheduler": None if state.scheduler is None else state.scheduler.state_dict(),
        "scaler": None if state.scaler is None else state.scaler.state_dict(),
        "callback_state": _encode(dict(state.callback_state)),
    }
    if tensors:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        gather = StateDictOptions(full_state_dict=True, cpu_offload=True)
        fresh = not state.optimizer.state
        data["model"] = get_model_state_dict(state.model, options=gather)
        data["optimizer"] = get_optimizer_state_dict(state.model, state.optimizer, options=gather)
        if fresh:
            # get_optimizer_state_dict initialises a fresh optimizer's state with a zero step
            # (Adam's step counter becomes 1): saving must not change training, so undo it.
            state.optimizer.state.clear()
            data["optimizer"]["state"] = {}
    return data


def _nonfinite_parameters(state: TrainState) -> list[str]:
    named = list(state.model.named_parameters())
    if not named:
        return []
    local = [p.to_local() if hasattr(p, "to_local") else p for _, p in named]  # FSDP shards
    finite = torch.stack([torch.isfinite(p).all() for p in local])
    if state.world_size > 1:  # every rank must agree, or the others would wait in a collective
        import torch.distributed as dist

        flags = finite.to(torch.int32)
        dist.all_reduce(flags, op=dist.ReduceOp.MIN)
        finite = flags.bool()
    if bool(finite.all()):  # one sync for the whole model
        return []
    return [n for (n, _), ok in zip(named, finite.tolist(), strict=True) if not ok]


def _encode(value: Any) -> Any:
    if attrs.has(type(value)):
        cls = type(value)
        fields = {a.name: _encode(getattr(value, a.name)) for a in attrs.fields(cls)}
        return {_RECORD: f"{cls.__module__}.{cls.__qualname__}", "fields": fields}
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_encode(v) for v in value)
    if value is None or isinstance(value, bool | int | float | str | torch.Tensor):
        return value
    msg = (
        f"`callback_state` must hold plain data (dicts, lists, tuples, numbers, strings, tensors "
        f"or attrs records of those) to be checkpointed (got {type(value).__name__})."
    )
    raise TypeError(msg)


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if _RECORD in value:
            fields = {k: _decode(v) for k, v in value["fields"].items()}
            name = value[_RECORD]
            if name in _KNOWN_RECORDS:
                module, _, cls = name.rpartition(".")
                return getattr(importlib.import_module(module), cls)(**fields)
            return fields
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_decode(v) for v in value)
    return value


def _check_matches(state: TrainState, data: Mapping[str, Any], path: Path) -> None:
    problems = []
    own = state.model.state_dict()
    saved = data["model"]
    missing = sorted(set(own) - set(saved))
    unexpected = sorted(set(saved) - set(own))
    if missing:
        problems.append(f"missing keys {missing[:10]}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:10]}")
    shapes = [
        f"{k}: checkpoint {tuple(saved[k].shape)} vs model {tuple(v.shape)}"
        for k, v in own.items()
        if k in saved and isinstance(v, torch.Tensor) and tuple(saved[k].shape) != tuple(v.shape)
    ]
    if shapes:
        problems.append("shape mismatches " + "; ".join(shapes[:10]))
    groups = [len(g["params"]) for g in state.optimizer.state_dict()["param_groups"]]
    saved_groups = [len(g["params"]) for g in data["optimizer"]["param_groups"]]
    if groups != saved_groups:
        problems.append(
            f"optimizer parameter groups {saved_groups} in the checkpoint vs {groups} in the "
            "template"
        )
    if problems:
        msg = (
            f"Checkpoint {str(path)!r} does not match the template state: "
            + "; ".join(problems)
            + ". Load it into a state built like the one that saved it."
        )
        raise CheckpointError(msg)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


CHECKPOINT_GLOB = "step-*.ckpt"


def checkpoint_name(step: int) -> str:
    """The file name `Checkpoint` gives the checkpoint of ``step``."""
    return f"step-{step:09d}.ckpt"


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
    for path in reversed(list_checkpoints(directory)):
        try:
            read_checkpoint(path)
        except CheckpointError as err:
            warnings.warn(f"Skipping a bad checkpoint: {err}", stacklevel=2)
            continue
        return path
    return None
