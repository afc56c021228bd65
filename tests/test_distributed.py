"""DDP and FSDP under torchrun (2 processes, gloo on CPU) train like one process."""

import json
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from helpers import run_torchrun
from scripts import dist_worker, gan

import ftrain

ROOT = Path(__file__).resolve().parents[1]

TIMING = ("epoch_time", "samples_per_sec")


def torchrun(mode, out, nproc=2, timeout=180, extra=()):
    return run_torchrun(
        dist_worker.__file__, mode, str(out), nproc=nproc, timeout=timeout, extra=extra
    )


def single_process_reference():
    train, val = dist_worker.make_loaders(16)
    logs = []
    record = ftrain.on(ftrain.IntervalEnd, lambda s, e: (logs.append(e.metrics), s)[1])
    state, history = ftrain.fit(
        dist_worker.make_state(), (train, val), [record], max_epochs=3, log_every_n_steps=3
    )
    return state, history, logs


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, mode):
    proc = torchrun(mode, tmp_path / mode)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / f"{mode}.json").read_text())
    params = torch.load(tmp_path / f"{mode}.pt", weights_only=True)
    state, history, logs = single_process_reference()
    assert result["world"] == 2 and result["step"] == state.step == 18
    for k, v in state.model.state_dict().items():
        torch.testing.assert_close(params[k], v, rtol=0, atol=1e-5)
    assert len(result["history"]) == len(history) == 3
    for got, want in zip(result["history"], history, strict=True):
        for k in set(want) - set(TIMING):
            assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    assert len(result["logs"]) == len(logs) == 6
    for got, want in zip(result["logs"], logs, strict=True):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["gan-ddp", "gan-fsdp"])
def test_a_gan_on_two_processes_equals_one_with_the_same_global_batch(tmp_path, mode):
    proc = torchrun(mode, tmp_path / mode)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / f"{mode}.json").read_text())
    params = torch.load(tmp_path / f"{mode}.pt", weights_only=True)
    state, history = ftrain.fit(
        gan.make_pair_gan(), gan.pair_loader(16), max_epochs=2, log_every_n_steps=3
    )
    assert result["world"] == 2 and result["step"] == state.step == 12
    for k, v in state.model.state_dict().items():
        torch.testing.assert_close(params[k], v, rtol=0, atol=1e-5)
    for got, want in zip(result["history"], history, strict=True):
        for k in ("train_d_loss", "train_g_loss"):
            assert got[k] == pytest.approx(want[k], abs=1e-5), k


@pytest.mark.timeout(300)
def test_a_rank_that_raises_fails_the_job_with_its_error(tmp_path):
    proc = torchrun("raise", tmp_path / "x", timeout=150)
    assert proc.returncode != 0
    assert "rank 1 failed on purpose" in proc.stderr + proc.stdout


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("empty", "yields no batches on at least one process"),  # a loader empty on one rank
        ("short", "has no len() and ran out after 2 batches on some processes"),  # no len()
    ],
)
def test_a_loader_short_on_one_rank_is_a_clear_error_on_every_rank(tmp_path, mode, message):
    proc = torchrun(mode, tmp_path / "x", timeout=150)
    assert proc.returncode != 0
    assert (proc.stderr + proc.stdout).count(message) >= 2


@pytest.mark.timeout(300)
def test_ddp_evaluation_counts_each_sample_once_and_leaves_buffers_alone(tmp_path):
    # A model with BatchNorm buffers; 21 validation samples in batches of 10 give one rank 2
    # batches and the other 1. Evaluation calls the unwrapped model: DDP's wrapper would
    # broadcast rank 0's buffers over every other rank's in its first forward.
    proc = torchrun("ddp-eval", tmp_path / "e", timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "e.json").read_text())
    want = ftrain.eval_epoch(
        dist_worker.make_bn_state(), dist_worker.make_uneven_val(), prefix="val_"
    )
    assert metrics == pytest.approx(want, rel=1e-6)
    ranks = [torch.load(tmp_path / f"e.rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert any(
        not torch.equal(a, b) for a, b in zip(ranks[0]["before"], ranks[1]["before"], strict=True)
    )  # trained on different batches, the ranks' running statistics differ
    for rank in ranks:
        for before, after in zip(rank["before"], rank["after"], strict=True):
            assert torch.equal(before, after)


@pytest.mark.timeout(300)
def test_sync_gradients_averages_gradients_across_ranks(tmp_path):
    proc = torchrun("sync-grads", tmp_path / "g", timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"g.rank{r}.pt", weights_only=True) for r in (0, 1)]
    for i, (a, b) in enumerate(zip(ranks[0]["before"], ranks[1]["before"], strict=True)):
        assert not torch.equal(a, b), i  # each rank's own data: no wrapper synced them
        mean = (a + b) / 2
        for rank in ranks:
            torch.testing.assert_close(rank["after"][i], mean, rtol=0, atol=1e-6)


def test_distributed_placement_without_torchrun_says_how_to_launch(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    state = ftrain.testing.toy_state()
    with pytest.raises(ftrain.PlacementError, match="torchrun --nproc_per_node=N"):
        ftrain.place(state, ftrain.DDP())
    assert state.is_live


def _params(path):
    return torch.load(path, weights_only=True)


@pytest.mark.timeout(400)
def test_fsdp_sharded_checkpoint_loads_into_one_process_and_back(tmp_path):
    ref9, _ = ftrain.fit(
        dist_worker.make_state(), dist_worker.make_loaders(16), max_steps=9, log_every_n_steps=3
    )
    ref18, _, _ = single_process_reference()
    # FSDP (2 processes) writes a sharded directory: one shard file per process
    proc = torchrun("save9-fsdp", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "a.ckpt").iterdir())
    assert names == [".metadata", "__0_0.distcp", "__1_0.distcp", "manifest.json", "state.ftrain"]
    # ... which loads into one process
    one = ftrain.load(dist_worker.make_state(), tmp_path / "a.ckpt")
    assert one.step == 9 and one.epoch_batch == 3
    for k, v in ref9.model.state_dict().items():
        torch.testing.assert_close(one.model.state_dict()[k], v, rtol=0, atol=1e-5)
    # ... and into FSDP with 2 processes, continuing the run as if never stopped
    proc = torchrun("resume-fsdp", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr[-3000:]
    params = _params(tmp_path / "a.pt")
    for k, v in ref18.model.state_dict().items():
        torch.testing.assert_close(params[k], v, rtol=0, atol=1e-5)
    # one process -> FSDP (2 processes), continuing the run
    ftrain.save(ref9, tmp_path / "b.ckpt")
    proc = torchrun("resume-fsdp", tmp_path / "b")
    assert proc.returncode == 0, proc.stderr[-3000:]
    params = _params(tmp_path / "b.pt")
    for k, v in ref18.model.state_dict().items():
        torch.testing.assert_close(params[k], v, rtol=0, atol=1e-5)


@pytest.mark.timeout(400)
def test_ddp_resume_continues_exactly(tmp_path):
    proc = torchrun("ddp", tmp_path / "straight")
    assert proc.returncode == 0, proc.stderr[-3000:]
    straight = _params(tmp_path / "straight.pt")
    proc = torchrun("save9-ddp", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = torchrun("resume-ddp", tmp_path / "r")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = _params(tmp_path / "r.pt")
    for k, v in straight.items():
        assert torch.equal(resumed[k], v), k


@pytest.mark.timeout(400)
def test_elastic_restart_resumes_from_the_last_checkpoint(tmp_path):
    proc = torchrun("ddp", tmp_path / "straight")
    assert proc.returncode == 0, proc.stderr[-3000:]
    straight = _params(tmp_path / "straight.pt")
    # A worker SIGKILLed at step 7: torchrun restarts the group, which resumes from step 6.
    proc = torchrun("elastic", tmp_path / "e", extra=("--max-restarts=2",), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "e.died").exists()
    elastic = _params(tmp_path / "e.pt")
    for k, v in straight.items():
        assert torch.equal(elastic[k], v), k


def test_restart_scoping_applies_to_one_node_torchrun_only(monkeypatch):
    from ftrain.strategies._dist import _restart_scoped_store

    for key in ("TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RESTART_COUNT", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert _restart_scoped_store(timedelta(seconds=1)) is None  # not under torchrun
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # a fresh store per attempt
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert _restart_scoped_store(timedelta(seconds=1)) is None
    # Several nodes: restart counts are per agent, so the store is left alone, with a warning.
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.warns(UserWarning, match="TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1"):
        assert _restart_scoped_store(timedelta(seconds=1)) is None
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")  # a first attempt: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _restart_scoped_store(timedelta(seconds=1)) is None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["weighting-ddp", "weighting-fsdp"])
def test_ranks_with_uneven_counts_step_like_the_whole_batch(tmp_path, mode):
    proc = torchrun(mode, tmp_path / "w", timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "w.pt", weights_only=True)
    x, y = dist_worker.regression_data()
    tokens, mask = dist_worker.token_data()
    wants = {
        "accumulated": ftrain.train_step(dist_worker.regression_state(), (x, y))[0],
        "uneven": ftrain.train_step(dist_worker.regression_state(), (x, y))[0],
        "sum": ftrain.train_step(dist_worker.sum_state(), (x, y))[0],
        "tokens": ftrain.train_step(dist_worker.token_state(), (tokens, mask))[0],
        "tokens-uneven": ftrain.train_step(dist_worker.token_state(), (tokens, mask))[0],
    }
    for case, want in wants.items():
        for a, b in zip(got[case], want.model.parameters(), strict=True):
            torch.testing.assert_close(a, b.detach(), rtol=0, atol=1e-6, msg=case)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["predict-ddp", "predict-fsdp"])
def test_predict_on_two_processes_returns_what_one_returns_in_dataset_order(tmp_path, mode):
    proc = torchrun(mode, tmp_path / "p", timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "p.pt", weights_only=True)
    state = dist_worker.make_state()
    g = torch.Generator().manual_seed(7)
    x = torch.randn(21, 10, generator=g)
    state.model.eval()
    with torch.no_grad():
        want = state.model(x)
    torch.testing.assert_close(got["concat"], want, rtol=0, atol=1e-6)
    torch.testing.assert_close(got["padded"], want, rtol=0, atol=1e-6)
    assert torch.equal(got["labels"], torch.arange(21))  # dataset order, padding dropped
    assert [len(b) for b in got["per_batch"]] == [4, 4, 4, 4, 4, 1]
    torch.testing.assert_close(torch.cat(got["per_batch"]), want, rtol=0, atol=1e-6)


@pytest.mark.timeout(400)
@pytest.mark.parametrize("mode", ["ema-ddp", "ema-fsdp"])
def test_ema_on_two_processes_equals_one_and_resumes_exactly(tmp_path, mode):
    proc = torchrun(mode, tmp_path / mode, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / f"{mode}.json").read_text())
    assert result["exact"] and result["count"] == 18  # the resumed run equals the straight one
    train, val = dist_worker.make_loaders(16)
    state, history = ftrain.fit(
        dist_worker.make_state(),
        (train, val),
        max_epochs=3,
        step_fn=ftrain.with_ema(decay=0.9),
        val_weights=("model", "ema"),
        log_every_n_steps=3,
    )
    ema = torch.load(tmp_path / f"{mode}.pt", weights_only=True)
    for k, v in state.averages["ema"].tensors.items():
        torch.testing.assert_close(ema[k], v, rtol=0, atol=1e-5)
    for rows in (result["history"], result["resumed_history"]):
        assert len(rows) == 3
        for got, want in zip(rows, history, strict=True):
            for k in ("val_loss", "val_ema_loss", "train_loss"):
                assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
