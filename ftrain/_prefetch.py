"""`DevicePrefetcher`: batches copied to the device one step ahead (on CUDA, on a side stream)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ._batch import move

__all__ = ["DevicePrefetcher"]


class DevicePrefetcher:
    """Iterate a loader with the next batch already on its way to ``device``.

    On CUDA the copy of batch ``i + 1`` is issued on a side stream (from pinned memory, so it is
    asynchronous) while step ``i`` runs; the step's stream waits for it only when it needs it. On
    other devices it simply moves each batch one ahead. Everything else (``sampler``,
    ``batch_size``, ``len``) is the wrapped loader's, so `train_epoch` seeds and resumes it as
    usual.
    """

    def __init__(self, loader: Any, device: torch.device):
        self.loader = loader
        self.device = device

    def __getattr__(self, name: str) -> Any:
        if name == "loader":  # not yet set (unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None  # type: ignore[no-untyped-call]
        it = iter(self.loader)

        def fetch() -> Any:
            batch = next(it, _END)
            if batch is _END or stream is None:
                return batch if batch is _END else move(batch, self.device)
            with torch.cuda.stream(stream):
                return move(batch, self.device, non_blocking=True)

        ahead = fetch()
        while ahead is not _END:
            current, ahead = ahead, None
            if stream is not None:
                torch.cuda.current_stream(self.device).wait_stream(stream)
                _record_stream(current, torch.cuda.current_stream(self.device))
            ahead = fetch()
            yield current


_END = object()


def _record_stream(batch: Any, stream: Any) -> None:
    if isinstance(batch, torch.Tensor):
        batch.record_stream(stream)
    elif isinstance(batch, tuple | list):
        for v in batch:
            _record_stream(v, stream)
    elif isinstance(batch, dict):
        for v in batch.values():
            _record_stream(v, stream)
