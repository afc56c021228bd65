"""Per-step overhead of ftrain against a hand-written PyTorch loop.

Every contender trains the same model on the same data with the same optimizer. They run in one
process and take turns epoch by epoch (so machine noise hits them alike); each turn is timed and
the median over turns is reported, with the ratio to the raw loop measured in the same run.

    python benchmarks/overhead.py                      # tiny MLP, batch 64 (overhead-bound)
    python benchmarks/overhead.py --workload cnn       # small CNN on 28x28 images
    python benchmarks/overhead.py --workload mlp-big   # compute-bound MLP
    python benchmarks/overhead.py --device cuda        # the same on a GPU
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
    return DataLoader(ds, batch_size=batch, shuffle=True, pin_memory=device == "cuda",
                      generator=torch.Generator().manual_seed(1))


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
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
    print(f"workload={args.workload} device={args.device} threads={args.threads} "
          f"rounds={args.rounds} torch={torch.__version__} python={platform.python_version()}")
    print("| runner | median µs/step | × raw |\n|---|---:|---:|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med * 1e6:,.0f} | {med / raw:.3f} |")


if __name__ == "__main__":
    main()
