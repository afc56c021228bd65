"""Deterministic settings for every test, and the small fixtures most tests build on.

Builders and comparisons that tests import live in ``helpers.py``.
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers import make_classifier, make_loaders
from torch.utils.data import DataLoader

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


@pytest.fixture
def classifier() -> ftrain.TrainState:
    return make_classifier()


@pytest.fixture
def loaders() -> tuple[DataLoader, DataLoader]:
    return make_loaders()
