"""The word-level LSTM language model: a carry threaded through a pure step, resumed exactly."""

import importlib.util
from pathlib import Path

import pytest
import torch
from helpers import run_torchrun

import ftrain

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--sentences", "500", "--batch-size", "8", "--bptt", "10", "--epochs", "2"]


def example():
    spec = importlib.util.spec_from_file_location("lstm_lm", ROOT / "examples" / "lstm_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_step_is_pure_and_carries_the_hidden_state_detached():
    lm = example()
    args = lm.argparse.Namespace(sentences=200, batch_size=8, bptt=10, lr=1e-2, seed=0, ddp=False)
    state, train, _ = lm.build(args)
    batches = iter(train)
    state, _ = ftrain.train_step(state, next(batches))
    h, c = state.carry
    assert h.shape == (1, 8, lm.HIDDEN) and not h.requires_grad and h.grad_fn is None
    assert h.abs().sum() > 0  # the hidden state after the first window, carried on
    ftrain.testing.assert_pure_step(state, next(batches))


def test_kill_and_resume_mid_epoch_is_bit_exact_on_one_process(tmp_path):
    lm = example()
    straight = lm.main([*SMALL])
    ckpt = tmp_path / "ckpt"
    first = lm.main([*SMALL, "--max-steps", "13", "--ckpt", str(ckpt)])
    assert first.epoch_batch not in (0, None) and first.step == 13  # stopped mid-epoch
    resumed = lm.main([*SMALL, "--ckpt", str(ckpt)])  # a new state, filled from the file
    ftrain.testing.assert_states_equal(straight, resumed)
    for a, b in zip(straight.carry, resumed.carry, strict=True):
        assert torch.equal(a, b)


def torchrun(args, timeout=240):
    proc = run_torchrun(ROOT / "examples" / "lstm_lm.py", "--ddp", *args, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.timeout(600)
def test_kill_and_resume_mid_epoch_is_bit_exact_on_two_processes(tmp_path):
    torchrun([*SMALL, "--save", str(tmp_path / "straight.ckpt")])
    ckpt = tmp_path / "ckpt"
    torchrun([*SMALL, "--max-steps", "7", "--ckpt", str(ckpt)])
    torchrun([*SMALL, "--ckpt", str(ckpt), "--save", str(tmp_path / "resumed.ckpt")])
    a = ftrain.read_checkpoint(tmp_path / "straight.ckpt")
    b = ftrain.read_checkpoint(tmp_path / "resumed.ckpt")
    assert a["meta"]["step"] == b["meta"]["step"] > 7
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["carry"]["world_size"] == b["carry"]["world_size"] == 2
    ranks_a, ranks_b = a["carry"]["ranks"], b["carry"]["ranks"]
    for ra, rb in zip(ranks_a, ranks_b, strict=True):  # every rank's own carry
        assert all(torch.equal(x, y) for x, y in zip(ra[0], rb[0], strict=True))
    assert not torch.equal(ranks_a[0][0][0], ranks_a[1][0][0])  # the carries differ by rank
    # Each process's carry belongs to its rank's columns: one process refuses it.
    lm = example()
    args = lm.argparse.Namespace(sentences=500, batch_size=8, bptt=10, lr=1e-2, seed=0, ddp=False)
    template, _, _ = lm.build(args)
    with pytest.raises(ftrain.CheckpointError, match="carry"):
        ftrain.load(template, tmp_path / "resumed.ckpt")
