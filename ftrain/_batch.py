"""Moving batches to the state's device and counting their samples (pure helpers)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["batch_size", "cast_floating", "map_tensors", "move"]

_Tensor = torch.Tensor


def move(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Return ``batch`` with every tensor on ``device``.

    Tensors may sit in any nesting of tuples, lists, dicts and namedtuples; other leaves (strings,
    numbers, None) pass through unchanged. A tensor already on ``device`` is returned as is.

    Raises:
        TypeError: a leaf is an object that holds tensors ftrain cannot see into (it names the
            path and the type, and how to fix it).
    """
    kind = type(batch)
    if (kind is tuple or kind is list) and device.type == "cpu":
        # The common CPU case, (inputs, targets) already in place: nothing to move, no new objects.
        for t in batch:
            if type(t) is not _Tensor or not t.is_cpu:
                break
        else:
            return batch
    return _move(batch, device, non_blocking, "batch")


def _move(x: Any, device: torch.device, non_blocking: bool, path: str) -> Any:
    t = type(x)
    if t is _Tensor or isinstance(x, _Tensor):
        if x.device == device:
            return x
        try:
            return x.to(device, non_blocking=non_blocking)
        except (RuntimeError, AssertionError) as err:
            msg = f"`batch` cannot be moved to {device}: {path} failed to move ({err})."
            raise ValueError(msg) from None
    if t is tuple or t is list:
        # Fast path for the common (inputs, targets) batch.
        return t(_move(v, device, non_blocking, f"{path}[{i}]") for i, v in enumerate(x))
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # namedtuple
        fields = zip(x._fields, x, strict=True)
        return t(*(_move(v, device, non_blocking, f"{path}.{f}") for f, v in fields))
    if isinstance(x, Mapping):
        items = {k: _move(v, device, non_blocking, f"{path}[{k!r}]") for k, v in x.items()}
        try:
            return t(items)
        except TypeError:
            return items
    if isinstance(x, tuple | list):
        return t(_move(v, device, non_blocking, f"{path}[{i}]") for i, v in enumerate(x))
    if x is None or isinstance(x, str | bytes | int | float | bool | complex):
        return x
    to = getattr(x, "to", None)
    if callable(to):  # user types with a torch-style .to(device), e.g. a packed sequence
        return to(device, non_blocking=non_blocking)
    if hasattr(x, "__array__"):
        msg = (
            f"`batch` cannot be moved to {device}: {path} is a {t.__name__}, not a tensor. "
            "Convert it in the dataset or collate_fn, e.g. torch.as_tensor(array)."
        )
        raise TypeError(msg)
    return x


def batch_size(batch: Any) -> int:
    """The number of samples in ``batch``: the leading dimension of its first tensor.

    Raises:
        ValueError: the batch holds no tensor with a leading dimension.
    """
    kind = type(batch)
    if kind is tuple or kind is list:  # the common (inputs, targets) batch
        first = batch[0] if batch else None
        if type(first) is _Tensor and first.ndim > 0:
            return first.shape[0]
    n = _first_dim(batch)
    if n is None:
        msg = (
            "`batch` must hold at least one tensor with a leading (batch) dimension to count its "
            f"samples (got {type(batch).__name__}). Report a count from loss_fn instead: return "
            "(loss, {'count': torch.tensor(n)})."
        )
        raise ValueError(msg)
    return n


def _first_dim(x: Any) -> int | None:
    if isinstance(x, _Tensor):
        return int(x.shape[0]) if x.ndim > 0 else None
    if isinstance(x, tuple | list):
        for v in x:
            n = _first_dim(v)
            if n is not None:
                return n
        return None
    if isinstance(x, Mapping):
        for v in x.values():
            n = _first_dim(v)
            if n is not None:
                return n
    return None


def cast_floating(batch: Any, dtype: torch.dtype) -> Any:
    """Return ``batch`` with floating-point tensors cast to ``dtype`` (``*-true`` precision)."""

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if t.is_floating_point() else t

    return map_tensors(cast, batch, _unchanged)


def map_tensors(fn: Callable[[torch.Tensor], Any], tree: Any, other: Callable[[Any], Any]) -> Any:
    """``tree`` with ``fn`` applied to each tensor in its nesting of tuples, lists, dicts and
    namedtuples, and ``other`` to each other leaf (which may pass it through or raise)."""
    if isinstance(tree, _Tensor):
        return fn(tree)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(map_tensors(fn, v, other) for v in tree))
    if isinstance(tree, tuple | list):
        return type(tree)(map_tensors(fn, v, other) for v in tree)
    if isinstance(tree, Mapping):
        return {k: map_tensors(fn, v, other) for k, v in tree.items()}
    return other(tree)


def _unchanged(leaf: Any) -> Any:
    return leaf
