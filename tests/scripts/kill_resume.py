"""Kill training at random moments, resume each time, and check the end equals an unkilled run.

A worker process trains with a `Checkpoint` every 2 steps and ``fit(..., resume=dir)``; this
script SIGKILLs it at a random moment (some kills land in the middle of a checkpoint write: a
temporary file is left behind), checks that the newest good checkpoint loads, and starts it again.
After the kills it lets the worker finish and compares the final state with a run that was never
killed: every parameter and optimizer tensor must be identical.

    python tests/scripts/kill_resume.py --kills 100
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _gan():
    """tests/scripts/gan.py: a DCGAN with two phases and its noise generator in state.extras."""
    sys.path.insert(0, str(Path(__file__).parent))
    import gan

    return gan


def make_state(kind: str = "mlp"):
    if kind == "gan":
        return _gan().make_dcgan()
    import torch
    from torch import nn

    import ftrain

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Dropout(0.1), nn.Linear(1024, 256),
                          nn.ReLU(), nn.Linear(256, 10))  # fmt: skip
    return ftrain.TrainState.create(
        model=model,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=25, gamma=0.7),
        seed=7,
    )


def worker(directory: str, out: str, max_steps: int, kind: str = "mlp") -> None:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import ftrain
    from ftrain.callbacks import Checkpoint

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 256, generator=g)
    y = torch.randint(0, 10, (1024,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    if kind == "gan":
        loader = _gan().loader(24)
    ckpt = Checkpoint(directory, every_n_steps=2, every_n_epochs=None, keep_last=2,
                      save_on_interrupt=False)  # fmt: skip
    ready = []

    def announce(state, event):
        if not ready:  # after the first step: start-up costs are paid, training runs now
            ready.append(print("ready", flush=True))
        return state

    state, _ = ftrain.fit(make_state(kind), loader, [ftrain.on(ftrain.StepEnd, announce), ckpt],
                          max_steps=max_steps, log_every_n_steps=2, resume=directory)  # fmt: skip
    if not ready:
        print("ready", flush=True)
    ftrain.save(state, out)


def _spawn(directory: Path, out: Path, max_steps: int, kind: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "worker", str(directory), str(out), str(max_steps), kind]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def run(
    kills: int,
    max_steps: int = 600,
    seed: int = 0,
    workdir: str | None = None,
    kind: str = "mlp",
) -> dict[str, int]:
    """Do ``kills`` kill/resume cycles; return counts. Raises AssertionError on any mismatch."""
    import warnings

    import ftrain
    from ftrain.testing import assert_states_equal

    rng = random.Random(seed)
    base = Path(workdir or tempfile.mkdtemp(prefix="ftrain-kill-"))
    reference, ref_out = base / "reference", base / "reference.ckpt"
    killed, killed_dir, final = base / "killed", base / "killed.ckpt", None
    done = _spawn(reference, ref_out, max_steps, kind)
    _, err = done.communicate(timeout=600)
    assert done.returncode == 0, err[-2000:]
    counts = {"kills": 0, "mid_write": 0, "finished_before_kill": 0, "resumed_from_checkpoint": 0}
    while counts["kills"] < kills:
        proc = _spawn(killed, killed_dir, max_steps, kind)
        assert proc.stdout is not None
        proc.stdout.readline()  # "ready": imports are done, training starts now
        time.sleep(rng.uniform(0.0, 0.8))
        if proc.poll() is not None:  # finished first: start over in a fresh directory
            proc.communicate()
            counts["finished_before_kill"] += 1
            for p in killed.glob("*"):
                p.unlink()
            continue
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)  # reap it and close its pipes
        counts["kills"] += 1
        if list(killed.glob(".step-*.tmp")):
            counts["mid_write"] += 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            latest = ftrain.latest_checkpoint(killed) if killed.is_dir() else None
        if latest is not None:
            ftrain.load(make_state(kind), latest)  # the newest good checkpoint always loads
            counts["resumed_from_checkpoint"] += 1
    proc = _spawn(killed, killed_dir, max_steps, kind)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    final = ftrain.load(make_state(kind), killed_dir)
    assert_states_equal(ftrain.load(make_state(kind), ref_out), final)
    assert final.step == max_steps
    return counts


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:])
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", choices=("mlp", "gan"), default="mlp")
    args = p.parse_args()
    t0 = time.time()
    counts = run(args.kills, args.max_steps, args.seed, kind=args.model)
    print(
        f"{counts} in {time.time() - t0:.0f} s: every resume finished identical to the "
        "uninterrupted run"
    )


if __name__ == "__main__":
    main()
