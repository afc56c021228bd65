"""Deterministic settings for every test, and the small fixtures most tests build on."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ftrain

os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
torch.use_deterministic_algorithms(True)
torch.set_num_threads(1)


@pytest.fixture
def tiny_state() -> ftrain.TrainState:
    """A 2 -> 3 linear regression state with SGD: the smallest thing that trains."""
    return ftrain.testing.toy_state()


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return ftrain.testing.toy_batch()


def make_classifier(seed: int = 0, dropout: float = 0.1, lr: float = 1e-2) -> ftrain.TrainState:
    """A small MLP classifier with dropout, AdamW and a per-step LR schedule."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))
    return ftrain.TrainState.create(
        model=model,
        optimizer=lambda p: torch.optim.AdamW(p, lr=lr),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5),
        seed=seed,
    )


def make_loaders(n: int = 96, batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    """Shuffled train and sequential val loaders over a separable 10-feature problem."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, 10, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=batch_size, shuffle=True), DataLoader(ds, batch_size=32)


@pytest.fixture
def classifier() -> ftrain.TrainState:
    return make_classifier()


@pytest.fixture
def loaders() -> tuple[DataLoader, DataLoader]:
    return make_loaders()
