"""A kit for testing training code: tiny states and batches, and assertions on steps.

Example:
    >>> import ftrain
    >>> state = ftrain.testing.toy_state(seed=1)
    >>> state, metrics = ftrain.train_step(state, ftrain.testing.toy_batch())
    >>> state.step
    1
"""

from __future__ import annotations

import torch
from torch import nn

from ._loss import supervised
from ._state import TrainState

__all__ = ["toy_batch", "toy_state"]


def toy_state(
    *,
    in_features: int = 2,
    out_features: int = 3,
    lr: float = 0.1,
    seed: int = 0,
    dropout: float = 0.0,
) -> TrainState:
    """A tiny regression state: ``Linear(in, out)`` (with optional dropout), SGD, MSE loss.

    The weights are drawn from a private generator seeded with ``seed``, so building one does not
    touch torch's global RNG.
    """
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 0.5)
        linear.bias.copy_(torch.randn(linear.bias.shape, generator=g) * 0.1)
    model: nn.Module = linear if dropout == 0 else nn.Sequential(nn.Dropout(dropout), linear)
    return TrainState.create(
        model=model,
        optimizer=lambda params: torch.optim.SGD(params, lr=lr),
        loss_fn=supervised(nn.MSELoss()),
        seed=seed,
    )


def toy_batch(
    n: int = 4, *, in_features: int = 2, out_features: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic ``(inputs, targets)`` batch for `toy_state`."""
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, in_features, generator=g)
    return x, torch.randn(n, out_features, generator=g)
