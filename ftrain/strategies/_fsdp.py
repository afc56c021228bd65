"""`FSDP`: sharded data parallel training with FSDP2 (`torch.distributed.fsdp.fully_shard`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import attrs
import torch
from torch import nn

from .._errors import PlacementError
from ._dist import (
    all_reduce_sum,
    average_gradients,
    broadcast_module,
    init_from_env,
    joined,
    rebind_scheduler,
)
from ._precision import apply_true_precision, autocast_dtype, check_precision, true_dtype

if TYPE_CHECKING:
    from .._state import TrainState

__all__ = ["FSDP"]


@attrs.frozen
class FSDP:
    """Shard parameters, gradients and optimizer state across processes with FSDP2.

    `place` starts the process group like `DDP`, copies rank 0's weights to every rank, applies
    `fully_shard` to each submodule whose class is in ``shard`` (default: every direct child that
    has parameters) and then to the root, and rebuilds the optimizer over the sharded parameters
    with the same class, parameter groups and hyperparameters. The LR scheduler is re-pointed at
    the new optimizer. With named phases (`ftrain.Phase`: a GAN) each optimized part is sharded
    as a root of its own and every phase's optimizer is rebuilt; a frozen part stays whole on
    every process. Mixed precision is FSDP's policy: ``bf16-mixed`` computes in bfloat16 and
    reduces gradients in float32.

    Attributes:
        shard: module classes to shard individually (e.g. your transformer block); None shards
            every direct child that has parameters.
        reshard_after_forward: free gathered parameters after forward (saves memory, costs an
            all-gather in backward).
        precision: ``"32-true"``, ``"bf16-mixed"``, ``"16-mixed"``, ``"bf16-true"`` or
            ``"16-true"``.
        cpu_offload: keep sharded parameters and optimizer state in CPU memory.
        sharded_checkpoint: `ftrain.save` writes a directory in which every process stores
            its own shards (`torch.distributed.checkpoint`); False gathers everything into one
            file written by rank 0 (simple to copy, but the whole model passes through rank 0).
            Either loads into any number of processes, or into one. On one process the
            checkpoint is always a file.
        backend: as for `DDP`.
        timeout_s: as for `DDP`.
        rank: this process's rank, set by `place` (not an argument).
        world_size: the number of processes, set by `place` (not an argument).

    Example:
        >>> import ftrain
        >>> strategy = ftrain.FSDP(precision="bf16-mixed", reshard_after_forward=True)
        >>> state = ftrain.place(ftrain.testing.toy_state(), strategy)  # doctest: +SKIP
    """

    shard: Sequence[type[nn.Module]] | None = None
    reshard_after_forward: bool = True
    precision: str = attrs.field(default="32-true", validator=check_precision)
    cpu_offload: bool = False
    _sharded_checkpoint: bool = attrs.field(default=True, alias="sharded_checkpoint")
    backend: str | None = None
    timeout_s: float = 600.0
    rank: int = attrs.field(default=0, init=False)
    world_size: int = attrs.field(default=1, init=False)
    lockstep_eval: bool = attrs.field(default=True, init=False, repr=False)
    backward_inputs: bool = attrs.field(default=False, init=False, repr=False)
    """The forward runs through all-gathered copies of the sharded parameters."""
    """Evaluation runs the same number of forward passes on every rank (all-gathers need it)."""

    @property
    def sharded_checkpoint(self) -> bool:
        """`ftrain.save` writes a directory of shards: asked for, and on more than one process."""
        return self._sharded_checkpoint and self.world_size > 1

    def setup(self, state: TrainState) -> TrainState:
        from torch.distributed.fsdp import (
            CPUOffloadPolicy,
            MixedPrecisionPolicy,
            OffloadPolicy,
            fully_shard,
        )

        if any(phase.optimizer.state for phase in state.phases):
            msg = (
                "`place(state, FSDP())` needs a fresh optimizer: this one already has state. "
                "Place first, then `load` a checkpoint into the placed state."
            )
            raise PlacementError(msg)
        rank, world, device = init_from_env(self.backend, self.timeout_s)
        model = state.model
        apply_true_precision(model, self.precision)
        model.to(device)
        broadcast_module(model)
        names = {id(p): n for n, p in model.named_parameters()}
        groups = {
            phase.name: [
                ([names[id(p)] for p in g["params"]], {k: v for k, v in g.items() if k != "params"})
                for g in phase.optimizer.param_groups
            ]
            for phase in state.phases
        }
        mp_policy = MixedPrecisionPolicy(
            param_dtype=autocast_dtype(self.precision), reduce_dtype=torch.float32
        )
        offload = CPUOffloadPolicy() if self.cpu_offload else OffloadPolicy()
        for root in _roots(state):
            for module in [*self._targets(root), root]:  # children first, then the root
                fully_shard(
                    module,
                    reshard_after_forward=self.reshard_after_forward,
                    mp_policy=mp_policy,
                    offload_policy=offload,
                )
        params = dict(model.named_parameters())
        phases = []
        for phase in state.phases:
            optimizer = type(phase.optimizer)(
                [
                    {"params": [params[n] for n in group_names], **hp}
                    for group_names, hp in groups[phase.name]
                ]
            )
            rebind_scheduler(phase.scheduler, optimizer)
            phases.append(attrs.evolve(phase, optimizer=optimizer))
        return state.replace(
            strategy=joined(self, rank, world),
            device=device,
            phases=tuple(phases),
            wrapped=None,
            batch_dtype=true_dtype(self.precision),
        )

    def _targets(self, model: nn.Module) -> list[nn.Module]:
        """The submodules of one sharded root that get their own `fully_shard` call."""
        if self.shard is None:
            return [m for m in model.children() if any(True for _ in m.parameters())]
        kinds = tuple(self.shard)
        return [m for m in model.modules() if isinstance(m, kinds) and m is not model]

    def reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor)

    def sync_gradients(self, parameters: Iterable[torch.Tensor]) -> None:
        """Average the gradients FSDP did not already reduce (one all-reduce per dtype).

        Sharded parameters get their gradients reduce-scattered by FSDP's own backward hooks,
        whichever module the forward went through; only parameters outside the sharded model
        hold whole gradients to average.
        """
        # Imported here, like `fully_shard` in `setup` (which has already loaded it): it takes
        # most of a second to import, and only an FSDP run needs it.
        from torch.distributed.tensor import DTensor

        if self.world_size > 1:
            grads = [
                p.grad for p in parameters if p.grad is not None and not isinstance(p, DTensor)
            ]
            average_gradients(grads, self.world_size)

    def rewrap(self, model: nn.Module) -> nn.Module | None:
        """None: `fully_shard` changes the model itself, so the steps call ``state.model``."""
        return None

    def eval_module(self, state: TrainState) -> nn.Module:
        return state.module


def _roots(state: TrainState) -> list[nn.Module]:
    """The modules sharded as roots: the model, or each part a named phase optimizes (a frozen
    part stays whole on every process)."""
    if not state.phases[0].name:
        return [state.model]
    roots: dict[int, nn.Module] = {}
    for phase in state.phases:
        for name in phase.optimizes:
            part = state.model.get_submodule(name)
            roots.setdefault(id(part), part)
    return list(roots.values())
