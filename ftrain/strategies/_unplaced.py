"""`Unplaced`: the strategy of a state that was never placed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs
import torch
from torch import nn

if TYPE_CHECKING:
    from .._state import TrainState

__all__ = ["OneProcess", "Unplaced"]


@attrs.frozen
class OneProcess:
    """What every strategy that trains in this one process shares (`Unplaced`, `SingleDevice`):
    world size 1, no collectives, and the evaluation module is the one the steps call."""

    world_size: int = attrs.field(default=1, init=False, repr=False)
    rank: int = attrs.field(default=0, init=False, repr=False)
    lockstep_eval: bool = attrs.field(default=False, init=False, repr=False)
    backward_inputs: bool = attrs.field(default=True, init=False, repr=False)
    sharded_checkpoint: bool = attrs.field(default=False, init=False, repr=False)

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def sync_gradients(self, parameters: Iterable[torch.Tensor]) -> None:
        pass

    def eval_module(self, state: TrainState) -> nn.Module:
        return state.module


@attrs.frozen
class Unplaced(OneProcess):
    """The strategy of a never-placed state: one process, wherever the model already is.

    `TrainState.create` gives every new state this strategy, so ``state.strategy`` is always a
    `ftrain.Strategy`. `ftrain.place` accepts only a state that holds it (a state is placed
    once), and placing with ``Unplaced()`` leaves the state where it is.

    Example:
        >>> import ftrain
        >>> state = ftrain.testing.toy_state()
        >>> state.strategy, state.world_size, state.rank
        (Unplaced(), 1, 0)
    """

    def setup(self, state: TrainState) -> TrainState:
        """Return ``state`` as it is: the model stays where it is, in full precision."""
        return state

    def rewrap(self, model: nn.Module) -> nn.Module | None:
        return None
