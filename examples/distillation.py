"""Knowledge distillation with `ftrain.fit`: a frozen teacher in the state, a small student.

The teacher (a CNN trained first on scikit-learn's digits) and the student (a small MLP) are two
parts of one `TrainState`; only the student has a phase, so the teacher is frozen: it gets no
gradients, no optimizer and no ``requires_grad`` bookkeeping by hand, and it is checkpointed with
the run. The student learns from the teacher's softened outputs and the labels (Hinton et al.).

    python examples/distillation.py              # offline, a few seconds on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ftrain


def digits(batch_size: int) -> tuple[DataLoader, DataLoader]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("This example needs scikit-learn: pip install 'torch-ftrain[examples]'")
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, val = order[:1400], order[1400:]
    return (
        DataLoader(TensorDataset(x[train], y[train]), batch_size=batch_size, shuffle=True),
        DataLoader(TensorDataset(x[val], y[val]), batch_size=256),
    )


def teacher() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * 64, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


def student() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def distill(temperature: float, alpha: float):
    """The student's loss: KL to the teacher's softened outputs, plus cross-entropy on labels."""

    def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> ftrain.Loss:
        x, y = batch
        with torch.no_grad():
            soft_targets = (model["teacher"](x) / temperature).log_softmax(-1)
        logits = model["student"](x)
        kl = nn.functional.kl_div(
            (logits / temperature).log_softmax(-1), soft_targets, log_target=True,
            reduction="batchmean",
        ) * temperature**2  # fmt: skip
        ce = nn.functional.cross_entropy(logits, y)
        acc = (logits.argmax(-1) == y).float().mean()
        loss = alpha * kl + (1 - alpha) * ce
        return ftrain.Loss(loss, metrics={"kl": kl.detach(), "ce": ce.detach(), "acc": acc})

    return loss_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--teacher-epochs", type=int, default=4)
    parser.add_argument("--limit-batches", type=int, default=None)
    args = parser.parse_args()
    train, val = digits(64)
    torch.manual_seed(0)

    # 1. The teacher, trained the ordinary way (one optimizer).
    big = teacher()
    teaching = ftrain.TrainState.create(
        model=big,
        optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
    )
    teaching, history = ftrain.fit(
        teaching, (train, val), max_epochs=args.teacher_epochs,
        limit_train_batches=args.limit_batches,
    )  # fmt: skip
    print(f"teacher: val_acc {history[-1]['val_acc']:.3f}")

    # 2. The student, with the teacher frozen inside the same state.
    state = ftrain.TrainState.create(
        model={"teacher": teaching.model, "student": student()},
        phases=[
            ftrain.Phase(
                "student",
                optimizes="student",
                optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
                loss_fn=distill(temperature=4.0, alpha=0.7),
            )
        ],
    )
    state, history = ftrain.fit(
        state, (train, val), max_epochs=args.epochs, limit_train_batches=args.limit_batches
    )
    last = history[-1]
    print(
        f"distillation: {state.step} steps, student val_acc {last['val_student_acc']:.3f} "
        f"(kl {last['val_student_kl']:.3f}); the teacher got no gradients: "
        f"{all(p.grad is None for p in state.model['teacher'].parameters())}"
    )


if __name__ == "__main__":
    main()
