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
    "EpochAwareStep",
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
class EpochAwareStep(StepFn, Protocol):
    """A step with work left at an epoch's end, such as a short last gradient-accumulation group.

    `ftrain.train_epoch` calls ``finish_epoch`` once after the last batch of a completed epoch
    (not when the epoch stops early), before the epoch's scheduler step. `ftrain.Step` is one.
    """

    def finish_epoch(self, state: TrainState, /) -> TrainState:
        """Finish the epoch's pending work (apply a short last group) and return the state."""
        ...


@runtime_checkable
class Strategy(Protocol):
    """Everything ftrain asks of a placement: how a state is placed, and what that means later.

    Built-in strategies are `ftrain.SingleDevice`, `ftrain.DDP`, `ftrain.FSDP`, and
    `ftrain.strategies.Unplaced`, the strategy of a state that was never placed. A strategy of
    your own implements every member below (a frozen attrs class is the usual shape); ftrain never
    probes for optional attributes, so nothing outside this list changes how it treats a state.

    ``world_size`` and ``rank`` describe the placed state: a strategy's ``setup`` returns the
    state with a strategy value whose two fields say where it runs (read as ``state.world_size``
    and ``state.rank``). They are read on every step, so keep them plain attributes.
    """

    @property
    def world_size(self) -> int:
        """The number of processes training together (1 on one process)."""
        ...

    @property
    def rank(self) -> int:
        """This process's index among them (0 on one process)."""
        ...

    @property
    def lockstep_eval(self) -> bool:
        """Every process must run the same number of forward passes in evaluation.

        True for sharded models (FSDP all-gathers parameters in every forward): `eval_epoch`
        then repeats the last batch's forward on processes with fewer batches, dropping the
        results.
        """
        ...

    @property
    def backward_inputs(self) -> bool:
        """The optimizers' parameters are the leaves of the autograd graph.

        True for strategies that keep whole parameters: `forward_backward` then backpropagates
        with ``inputs=`` the phase's parameters, so no other parameter gets a gradient. False
        where the forward runs through gathered copies (FSDP): a phase's backward then keeps
        the other parameters' gradients aside and puts them back after it.
        """
        ...

    @property
    def sharded_checkpoint(self) -> bool:
        """`ftrain.save` writes a directory in which every process stores its own shards."""
        ...

    def setup(self, state: TrainState, /) -> TrainState:
        """Move, wrap or shard the model of a never-placed state; return the placed state.

        The returned state records the strategy value that describes the placement (with its
        ``rank`` and ``world_size``), the device batches move to, the module the steps call
        (``wrapped``), the autocast and batch dtypes and the gradient scaler.
        """
        ...

    def reduce_sum(self, tensor: torch.Tensor, /) -> torch.Tensor:
        """Sum a tensor over all processes and return the sum (identity on one process)."""
        ...

    def sync_gradients(self, parameters: Iterable[torch.Tensor], /) -> None:
        """Average the gradients of ``parameters`` over all processes, in place.

        For steps that backpropagate through ``state.model`` rather than ``state.module``, so
        that no wrapper synchronised the gradients. Every process must pass the same parameters,
        each with or without a gradient alike. A no-op on one process.
        """
        ...

    def rewrap(self, model: nn.Module, /) -> nn.Module | None:
        """The module the steps call for a copy of ``model`` (`ftrain.fork`); None: the model."""
        ...

    def eval_module(self, state: TrainState, /) -> nn.Module:
        """The module evaluation forwards call: the wrapper, unless calling it changes the state.

        Evaluation only measures, and processes may evaluate different numbers of batches. DDP
        answers the unwrapped model: its wrapper's forward broadcasts rank 0's buffers over
        every other rank's.
        """
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
