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
place, so a kill at any moment leaves no directory that validates half-written.

Loading never unpickles anything but tensors and plain data: torch reads ``.metadata`` with the
unrestricted ``pickle`` and stores non-tensor values with ``torch.load(weights_only=False)``, so
ftrain reads the metadata with an unpickler that admits only the classes torch's checkpoint
metadata is made of, and non-tensor values with ``weights_only=True``; every file's checksum is
verified against the manifest first.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from ._errors import CheckpointError

__all__ = [
    "MANIFEST",
    "STATE_FILE",
    "read_metadata",
    "remove",
    "safe_planner",
    "safe_reader",
    "verify_directory",
    "write_manifest",
]

MANIFEST = "manifest.json"
STATE_FILE = "state.ftrain"
SHARDED_FORMAT = "ftrain-sharded"
SHARDED_VERSION = 1

# (module, name) pairs the checkpoint metadata may name: torch's own metadata records and the
# builtins and torch types they hold. Anything else is refused before it is looked up.
_METADATA_MODULE = "torch.distributed.checkpoint.metadata"
_METADATA_GLOBALS = {
    (_METADATA_MODULE, name)
    for name in (
        "Metadata",
        "MetadataIndex",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    )
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.distributed.checkpoint.planner", "LoadItemType"),
    ("torch.distributed.checkpoint.planner", "WriteItemType"),
    ("torch", "Size"),
    ("torch", "device"),
    ("torch.serialization", "_get_layout"),  # a lookup of torch.strided & co. by name
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # tensor dtypes (torch.float32, ...)
        if module == "torch" and name in ("strided", "sparse_coo", "contiguous_format"):
            return getattr(torch, name)
        msg = f"the metadata names {module}.{name}, which a checkpoint index never holds"
        raise pickle.UnpicklingError(msg)

    def persistent_load(self, pid: Any) -> Any:
        msg = "the metadata holds persistent references"
        raise pickle.UnpicklingError(msg)


def read_metadata(path: Path) -> Any:
    """Unpickle a ``.metadata`` file, admitting only torch's checkpoint-metadata classes."""
    try:
        with path.open("rb") as f:
            return _MetadataUnpickler(f).load()
    except (pickle.UnpicklingError, AttributeError, EOFError, ValueError, TypeError) as err:
        msg = (
            f"Checkpoint metadata {str(path)!r} could not be read safely ({err}). ftrain reads "
            "checkpoint metadata with a restricted unpickler and never runs code from it."
        )
        raise CheckpointError(msg) from None


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


def remove(path: Path) -> None:
    """Delete a checkpoint file or directory (missing is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def safe_reader(directory: Path) -> Any:
    """A `FileSystemReader` that reads ``.metadata`` with the restricted unpickler."""
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    class _Reader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            metadata = read_metadata(directory / ".metadata")
            if getattr(metadata, "storage_meta", None) is not None:
                metadata.storage_meta.load_id = self.load_id
            return metadata

    return _Reader(directory)


def safe_planner() -> Any:
    """A load planner that reads non-tensor values with ``torch.load(weights_only=True)``."""
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class _Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            try:
                obj = torch.load(value, weights_only=True)
            except Exception as err:
                msg = (
                    f"The checkpoint value {fqn!r} could not be read safely "
                    f"({type(err).__name__}); ftrain loads non-tensor values with "
                    "weights_only=True and never runs code from a checkpoint."
                )
                raise CheckpointError(msg) from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    return _Planner()
