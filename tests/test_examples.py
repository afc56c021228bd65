"""The examples run end to end with tiny settings (offline, on CPU)."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout + proc.stderr


@pytest.mark.timeout(300)
def test_mnist_example_trains_and_writes_its_logs(tmp_path):
    out = _run(
        "mnist.py",
        "--epochs",
        "2",
        "--limit-batches",
        "10",
        "--accumulate",
        "2",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
    )
    match = re.search(r"digits: 2 epochs, 10 steps .* val_acc (\d\.\d+)", out)
    assert match, out
    assert float(match.group(1)) > 0.3  # 10 steps already beat chance (0.1) by far
    assert "Total params: 151,306" in out
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text().splitlines()))
    assert [r["event"] for r in rows if r["event"] != "interval"] == ["epoch", "val"] * 2
    assert {"train_loss", "train_grad_norm", "val_acc", "lr"} <= set(rows[0])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert len(events.Scalars("val_acc")) == 2
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.timeout(300)
def test_custom_loop_example_trains_and_reports_accuracy():
    out = _run("custom_loop.py", "--epochs", "2", "--limit-batches", "10")
    assert re.search(r"custom loop: 20 steps .* val_acc \d\.\d+", out), out
    assert "epoch 1: val_loss" in out


def test_mnist_example_says_what_to_do_when_mnist_cannot_be_downloaded(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "mnist.py"),
            "--dataset",
            "mnist",
            "--data-dir",
            str(tmp_path),
            "--epochs",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
            "PYTHONPATH": str(ROOT),
        },
    )
    assert proc.returncode != 0
    assert "--dataset digits" in proc.stderr


@pytest.mark.timeout(300)
def test_distributed_example_gives_the_same_result_on_one_and_two_processes(tmp_path):
    import os

    single = _run("distributed.py", "--epochs", "2", "--no-progress")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(ROOT / "examples" / "distributed.py"),
            "--strategy",
            "ddp",
            "--epochs",
            "2",
            "--no-progress",
            "--checkpoints",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    acc = lambda text: re.search(r"val_acc (\d\.\d+)", text).group(1)
    assert "ddp on 2 process(es): 128 steps" in proc.stdout and acc(proc.stdout) == acc(single)
    assert proc.stdout.count("val_acc") == 1  # only rank 0 prints
    assert list(tmp_path.glob("step-*.ckpt"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_vae_example_logs_per_digit_and_saves_sampled_digits(tmp_path, precision):
    out = _run(
        "vae.py",
        "--epochs",
        "2",
        "--limit-batches",
        "5",
        "--device",
        "cpu",
        "--precision",
        precision,
        "--out",
        str(tmp_path),
    )
    match = re.search(r"vae: 2 epochs, 10 steps, val_loss (\d+\.\d+) nats per digit", out)
    assert match, out
    # per digit: 64 pixels of binary cross-entropy, at most ~64 * ln 2 = 44 nats at chance,
    # far below the batch sums (thousands) a summed loss would log
    assert 10 < float(match.group(1)) < 60
    for epoch in (1, 2):
        assert (tmp_path / f"samples-epoch{epoch}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.timeout(300)
def test_gan_example_trains_two_phases_and_saves_a_grid_each_epoch(tmp_path):
    out = _run("gan.py", "--epochs", "2", "--limit-batches", "5", "--out", str(tmp_path))
    assert re.search(r"gan: 2 epochs, 10 steps, d_loss \d\.\d+, g_loss \d\.\d+", out), out
    grids = sorted(tmp_path.glob("epoch-*.png"))
    assert len(grids) == 2 and grids[0].read_bytes()[:4] == b"\x89PNG"
    resumed = _run("gan.py", "--epochs", "3", "--limit-batches", "5", "--out", str(tmp_path),
                   "--resume")  # fmt: skip
    assert "gan: 3 epochs, 15 steps" in resumed


@pytest.mark.timeout(300)
def test_distillation_example_keeps_the_teacher_frozen():
    out = _run("distillation.py", "--epochs", "2", "--teacher-epochs", "1", "--limit-batches", "5")
    assert re.search(r"distillation: 10 steps, student val_acc \d\.\d+", out), out
    assert "the teacher got no gradients: True" in out
