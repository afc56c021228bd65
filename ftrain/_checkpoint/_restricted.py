"""Reading torch.distributed.checkpoint files without running code from them.

torch reads a shard directory's ``.metadata`` with the unrestricted ``pickle`` and stores
non-tensor values with ``torch.load(weights_only=False)``. ftrain reads the metadata with an
unpickler that admits only the classes torch's checkpoint metadata is made of, and non-tensor
values with ``weights_only=True``. torch.distributed.checkpoint is imported only when a shard
directory is read (it costs about 0.8 s to import).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from .._errors import CheckpointError

__all__ = ["read_metadata", "safe_planner", "safe_reader"]

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
