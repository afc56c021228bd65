"""Precision and compilation through placement."""

import math

import pytest
import torch
from torch import nn

import ftrain
from ftrain import SingleDevice
from ftrain.testing import toy_batch, toy_state


def _mlp_state(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    return ftrain.TrainState.create(
        model=model,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
        seed=seed,
    )


def _batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(32, 8, generator=g), torch.randint(0, 4, (32,), generator=g)


def _losses(state, steps=8):
    out = []
    for _ in range(steps):
        state, m = ftrain.train_step(state, _batch())
        out.append(float(m["loss"]))
    return state, out


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true"])
def test_reduced_precision_trains_close_to_fp32(precision):
    _, ref = _losses(ftrain.place(_mlp_state(), "cpu"))
    state, got = _losses(ftrain.place(_mlp_state(), SingleDevice("cpu", precision=precision)))
    assert got[-1] < got[0]
    assert got == pytest.approx(ref, rel=0.05, abs=0.02)
    weights = next(state.model.parameters()).dtype
    assert weights == (torch.bfloat16 if precision == "bf16-true" else torch.float32)


def test_16_mixed_keeps_a_grad_scaler_in_the_state_and_reports_skipped_steps():
    state = ftrain.place(toy_state(), SingleDevice("cpu", precision="16-mixed"))
    assert isinstance(state.scaler, torch.amp.GradScaler)
    state.scaler._init_scale = 2.0**40  # certain fp16 overflow at first
    before = [p.detach().clone() for p in state.model.parameters()]
    state, m = ftrain.train_step(state, toy_batch())
    assert float(m["skipped"]) == 1.0 and state.step == 1
    assert all(torch.equal(a, b) for a, b in zip(before, state.model.parameters(), strict=True))
    for _ in range(40):
        state, m = ftrain.train_step(state, toy_batch())
    assert float(m["skipped"]) == 0.0 and math.isfinite(float(m["loss"]))


def test_scaler_state_is_checkpointed(tmp_path):
    state = ftrain.place(toy_state(), SingleDevice("cpu", precision="16-mixed"))
    state, _ = ftrain.train_step(state, toy_batch())
    path = ftrain.save(state, tmp_path / "a.ckpt")
    loaded = ftrain.load(ftrain.place(toy_state(), SingleDevice("cpu", precision="16-mixed")), path)
    assert loaded.scaler.state_dict() == state.scaler.state_dict()


@pytest.mark.timeout(600)
def test_compiled_step_trains_like_eager_and_checkpoints_without_prefix(tmp_path):
    torch.use_deterministic_algorithms(False)  # inductor's CPU kernels are not all flagged
    try:
        _, eager = _losses(ftrain.place(_mlp_state(), "cpu"), steps=5)
        state, compiled = _losses(ftrain.place(_mlp_state(), SingleDevice("cpu", compile=True)), 5)
    finally:
        torch.use_deterministic_algorithms(True)
    assert state.wrapped is not None and state.module is state.wrapped
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-5)
    path = ftrain.save(state, tmp_path / "c.ckpt")
    keys = ftrain.read_checkpoint(path)["model"].keys()
    assert not any("_orig_mod" in k for k in keys)
    copy = ftrain.fork(state)
    assert copy.wrapped is not state.wrapped and copy.wrapped is not None
