"""Train a small CNN on handwritten digits with `ftrain.fit` and the everyday batteries.

By default it runs offline on scikit-learn's digits (1,797 real 8x8 handwritten digits shipped
inside scikit-learn); ``--dataset mnist`` uses torchvision's MNIST (downloaded when online).
It uses early stopping, a progress bar, a model summary, gradient clipping and accumulation, and
writes ``metrics.csv``, TensorBoard events and ``curves.png`` into ``--out``. ``--ema DECAY``
also keeps an exponential moving average of the weights and validates on both.

    python examples/mnist.py                     # digits, a few seconds on 2 CPU cores
    python examples/mnist.py --ema 0.99          # ... and val_ema_acc, on the averaged weights
    python examples/mnist.py --dataset mnist     # MNIST, needs a download the first time
    tensorboard --logdir runs/mnist/tensorboard  # look at the curves
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ftrain
from ftrain.callbacks import (
    CSVLogger,
    EarlyStopping,
    ModelSummary,
    ProgressBar,
    TensorBoardLogger,
)


def build_model(num_classes: int = 10) -> nn.Module:
    """A small CNN that works for 8x8 digits and 28x28 MNIST alike."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveMaxPool2d(4), nn.Flatten(), nn.Dropout(0.25),
        nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.25),
        nn.Linear(128, num_classes),
    )  # fmt: skip


def load_digits(batch_size: int, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """scikit-learn's 8x8 digits as (train, val) loaders: an 80/20 split fixed by ``seed``."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        sys.exit("The digits dataset needs scikit-learn: pip install 'torch-ftrain[examples]'")
    data = sk_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    train, val = order[:cut], order[cut:]
    return (
        DataLoader(TensorDataset(x[train], y[train]), batch_size=batch_size, shuffle=True),
        DataLoader(TensorDataset(x[val], y[val]), batch_size=256),
    )


def load_mnist(batch_size: int, root: str) -> tuple[DataLoader, DataLoader]:
    """torchvision's MNIST (60k train / 10k test), downloaded to ``root`` when missing."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    try:
        train = datasets.MNIST(root, train=True, download=True, transform=tf)
        val = datasets.MNIST(root, train=False, download=True, transform=tf)
    except (OSError, RuntimeError) as err:
        sys.exit(
            f"Could not load MNIST into {root!r} ({err}). It needs a download the first time; "
            "run online once, or use the offline default: --dataset digits."
        )
    return (
        DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=2),
        DataLoader(val, batch_size=1000, num_workers=2),
    )


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    p.add_argument("--data-dir", default="data")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--limit-batches", type=int, default=None, help="batches per epoch (quick runs)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step")
    p.add_argument("--clip", type=float, default=1.0, help="max gradient norm")
    p.add_argument("--ema", type=float, default=None, help="EMA decay (validate on both)")
    p.add_argument("--out", default="runs/mnist", help="where logs and curves.png go")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)  # model initialisation; training randomness comes from the state
    if args.dataset == "digits":
        loaders = load_digits(args.batch_size, args.seed)
    else:
        loaders = load_mnist(args.batch_size, args.data_dir)
    state = ftrain.TrainState.create(
        model=build_model(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
        scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs),
        scheduler_interval="epoch",
        seed=args.seed,
    )
    state = ftrain.place(state, args.device)
    callbacks = [
        ModelSummary(),
        EarlyStopping(monitor="val_acc", patience=4),
        CSVLogger(args.out),
        TensorBoardLogger(f"{args.out}/tensorboard"),
    ]
    if not args.no_progress:
        callbacks.append(ProgressBar())
    # Optional features of a step are transforms of the step, not flags on fit.
    step = ftrain.with_accumulation(
        ftrain.with_grad_clip(max_norm=args.clip), every=args.accumulate
    )
    val_weights: tuple[str, ...] = ("model",)
    if args.ema is not None:  # the model trains as before; the average is kept beside it
        step = ftrain.with_ema(step, decay=args.ema)
        val_weights = ("model", "ema")

    start = time.perf_counter()
    state, history = ftrain.fit(
        state,
        loaders,
        callbacks,
        step_fn=step,
        val_weights=val_weights,
        max_epochs=args.epochs,
        limit_train_batches=args.limit_batches,
        log_every_n_steps=10,
    )
    ftrain.plot_history(history, f"{args.out}/curves.png")
    best = max(row.get("val_acc", 0.0) for row in history)
    ema = ""
    if args.ema is not None:
        best_ema = max(row.get("val_ema_acc", 0.0) for row in history)
        ema = f"; val_ema_acc {history[-1]['val_ema_acc']:.4f} (best {best_ema:.4f})"
    print(
        f"{args.dataset}: {state.epoch} epochs, {state.step} steps in "
        f"{time.perf_counter() - start:.1f} s on {state.device}; "
        f"val_acc {history[-1]['val_acc']:.4f} (best {best:.4f}){ema}"
    )
    return float(history[-1]["val_acc"])


if __name__ == "__main__":
    main()
