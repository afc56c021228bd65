"""`DDP`: data parallel training with `DistributedDataParallel`, launched by torchrun."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ._dist import all_reduce_sum, average_gradients, broadcast_module, init_from_env, joined
from ._placement import place_on
from ._precision import check_precision

if TYPE_CHECKING:
    from .._state import TrainState

__all__ = ["DDP"]


@attrs.frozen
class DDP:
    """Replicate the model on every process and average gradients (`DistributedDataParallel`).

    `place` starts the process group from torchrun's environment when none is running (nccl on
    CUDA, gloo on CPU), puts each process on ``cuda:LOCAL_RANK`` (or the CPU) and wraps the model.
    Parameters keep their identity, so the optimizer stays valid; ``state.model`` stays the
    unwrapped module (checkpoint keys carry no ``module.`` prefix). A state with named phases
    (`ftrain.Phase`: a GAN) is not wrapped: rank 0's weights are broadcast once, every part is
    called as it is, and each phase averages its own parameters' gradients right after its
    backward (`sync_gradients`), so no ``find_unused_parameters`` is needed and a frozen part is
    never synced. Buffers (BatchNorm statistics) then stay per process. Every loader gets an
    `EpochSampler` (a `DistributedSampler`) from `fit`; metrics are averaged across processes at
    each log interval; only rank 0 prints and writes.

    Attributes:
        precision: as for `SingleDevice`.
        find_unused_parameters: passed to `DistributedDataParallel`.
        broadcast_buffers: passed to `DistributedDataParallel`.
        gradient_as_bucket_view: passed to `DistributedDataParallel`.
        static_graph: passed to `DistributedDataParallel`.
        backend: the process-group backend (default: nccl on CUDA, gloo otherwise).
        timeout_s: the process-group timeout: a collective stuck longer than this fails the job.
        rank: this process's rank, set by `place` (not an argument).
        world_size: the number of processes, set by `place` (not an argument).

    Example:
        >>> import ftrain
        >>> state = ftrain.place(ftrain.testing.toy_state(), ftrain.DDP())  # doctest: +SKIP
        >>> # run under: torchrun --nproc_per_node=2 train.py
    """

    precision: str = attrs.field(default="32-true", validator=check_precision)
    find_unused_parameters: bool = False
    broadcast_buffers: bool = True
    gradient_as_bucket_view: bool = True
    static_graph: bool = False
    backend: str | None = None
    timeout_s: float = 600.0
    rank: int = attrs.field(default=0, init=False)
    world_size: int = attrs.field(default=1, init=False)
    lockstep_eval: bool = attrs.field(default=False, init=False, repr=False)
    backward_inputs: bool = attrs.field(default=True, init=False, repr=False)
    sharded_checkpoint: bool = attrs.field(default=False, init=False, repr=False)

    def setup(self, state: TrainState) -> TrainState:
        rank, world, device = init_from_env(self.backend, self.timeout_s)
        state = place_on(state, joined(self, rank, world), device, self.precision)
        if state.wrapped is None:  # named phases: no wrapper to broadcast rank 0's weights
            broadcast_module(state.model)
        return state

    def rewrap(self, model: nn.Module) -> nn.Module:
        """Wrap ``model`` in `DistributedDataParallel` (it broadcasts rank 0's weights)."""
        device = next(model.parameters()).device
        # torch 2.14 renamed `broadcast_buffers` to `forward_sync_buffers`; older ones lack it.
        sync = (
            "forward_sync_buffers"
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else "broadcast_buffers"
        )
        return DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=self.find_unused_parameters,
            gradient_as_bucket_view=self.gradient_as_bucket_view,
            static_graph=self.static_graph,
            **{sync: self.broadcast_buffers},  # type: ignore[arg-type]
        )

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor)

    def sync_gradients(self, parameters: Iterable[torch.Tensor]) -> None:
        """Average gradients that did not pass through the wrapper (one all-reduce per dtype)."""
        if self.world_size > 1:
            average_gradients([p.grad for p in parameters if p.grad is not None], self.world_size)

    def eval_module(self, state: TrainState) -> nn.Module:
        """The unwrapped model: the wrapper's first forward after training would broadcast rank
        0's buffers (BatchNorm statistics) over every other rank's, changing the state that
        evaluation only measures."""
        return state.model
