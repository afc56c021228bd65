"""Loaders whose order is a function of the state: seeded, resumable and rank-aware.

`prepare_loader` rebuilds a `torch.utils.data.DataLoader` around an `EpochSampler`, keeping every
other setting of the user's loader (batch size, workers, collate_fn, pin_memory, ...). The sampler
draws the epoch's order from ``(state.seed, epoch)``, splits it across processes like
``DistributedSampler`` (it *is* one) and can start part-way into an epoch, so a resumed run skips
the batches it already trained on without loading them. Loaders ftrain cannot reorder (iterables,
custom batch samplers, custom samplers) are used as they are.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from ._prefetch import DevicePrefetcher
from ._rng import mix
from ._state import TrainState

__all__ = ["EpochSampler", "num_batches", "prepare_loader", "resampled", "start_epoch"]


class EpochSampler(DistributedSampler[int]):
    """A `DistributedSampler` whose order comes from ``(seed, epoch)`` and that can start late.

    Args:
        dataset: a sized dataset.
        shuffle: shuffle each epoch (the order is ``randperm`` seeded from seed and epoch).
        seed: the run's seed (``state.seed``).
        num_replicas: the number of processes sharing the data (1 on one process).
        rank: this process's index among them.
        drop_last: as in `DistributedSampler`.
        pad: repeat samples so every rank gets the same count (training, so collectives stay
            in step). ``False`` gives each sample to exactly one rank (evaluation).
    """

    def __init__(
        self,
        dataset: Sized,
        *,
        shuffle: bool,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
        pad: bool = True,
    ) -> None:
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.pad = pad
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's share of the epoch."""
        self.start = start

    def _indices(self) -> list[int]:
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(mix(self.seed, self.epoch))
            indices: list[int] = torch.randperm(n, generator=g).tolist()
        else:
            indices = list(range(n))
        if not self.pad:
            return indices[self.rank :: self.num_replicas]
        if not self.drop_last:
            extra = self.total_size - len(indices)
            while extra > 0:  # pad by repeating the start, as DistributedSampler does
                indices += indices[:extra]
                extra = self.total_size - len(indices)
        else:
            indices = indices[: self.total_size]
        return indices[self.rank : self.total_size : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        if self.pad:
            return max(self.num_samples - self.start, 0)
        n = len(self.dataset)  # type: ignore[arg-type]
        share = len(range(self.rank, n, self.num_replicas))
        return max(share - self.start, 0)


def prepare_loader(
    state: TrainState, loader: Iterable[Any], *, train: bool = True, prefetch: bool = False
) -> Any:
    """Return ``loader`` rebuilt around an `EpochSampler` seeded from ``state``.

    A `DataLoader` over a map-style dataset with the default sampler (sequential, or random for
    ``shuffle=True``) is rebuilt with the same settings and an `EpochSampler` (shuffling kept as it
    was; split across processes when the state is placed on several). Any other iterable is
    returned unchanged. Calling it on a loader it already prepared returns that loader.

    `train_epoch` and `eval_epoch` call this themselves; call it once up front (as `fit` does) to
    keep worker processes of ``persistent_workers=True`` loaders alive across epochs.

    Args:
        state: the state whose seed and placement decide order and split.
        loader: a DataLoader or any iterable of batches.
        train: pad shards to equal length (training); ``False`` gives every sample to exactly
            one process (evaluation).
        prefetch: wrap the result in a `DevicePrefetcher`, which copies the next batch to the
            state's device while the current step runs (on CUDA: pinned memory, a side stream).
    """
    prepared = _prepare(state, loader, train)
    if prefetch and not isinstance(prepared, DevicePrefetcher):
        return DevicePrefetcher(prepared, state.device)
    return prepared


def _prepare(state: TrainState, loader: Iterable[Any], train: bool) -> Any:
    if not isinstance(loader, DataLoader) or isinstance(loader.sampler, EpochSampler):
        return loader
    if callable(getattr(loader, "state_dict", None)):  # it keeps its own order and position
        return _kept(state, loader)
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        return loader
    if (
        isinstance(loader.dataset, IterableDataset)
        or type(loader.batch_sampler) is not BatchSampler
    ):
        return _kept(state, loader)
    if type(sampler) is SequentialSampler:
        shuffle = False
    elif (
        type(sampler) is RandomSampler and not sampler.replacement and sampler._num_samples is None
    ):
        shuffle = True
    else:
        return _kept(state, loader)
    drop_last = loader.drop_last and train
    return resampled(state, loader, shuffle=shuffle, drop_last=drop_last, pad=train)[0]


def resampled(
    state: TrainState, loader: DataLoader[Any], *, shuffle: bool, drop_last: bool, pad: bool
) -> tuple[DataLoader[Any], EpochSampler]:
    """``loader`` rebuilt on an `EpochSampler` of its dataset for ``state``'s seed and rank
    (pinned on CUDA), and that sampler."""
    sampler = EpochSampler(
        loader.dataset,  # type: ignore[arg-type]
        shuffle=shuffle,
        seed=state.seed,
        num_replicas=state.world_size,
        rank=state.rank,
        drop_last=drop_last,
        pad=pad,
    )
    return _rebuild(loader, sampler, pin=state.device.type == "cuda"), sampler


def _kept(state: TrainState, loader: DataLoader[Any]) -> DataLoader[Any]:
    """A loader ftrain cannot reorder is used as it is; distributed, say so once."""
    if state.world_size > 1 and _first_time(_warned_split, loader):
        warnings.warn(
            f"The loader's sampler ({type(loader.sampler).__name__}) or dataset is custom, so "
            "ftrain cannot split it across processes: every process iterates it as it is. Give "
            "it a DistributedSampler yourself if each process should see its own share.",
            stacklevel=3,
        )
    return loader


# Loaders already warned about, held weakly: an entry goes with its loader, so a new loader never
# inherits an old one's silence (as it would from a set of ids, which are reused).
_warned_split: weakref.WeakSet[Any] = weakref.WeakSet()
_warned_skip: weakref.WeakSet[Any] = weakref.WeakSet()


def _first_time(warned: weakref.WeakSet[Any], loader: Any) -> bool:
    """True the first time ``loader`` is seen (always, for one that takes no weak reference)."""
    try:
        if loader in warned:
            return False
        warned.add(loader)
    except TypeError:  # lists and tuples of batches take no weak reference
        pass
    return True


def _rebuild(loader: DataLoader[Any], sampler: EpochSampler, pin: bool) -> DataLoader[Any]:
    kwargs: dict[str, Any] = {
        "batch_size": loader.batch_size,
        "sampler": sampler,
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory or pin,  # page-locked host memory for async copies
        "drop_last": loader.drop_last,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "multiprocessing_context": loader.multiprocessing_context,
        "generator": torch.Generator(),
        "persistent_workers": loader.persistent_workers,
        "pin_memory_device": loader.pin_memory_device,
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if hasattr(loader, "in_order"):
        kwargs["in_order"] = loader.in_order
    dataset: Dataset[Any] = loader.dataset
    return DataLoader(dataset, **kwargs)


def start_epoch(
    loader: Any, state: TrainState, *, positioned: bool = False
) -> tuple[Iterator[Any], int | None]:
    """Iterate ``loader`` for ``state``'s epoch, starting after ``state.epoch_batch`` batches.

    With an `EpochSampler` the skip happens at the sampler's indices (skipped batches are never
    loaded). A ``positioned`` loader (one that keeps its own position, restored by
    `attach_loader`) continues where it stands. Other loaders are iterated and the first batches
    dropped, with a warning once.

    Returns:
        ``(iterator, batches)``: ``batches`` is the length of the whole epoch (skipped batches
        included), or None when the loader has no length.
    """
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, EpochSampler):
        sampler.set_epoch(state.epoch)
        sampler.set_start(0)
        total: int | None = len(loader)
        sampler.set_start(state.epoch_batch * (loader.batch_size or 1))
        if isinstance(loader.generator, torch.Generator):
            # Worker processes seed themselves from the loader's generator.
            loader.generator.manual_seed(mix(state.seed, state.epoch, 0xDA7A))
        return iter(loader), total
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(state.epoch)
    total = num_batches(loader)
    it = iter(loader)
    if state.epoch_batch and not positioned:
        if _first_time(_warned_skip, loader):
            warnings.warn(
                f"Resuming mid-epoch on a loader ftrain cannot reorder ({type(loader).__name__}); "
                f"skipping {state.epoch_batch} batches by iterating them.",
                stacklevel=3,
            )
        for _ in range(state.epoch_batch):
            next(it, None)
    return it, total


def num_batches(loader: Any) -> int | None:
    """``len(loader)``, or None for loaders without a length."""
    try:
        return len(loader)
    except TypeError:
        return None
