"""Protocols and type aliases of ftrain's extension points.

Every extension point is a plain callable or a small record: a user satisfies these with a
function or a frozen attrs class, never by inheriting from a base class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from ._events import Event
    from ._state import TrainState

__all__ = [
    "Batch",
    "Callback",
    "CallbackWithMemory",
    "Loader",
    "LossFn",
    "LossOutput",
    "Metrics",
    "StepFn",
    "Strategy",
]

Batch: TypeAlias = Any
"""A batch: tensors in any nesting of tuples, lists, dicts and namedtuples."""

Metrics: TypeAlias = Mapping[str, torch.Tensor]
"""Step metrics: scalar, detached tensors on the state's device (no host sync)."""

LossOutput: TypeAlias = "torch.Tensor | tuple[torch.Tensor, Mapping[str, torch.Tensor]]"

Loader: TypeAlias = Iterable[Any]
"""Anything iterable that yields batches; a `torch.utils.data.DataLoader` gets seeded shuffling."""


class LossFn(Protocol):
    """``loss_fn(model, batch)`` returns a scalar loss or ``(loss, metrics)``.

    ``metrics`` is a dict of scalar tensors. A ``"count"`` entry, if present, is the number of
    samples in the batch and is used to weight epoch averages instead of the batch's leading
    dimension.
    """

    def __call__(self, model: nn.Module, batch: Batch, /) -> Any: ...


class StepFn(Protocol):
    """A training step: ``step(state, batch) -> (state, metrics)``, like `ftrain.train_step`."""

    def __call__(
        self, state: TrainState, batch: Batch, /
    ) -> tuple[TrainState, Mapping[str, torch.Tensor]]: ...


class Callback(Protocol):
    """``callback(state, event) -> state``.

    An observer returns `state` unchanged; a callback that acts returns an evolved state.
    """

    def __call__(self, state: TrainState, event: Event, /) -> TrainState: ...


@runtime_checkable
class Strategy(Protocol):
    """How a state is placed: device, precision and distribution.

    Built-in strategies are `ftrain.SingleDevice`, `ftrain.DDP` and `ftrain.FSDP`.
    """

    @property
    def world_size(self) -> int: ...

    @property
    def rank(self) -> int: ...

    def setup(self, state: TrainState) -> TrainState:
        """Move, wrap or shard the model of a fresh state and return the placed state."""
        ...

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes (identity on one process)."""
        ...


@runtime_checkable
class CallbackWithMemory(Callback, Protocol):
    """A callback that keeps memory in ``state.callback_state[name]``.

    ``name`` is its key there (unique in a run: `fit` and `chain` refuse two callbacks with one
    name) and ``memory_type`` the type of what it keeps under it (`fit` refuses a state that holds
    something else under that name).
    """

    @property
    def name(self) -> str: ...

    @property
    def memory_type(self) -> type: ...
