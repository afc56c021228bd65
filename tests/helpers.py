"""Builders and comparisons the tests share (fixtures and hooks stay in conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ftrain


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


def params(state: ftrain.TrainState) -> list[torch.Tensor]:
    """Copies of the model's parameters, to compare with after a step."""
    return [p.detach().clone() for p in state.model.parameters()]


ROOT = Path(__file__).resolve().parents[1]


def run_torchrun(
    script: str | Path,
    *args: str,
    nproc: int = 2,
    timeout: float = 180,
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` under torchrun on ``nproc`` local processes (gloo on the loopback).

    The job gets a session of its own, so a timeout kills torchrun *and* its workers (no orphans
    left), and the test fails with the end of their stderr.
    """
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *extra, str(script), *args]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        job = f"{Path(script).name} {' '.join(args)}"
        pytest.fail(f"torchrun {job} timed out after {timeout} s:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
