"""Process-group plumbing shared by `DDP` and `FSDP`: start from torchrun's environment."""

from __future__ import annotations

import atexit
import gc
import os
import warnings
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import torch
import torch.distributed as dist
from torch import nn
from torch.optim import Optimizer

from .._errors import PlacementError

if TYPE_CHECKING:
    from torch._C._distributed_c10d import Store

__all__ = [
    "all_reduce_sum",
    "average_gradients",
    "broadcast_module",
    "init_from_env",
    "joined",
    "rebind_scheduler",
]

S = TypeVar("S", bound=attrs.AttrsInstance)


def init_from_env(backend: str | None, timeout_s: float) -> tuple[int, int, torch.device]:
    """Join (or start) the default process group; return ``(rank, world_size, device)``.

    The group is started from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``) with nccl on CUDA and gloo otherwise, unless one is running.
    """
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        missing = [
            k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
        ]
        if missing:
            msg = (
                f"Distributed placement needs the environment torchrun sets ({', '.join(missing)} "
                "missing). Launch with: torchrun --nproc_per_node=N your_script.py "
                "(or start a process group yourself before `place`)."
            )
            raise PlacementError(msg)
        if cuda:
            torch.cuda.set_device(local_rank)
        backend = backend or ("nccl" if cuda else "gloo")
        timeout = timedelta(seconds=timeout_s)
        store = _restart_scoped_store(timeout)
        if store is None:
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            dist.init_process_group(
                backend=backend,
                store=store,
                rank=int(os.environ["RANK"]),
                world_size=int(os.environ["WORLD_SIZE"]),
                timeout=timeout,
            )
        # The group ftrain started, ftrain tears down: left to interpreter shutdown, the
        # backend's threads can abort the process ("terminate called without an active
        # exception") after training finished.
        atexit.register(_destroy_group)
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return dist.get_rank(), dist.get_world_size(), device


def joined(strategy: S, rank: int, world_size: int) -> S:
    """A copy of a frozen strategy recording where `init_from_env` put this process.

    ``rank`` and ``world_size`` are outputs of placement, not arguments (their fields have
    ``init=False``), so they are set on the copy the way attrs' own ``__init__`` sets fields.
    """
    placed = attrs.evolve(strategy)  # type: ignore[misc]  # mypy cannot see S's fields
    object.__setattr__(placed, "rank", rank)
    object.__setattr__(placed, "world_size", world_size)
    return placed


def _restart_scoped_store(timeout: timedelta) -> Store | None:
    """The torchrun agent's store, with keys scoped to this restart; ``None`` to let torch decide.

    torchrun (c10d rendezvous) hands every attempt of a restarted job the same store, so the
    keys a killed attempt wrote (each rank's address) are still there when the next attempt
    connects: a rank can read its peer's old address and fail with "Connection refused"
    (pytorch/pytorch#135712). On one node every worker is started by the same agent and sees
    the same ``TORCHELASTIC_RESTART_COUNT``, so prefixing the keys with it gives each attempt
    a clean namespace. Across several nodes the agents count restarts independently; there
    ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` (a fresh store per attempt) is the remedy.
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or "TORCHELASTIC_RESTART_COUNT" not in env:
        return None
    if env.get("LOCAL_WORLD_SIZE") != env["WORLD_SIZE"]:
        if env["TORCHELASTIC_RESTART_COUNT"] != "0":
            warnings.warn(
                "This is a restart of a multi-node torchrun job whose agents share one store "
                "across restarts; a restarted group can read the previous attempt's addresses "
                "and fail to connect (pytorch/pytorch#135712). If it does, launch torchrun "
                "with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1.",
                stacklevel=4,
            )
        return None
    from torch._C._distributed_c10d import PrefixStore, TCPStore

    store = TCPStore(
        env["MASTER_ADDR"],
        int(env["MASTER_PORT"]),
        int(env["WORLD_SIZE"]),
        is_master=False,
        timeout=timeout,
    )
    return PrefixStore(f"ftrain/restart_{env['TORCHELASTIC_RESTART_COUNT']}", store)


def _destroy_group() -> None:
    if dist.is_initialized():
        # Objects in reference cycles that still hold the group's work (torch's distributed
        # checkpointing leaves some) must go while the group exists: freed after it, at
        # interpreter shutdown, they can abort the process.
        gc.collect()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes (in place) and return it."""
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(grads: Sequence[torch.Tensor], world_size: int) -> None:
    """Replace each of ``grads`` by its mean over all processes, in place.

    The gradients are flattened into one buffer per device and dtype, so the whole set costs one
    all-reduce each (like DDP's buckets) rather than one per parameter. Every process must pass
    gradients of the same shapes in the same order.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for grad in grads:
        groups.setdefault((grad.device, grad.dtype), []).append(grad)
    for group in groups.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(world_size)
        for grad, chunk in zip(group, torch.split(flat, [g.numel() for g in group]), strict=True):
            grad.copy_(chunk.view_as(grad))


def broadcast_module(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank, so all start from the same weights."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if isinstance(tensor, torch.Tensor):
                dist.broadcast(tensor, src=0)


def rebind_scheduler(scheduler: Any, optimizer: Optimizer) -> None:
    """Point an LR scheduler at a rebuilt optimizer (same param-group structure)."""
    if scheduler is None:
        return
    scheduler.optimizer = optimizer
    step = optimizer.step
    if not hasattr(step, "_wrapped_by_lr_sched"):
        # The scheduler checks that optimizer.step ran before it; keep that bookkeeping working.
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            optimizer._opt_called = True  # type: ignore[attr-defined]
            return step(*args, **kwargs)

        wrapper._wrapped_by_lr_sched = True  # type: ignore[attr-defined]
        optimizer.step = wrapper  # type: ignore[method-assign]
