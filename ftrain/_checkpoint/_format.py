"""The checkpoint file: header, checksum, atomic write, verified read.

File layout (version 2)::

    b"FTRAINCK"  magic, 8 bytes
    uint32       format version
    uint64       payload length in bytes
    32 bytes     SHA-256 of the payload
    payload      torch.save() of a dict of tensors and plain values (never a pickled object)

`write_file` writes to a temporary file in the target directory, flushes and fsyncs it, renames it
over the target and fsyncs the directory, so a kill at any moment leaves either the old file or
the new one. `read_file` checks magic, version, length and checksum before unpickling with
``torch.load(weights_only=True)``, so a truncated, corrupted or crafted file is reported as such
and never runs code.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import struct
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .._errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "fsync_dir",
    "read_file",
    "remove",
    "sibling",
    "write_file",
    "write_record",
]

MAGIC = b"FTRAINCK"
FORMAT_VERSION = 2
_HEADER = struct.Struct("<8sIQ32s")


def write_record(f: BinaryIO, data: dict[str, Any]) -> None:
    """Write header + ``torch.save`` payload to an open binary file and fsync it."""
    buffer = io.BytesIO()
    torch.save(data, buffer)
    payload = buffer.getvalue()
    f.write(_HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest()))
    f.write(payload)
    f.flush()
    os.fsync(f.fileno())


_NAME_MAX = 255  # bytes in one file name, on every common file system
_TAG_ROOM = 32  # what `sibling` adds around the target's name, at most


def sibling(target: Path, tag: str) -> Path:
    """A hidden name beside ``target`` for a temporary or old copy: ``.<name>.<tag>``.

    The target's name is clipped so the result fits the file-name limit whatever the target's
    length (a 255-byte target name is valid; a name 15 bytes longer is not).
    """
    name = target.name.encode()[: _NAME_MAX - _TAG_ROOM].decode(errors="ignore")
    return target.with_name(f".{name}.{tag}")


def write_file(target: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``target`` atomically: temporary file, fsync, rename, fsync directory.

    The file gets the permissions `open` would give it (0666 less the umask), not the 0600 of
    a private temporary file, so other users' jobs can read checkpoints where the umask allows.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = sibling(target, f"{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits taken
            continue
        break
    try:
        with os.fdopen(fd, "wb") as f:
            write_record(f, data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (where the platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove(path: Path) -> None:
    """Delete a checkpoint file or directory (missing is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def read_file(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read and verify one checkpoint file; return its payload as plain data.

    Raises:
        CheckpointError: with the file name and what is wrong with it.
    """
    try:
        raw = path.read_bytes()
    except OSError as err:
        msg = f"Cannot read checkpoint {str(path)!r}: {err.strerror or err}."
        raise CheckpointError(msg) from None
    if len(raw) < _HEADER.size:
        what = "empty" if not raw else f"truncated ({len(raw)} bytes)"
        msg = f"Checkpoint {str(path)!r} is {what}: it is not a complete ftrain checkpoint."
        raise CheckpointError(msg)
    magic, version, length, digest = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        msg = (
            f"{str(path)!r} is not an ftrain checkpoint (no ftrain header). ftrain reads only "
            "files written by ftrain.save; it never unpickles other files."
        )
        raise CheckpointError(msg)
    if version > FORMAT_VERSION:
        msg = (
            f"Checkpoint {str(path)!r} has format version {version}, newer than this ftrain "
            f"reads ({FORMAT_VERSION}). Upgrade ftrain to load it."
        )
        raise CheckpointError(msg)
    payload = raw[_HEADER.size :]
    if len(payload) != length:
        msg = (
            f"Checkpoint {str(path)!r} is truncated: {len(payload)} of {length} payload bytes "
            "present (the write was probably interrupted)."
        )
        raise CheckpointError(msg)
    if hashlib.sha256(payload).digest() != digest:
        msg = f"Checkpoint {str(path)!r} is corrupt: its checksum does not match its contents."
        raise CheckpointError(msg)
    try:
        data = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:  # weights_only refusals and damaged archives alike
        text = str(err)
        detail = next((ln.strip() for ln in text.splitlines() if "Unsupported global" in ln), "")
        reason = detail or text.splitlines()[0][:300] if text else type(err).__name__
        msg = (
            f"Checkpoint {str(path)!r} could not be read safely ({type(err).__name__}: "
            f"{reason}). ftrain loads with weights_only=True and never runs code from a "
            "checkpoint."
        )
        raise CheckpointError(msg) from None
    if not isinstance(data, dict) or data.get("format") != "ftrain":
        msg = f"Checkpoint {str(path)!r} does not hold an ftrain state."
        raise CheckpointError(msg)
    return data
