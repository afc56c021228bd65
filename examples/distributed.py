"""The same training on one process or many: pick the strategy with a flag, launch with torchrun.

    python examples/distributed.py                                   # one process
    torchrun --nproc_per_node=2 examples/distributed.py --strategy ddp
    torchrun --nproc_per_node=2 examples/distributed.py --strategy fsdp
    # several machines (run on each; --node_rank 0 on the first):
    torchrun --nnodes=2 --nproc_per_node=8 --node_rank=0 \\
        --rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 examples/distributed.py --strategy fsdp

The script has no `.to()`, no `DistributedSampler` and no rank checks: `place` starts the process
group from torchrun's environment and `fit` splits the data, averages the metrics across
processes and prints on rank 0 only. ``--batch-size`` is the global batch, split over processes.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ftrain
from ftrain.callbacks import Checkpoint, EarlyStopping, ProgressBar


def make_data(n: int = 4096, seed: int = 0) -> TensorDataset:
    """A synthetic 10-class problem made in code (no download)."""
    centers = torch.randn(10, 32, generator=torch.Generator().manual_seed(1234)) * 0.5
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = centers[y] + torch.randn(n, 32, generator=g)
    return TensorDataset(x, y)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--strategy", choices=["single", "ddp", "fsdp"], default="single")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64, help="global batch size")
    p.add_argument("--checkpoints", default=None, help="a directory: save and resume there")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    torch.manual_seed(0)  # the same initial weights everywhere (DDP/FSDP also sync them)
    state = ftrain.TrainState.create(
        model=nn.Sequential(
            nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
        ),
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
        seed=0,
    )
    strategy = {
        "single": ftrain.SingleDevice(precision=args.precision),
        "ddp": ftrain.DDP(precision=args.precision),
        "fsdp": ftrain.FSDP(precision=args.precision),
    }[args.strategy]
    state = ftrain.place(state, strategy)

    per_process = args.batch_size // state.world_size
    train = DataLoader(make_data(), batch_size=per_process, shuffle=True)
    val = DataLoader(make_data(n=1024, seed=1), batch_size=256)
    callbacks = [EarlyStopping(monitor="val_acc", patience=2)]
    if not args.no_progress:
        callbacks.append(ProgressBar())
    if args.checkpoints:
        callbacks.append(Checkpoint(args.checkpoints))
    state, history = ftrain.fit(state, (train, val), callbacks, max_epochs=args.epochs,
                                resume=args.checkpoints)  # fmt: skip
    if state.rank == 0 and history:
        print(
            f"{args.strategy} on {state.world_size} process(es): {state.step} steps, "
            f"val_acc {history[-1]['val_acc']:.4f}"
        )


if __name__ == "__main__":
    main()
