"""Per-step overhead of ftrain against a hand-written PyTorch loop.

Every contender trains the same model on the same data with the same optimizer. They run in one
process and take turns epoch by epoch (so machine noise hits them alike); each turn is timed and
the median over turns is reported, with the ratio to the raw loop measured in the same run.

    python benchmarks/overhead.py                      # tiny MLP, batch 64 (overhead-bound)
    python benchmarks/overhead.py --workload cnn       # small CNN on 28x28 images
    python benchmarks/overhead.py --workload mlp-big   # compute-bound MLP
    python benchmarks/overhead.py --device cuda        # the same on a GPU
    python benchmarks/overhead.py --subprocess --peers # each runner in a fresh process, with
                                                       # Lightning/Accelerate/Ignite if installed

With ``--subprocess`` every runner trains in a fresh process per round (rounds interleave the
runners); each reports its median per-step time over its epochs, its start-up time (building
the trainer or state up to the end of the first epoch, minus a steady epoch) and its peak RSS.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ftrain

WORKLOADS = {
    # name: (input shape, hidden, batch size, samples)
    "tiny": ((32,), 64, 64, 64 * 50),
    "cnn": ((1, 28, 28), 0, 64, 64 * 20),
    "mlp-big": ((2048,), 4096, 256, 256 * 6),
}


def build_model(workload: str) -> nn.Module:
    shape, hidden, _, _ = WORKLOADS[workload]
    if workload == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
        )  # fmt: skip
    return nn.Sequential(
        nn.Linear(shape[0], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, 10),
    )  # fmt: skip


def make_loader(workload: str, device: str) -> DataLoader:
    shape, _, batch, n = WORKLOADS[workload]
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        pin_memory=device == "cuda",
        generator=torch.Generator().manual_seed(1),
    )


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def raw_runner(workload: str, device: str) -> Callable[[], int]:
    torch.manual_seed(0)
    model = build_model(workload).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    crit = nn.CrossEntropyLoss()
    loader = make_loader(workload, device)

    def epoch() -> int:
        losses = []
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        torch.stack(losses).mean().item()  # one sync per epoch, as a careful user would
        return len(losses)

    return epoch


def ftrain_state(workload: str, device: str) -> ftrain.TrainState:
    torch.manual_seed(0)
    crit = nn.CrossEntropyLoss()
    state = ftrain.TrainState.create(
        model=build_model(workload),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
        loss_fn=lambda model, batch: crit(model(batch[0]), batch[1]),
    )
    return ftrain.place(state, device)


def step_runner(workload: str, device: str) -> Callable[[], int]:
    box = [ftrain_state(workload, device)]
    loader = ftrain.prepare_loader(box[0], make_loader(workload, device))

    def epoch() -> int:
        state, losses = box[0], []
        loader.sampler.set_epoch(state.epoch)
        for batch in loader:
            state, metrics = ftrain.train_step(state, batch)
            losses.append(metrics["loss"])
        torch.stack(losses).mean().item()
        box[0] = state.replace(epoch=state.epoch + 1)
        return len(losses)

    return epoch


def fit_runner(workload: str, device: str, callbacks: Any = ()) -> Callable[[], int]:
    box = [ftrain_state(workload, device)]
    loader = make_loader(workload, device)

    def epoch() -> int:
        before = box[0].step
        box[0], _ = ftrain.fit(box[0], loader, callbacks, max_epochs=box[0].epoch + 1)
        return box[0].step - before

    return epoch


PEERS = ("lightning", "accelerate", "ignite")
FTRAIN = ("raw loop", "train_step loop", "fit", "fit + ProgressBar + CSVLogger")


def child(runner: str, workload: str, device: str, epochs: int) -> None:
    """Run one runner for ``epochs`` timed epochs after a warm-up; print JSON to stdout."""
    import json
    import resource

    torch.set_num_threads(1)
    # Pay torch's lazy imports (the first optimizer imports torch._dynamo) outside the timing.
    warm = nn.Linear(2, 2)
    torch.optim.AdamW(warm.parameters()).step()
    t_start = time.perf_counter()
    if runner in PEERS:
        import importlib

        peers = importlib.import_module("peers")
        torch.manual_seed(0)
        model = build_model(workload).to(device)
        times = getattr(peers, runner)(
            model, lambda p: torch.optim.AdamW(p, lr=1e-3), make_loader(workload, device), epochs
        )
        steps = len(make_loader(workload, device))
        per_step = [t / steps for t in times]
        startup = time.perf_counter() - t_start - sum(times)
    else:
        out = tempfile.mkdtemp()
        from ftrain.callbacks import CSVLogger, ProgressBar

        cbs = [ProgressBar(file=open(os.devnull, "w")), CSVLogger(out)]  # noqa: SIM115
        make = {
            "raw loop": lambda: raw_runner(workload, device),
            "train_step loop": lambda: step_runner(workload, device),
            "fit": lambda: fit_runner(workload, device),
            "fit + ProgressBar + CSVLogger": lambda: fit_runner(workload, device, cbs),
        }[runner]
        epoch = make()
        t0 = time.perf_counter()
        steps = epoch()
        first = time.perf_counter() - t0
        per_step = []
        for _ in range(epochs):
            sync(device)
            t0 = time.perf_counter()
            steps = epoch()
            sync(device)
            per_step.append((time.perf_counter() - t0) / steps)
        startup = time.perf_counter() - t_start - sum(p * steps for p in per_step) - first
        startup += first - statistics.median(per_step) * steps
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"per_step": statistics.median(per_step), "startup": startup, "rss_mb": rss}))


def subprocess_rounds(args: argparse.Namespace) -> None:
    import importlib.util
    import json
    import subprocess
    import sys

    runners = list(FTRAIN)
    if args.peers:
        runners += [p for p in PEERS if importlib.util.find_spec(p) is not None]
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
        "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
        "PYTHONPATH": os.path.dirname(__file__),
    }
    results: dict[str, list[dict[str, float]]] = {r: [] for r in runners}
    for r in range(args.rounds):
        for name in runners if r % 2 == 0 else list(reversed(runners)):
            cmd = [
                sys.executable,
                __file__,
                "--child",
                name,
                "--workload",
                args.workload,
                "--device",
                args.device,
                "--epochs",
                str(args.epochs),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    raw = [x["per_step"] for x in results["raw loop"]]
    print(
        f"workload={args.workload} device={args.device} rounds={args.rounds} "
        f"epochs={args.epochs} torch={torch.__version__} python={platform.python_version()}"
    )
    print(
        "| runner | median µs/step | × raw (same-round ratios, median) "
        "| start-up ms | peak RSS MB |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, xs in results.items():
        ratios = [x["per_step"] / r for x, r in zip(xs, raw, strict=True)]
        print(
            f"| {name} | {statistics.median(x['per_step'] for x in xs) * 1e6:,.0f} | "
            f"{statistics.median(ratios):.3f} | "
            f"{statistics.median(x['startup'] for x in xs) * 1e3:,.0f} | "
            f"{statistics.median(x['rss_mb'] for x in xs):,.0f} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subprocess", action="store_true", help="a fresh process per runner and round")
    p.add_argument("--peers", action="store_true", help="also run Lightning, Accelerate, Ignite")
    p.add_argument("--epochs", type=int, default=6, help="timed epochs per child (--subprocess)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.workload, args.device, args.epochs)
    if args.subprocess:
        return subprocess_rounds(args)
    torch.set_num_threads(args.threads)
    out = tempfile.mkdtemp()
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole run
    from ftrain.callbacks import CSVLogger, ProgressBar

    runners = {
        "raw loop": raw_runner(args.workload, args.device),
        "train_step loop": step_runner(args.workload, args.device),
        "fit": fit_runner(args.workload, args.device),
        "fit + ProgressBar + CSVLogger": fit_runner(
            args.workload, args.device, [ProgressBar(file=devnull), CSVLogger(out)]
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.warmup + args.rounds):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            sync(args.device)
            t0 = time.perf_counter()
            steps = runners[name]()
            sync(args.device)
            if r >= args.warmup:
                times[name].append((time.perf_counter() - t0) / steps)
    raw = statistics.median(times["raw loop"])
    print(
        f"workload={args.workload} device={args.device} threads={args.threads} "
        f"rounds={args.rounds} torch={torch.__version__} python={platform.python_version()}"
    )
    print("| runner | median µs/step | × raw (medians) | × raw (same-round ratios, median) |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        paired = statistics.median(t / r for t, r in zip(ts, times["raw loop"], strict=True))
        print(f"| {name} | {med * 1e6:,.0f} | {med / raw:.3f} | {paired:.3f} |")


if __name__ == "__main__":
    main()
