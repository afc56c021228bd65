"""Per-step overhead of ftrain against a hand-written PyTorch loop.

Every contender trains the same model on the same data with the same optimizer. In one process
(the default) the runners each run in a thread and take turns every few batches, handing on a
baton from the loader's ``collate_fn``, so machine noise hits them alike; an epoch of each runner
(its turns summed, epoch-end work included) is one sample, and the median over epochs of the
ratio to the raw loop's same epoch is reported.

    python benchmarks/overhead.py                      # tiny MLP, batch 64 (overhead-bound)
    python benchmarks/overhead.py --workload cnn       # small CNN on 28x28 images
    python benchmarks/overhead.py --workload mlp-big   # compute-bound MLP (CPU)
    python benchmarks/overhead.py --device cuda --precision bf16-mixed [--compile]
    python benchmarks/overhead.py --device cuda --workload gpu-mlp --precision bf16-mixed
    python benchmarks/overhead.py --subprocess --peers # each runner in a fresh process, with
                                                       # Lightning/Accelerate/Ignite if installed

With ``--subprocess`` every runner trains in a fresh process per round (rounds interleave the
runners); each reports its median per-epoch time per step, its start-up time (building the
trainer or state up to the end of the first epoch, minus a steady epoch) and its peak memory.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, default_collate

import ftrain

WORKLOADS = {
    # name: (input shape, hidden, batch size, samples)
    "tiny": ((32,), 64, 64, 64 * 50),
    "cnn": ((1, 28, 28), 0, 64, 64 * 20),
    "mlp-big": ((2048,), 4096, 256, 256 * 6),
    # Compute-bound on a GPU: 16 tokens of 2048 features per sample through 4 layers 8192 wide
    # (1.3 TFLOP a step), few samples per batch so that collating stays cheap on the host.
    "gpu-mlp": ((16, 2048), 8192, 64, 64 * 10),
}


class MeanOverTokens(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(1)


# Fixed allocator behaviour for every runner (set before start-up; `main` re-executes itself).
MALLOC_ENV = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(64 << 30),
}

Collate = Callable[[list[Any]], Any]
Train = Callable[[int], None]  # train(epochs)


def build_model(workload: str) -> nn.Module:
    shape, hidden, _, _ = WORKLOADS[workload]
    if workload == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 7 * 7, 10),
        )  # fmt: skip
    if workload == "gpu-mlp":
        return nn.Sequential(
            nn.Linear(shape[-1], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 10), MeanOverTokens(),
        )  # fmt: skip
    return nn.Sequential(
        nn.Linear(shape[0], hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, 10),
    )  # fmt: skip


def make_loader(workload: str, device: str, collate: Collate = default_collate) -> DataLoader:
    shape, _, batch, n = WORKLOADS[workload]
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.randn(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g))
    return DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        pin_memory=device.startswith("cuda"),
        generator=torch.Generator().manual_seed(1),
        collate_fn=collate,
    )


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def raw_runner(
    workload: str, device: str, precision: str, compile: bool, collate: Collate
) -> Train:
    torch.manual_seed(0)
    model = build_model(workload).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if compile else model
    crit = nn.CrossEntropyLoss()
    loader = make_loader(workload, device, collate)
    dev = torch.device(device)
    cast = precision == "bf16-mixed"

    def train(epochs: int) -> None:
        for _ in range(epochs):
            losses = []
            for x, y in loader:
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                with torch.autocast(dev.type, torch.bfloat16) if cast else contextlib.nullcontext():
                    loss = crit(forward(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(loss.detach())
            torch.stack(losses).mean().item()  # one sync per epoch, as a careful user would

    return train


def ftrain_state(workload: str, device: str, precision: str, compile: bool) -> ftrain.TrainState:
    torch.manual_seed(0)
    crit = nn.CrossEntropyLoss()
    state = ftrain.TrainState.create(
        model=build_model(workload),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
        loss_fn=lambda model, batch: crit(model(batch[0]), batch[1]),
    )
    return ftrain.place(state, ftrain.SingleDevice(device, precision=precision, compile=compile))


def step_runner(
    workload: str, device: str, precision: str, compile: bool, collate: Collate
) -> Train:
    state = ftrain_state(workload, device, precision, compile)
    loader = ftrain.prepare_loader(state, make_loader(workload, device, collate))

    def train(epochs: int) -> None:
        nonlocal state
        for _ in range(epochs):
            loader.sampler.set_epoch(state.epoch)  # type: ignore[attr-defined]
            losses = []
            for batch in loader:
                state, metrics = ftrain.train_step(state, batch)
                losses.append(metrics["loss"])
            torch.stack(losses).mean().item()
            state = state.replace(epoch=state.epoch + 1)

    return train


def fit_runner(
    workload: str,
    device: str,
    precision: str,
    compile: bool,
    collate: Collate,
    callbacks: Any = (),
) -> Train:
    state = ftrain_state(workload, device, precision, compile)
    loader = make_loader(workload, device, collate)

    def train(epochs: int) -> None:
        ftrain.fit(state, loader, callbacks, max_epochs=epochs)

    return train


PEERS = ("lightning", "accelerate", "ignite")
FTRAIN = ("raw loop", "train_step loop", "fit", "fit + ProgressBar + CSVLogger")


def make_runner(name: str, args: argparse.Namespace, collate: Collate, out: str) -> Train:
    from ftrain.callbacks import CSVLogger, ProgressBar

    opts = (args.workload, args.device, args.precision, args.compile, collate)
    if name == "raw loop":
        return raw_runner(*opts)
    if name == "train_step loop":
        return step_runner(*opts)
    if name == "fit":
        return fit_runner(*opts)
    if name == "fit + ProgressBar + CSVLogger":
        devnull = open(os.devnull, "w")  # noqa: SIM115 - lives for the whole run
        return fit_runner(*opts, callbacks=[ProgressBar(file=devnull), CSVLogger(out)])
    import importlib

    peers = importlib.import_module("peers")
    torch.manual_seed(0)
    model = build_model(args.workload)
    if args.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    loader = make_loader(args.workload, args.device, collate)
    peer = getattr(peers, name)
    return lambda epochs: peer(
        model, lambda p: torch.optim.AdamW(p, lr=1e-3), loader, epochs, args.device,
        args.precision,
    )  # fmt: skip


def child(args: argparse.Namespace) -> None:
    """Run one runner for ``1 + epochs`` epochs; print JSON to stdout.

    Epochs are timed from the first batch of one to the first batch of the next (the collate
    function takes the time), so every runner, the peers included, is timed the same way.
    """
    import json
    import resource

    torch.set_num_threads(args.threads)
    # Pay torch's lazy imports (the first optimizer imports torch._dynamo) outside the timing.
    warm = nn.Linear(2, 2)
    torch.optim.AdamW(warm.parameters()).step()
    steps = len(make_loader(args.workload, args.device))
    marks: list[float] = []
    count = [0]

    def collate(items: list[Any]) -> Any:
        if count[0] % steps == 0:
            sync(args.device)
            marks.append(time.perf_counter())
        count[0] += 1
        return default_collate(items)

    t_start = time.perf_counter()
    train = make_runner(args.child, args, collate, tempfile.mkdtemp())
    train(1 + args.epochs)
    sync(args.device)
    marks.append(time.perf_counter())
    epochs = [b - a for a, b in itertools.pairwise(marks)]
    per_step = [t / steps for t in epochs[1:]]
    startup = marks[0] - t_start + epochs[0] - statistics.median(epochs[1:])
    if args.device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"per_step": statistics.median(per_step), "startup": startup, "peak": peak}))


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
        **MALLOC_ENV,
        "PYTHONPATH": os.pathsep.join(
            [os.path.dirname(__file__), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
    }
    results: dict[str, list[dict[str, float]]] = {r: [] for r in runners}
    for r in range(args.rounds):
        for name in runners if r % 2 == 0 else list(reversed(runners)):
            cmd = [
                sys.executable, __file__, "--child", name, "--workload", args.workload,
                "--device", args.device, "--epochs", str(args.epochs), "--precision",
                args.precision, "--threads", str(args.threads),
                *(["--compile"] if args.compile else []),
            ]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    raw = [x["per_step"] for x in results["raw loop"]]
    memory = "peak GPU MB" if args.device.startswith("cuda") else "peak RSS MB"
    print(
        f"workload={args.workload} device={args.device} precision={args.precision} "
        f"compile={args.compile} rounds={args.rounds} epochs={args.epochs} "
        f"torch={torch.__version__} python={platform.python_version()}"
    )
    print(
        f"| runner | median µs/step | × raw (same-round ratios, median) | start-up ms | {memory} |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, xs in results.items():
        ratios = [x["per_step"] / r for x, r in zip(xs, raw, strict=True)]
        print(
            f"| {name} | {statistics.median(x['per_step'] for x in xs) * 1e6:,.0f} | "
            f"{statistics.median(ratios):.3f} | "
            f"{statistics.median(x['startup'] for x in xs) * 1e3:,.0f} | "
            f"{statistics.median(x['peak'] for x in xs):,.0f} |"
        )


class Turns:
    """Runners take turns every ``k`` batches, each in its own thread, handing on a baton.

    The baton is passed from the loader's ``collate_fn``, which every runner calls once per
    batch (ftrain's `prepare_loader` keeps it), so every runner pays the same few microseconds
    for it and ftrain's loops are timed unmodified. Each turn's wall time is recorded.

    Every runner takes one turn per cycle, and each cycle starts one runner later than the last
    (``a b c``, then ``b c a``, ...), so no runner always follows the same one: with a fixed
    order, identical runners measured up to 3 % apart depending on whose caches they inherited.
    """

    def __init__(self, names: list[str], k: int, device: str) -> None:
        import threading

        self.names, self.k, self.device = names, k, device
        self.go = {n: threading.Event() for n in names}
        self.done: set[str] = set()
        self.turns: dict[str, list[float]] = {n: [] for n in names}
        self.count = dict.fromkeys(names, 0)
        self.t0 = dict.fromkeys(names, 0.0)
        self.local = threading.local()
        self.cycle, self.taken = 0, 0  # the current cycle and how many turns were taken in it

    def collate(self, items: list[Any]) -> Any:
        from torch.utils.data import default_collate

        name = self.local.name
        self.count[name] += 1
        if self.count[name] % self.k == 0:
            self.pass_on(name)
        return default_collate(items)

    def pass_on(self, name: str, finished: bool = False) -> None:
        sync(self.device)
        self.turns[name].append(time.perf_counter() - self.t0[name])
        if finished:
            self.done.add(name)
        nxt = self.next_runner()
        if nxt is None:
            return
        if nxt == name:
            return self.wait(name, restart=False)
        self.go[name].clear()
        self.go[nxt].set()
        if not finished:
            self.wait(name)

    def next_runner(self) -> str | None:
        """The next runner not finished: the rest of this cycle, then the next cycles'."""
        n = len(self.names)
        for _ in range(2 * n):
            self.taken += 1
            if self.taken == n:
                self.cycle, self.taken = self.cycle + 1, 0
            nxt = self.names[(self.cycle + self.taken) % n]
            if nxt not in self.done:
                return nxt
        return None

    def wait(self, name: str, restart: bool = True) -> None:
        if restart:
            self.go[name].wait()
        self.t0[name] = time.perf_counter()


def in_process(args: argparse.Namespace) -> None:
    import threading

    torch.set_num_threads(args.threads)
    out = tempfile.mkdtemp()
    names = list(FTRAIN)
    steps = len(make_loader(args.workload, args.device))
    if args.turn is None:  # the largest turn up to 5 batches that divides an epoch
        args.turn = max(k for k in range(1, 6) if steps % k == 0)
    if steps % args.turn:
        raise SystemExit(f"--turn must divide the {steps} batches of an epoch (got {args.turn})")
    turns = Turns(names, args.turn, args.device)
    epochs = args.warmup + args.rounds
    bodies = {name: make_runner(name, args, turns.collate, out) for name in names}

    def run(name: str) -> None:
        turns.local.name = name
        turns.wait(name)
        bodies[name](epochs)
        turns.pass_on(name, finished=True)

    threads = [threading.Thread(target=run, args=(n,)) for n in names]
    for t in threads:
        t.start()
    turns.go[names[0]].set()
    for t in threads:
        t.join()
    # One "round" is one epoch of every runner (its turns summed): epoch-end work is included.
    per_epoch = steps // args.turn
    rounds: dict[str, list[float]] = {}
    for name, ts in turns.turns.items():
        ts = ts[1:]  # the first turn ends at the first batch
        sums = [sum(ts[i : i + per_epoch]) / steps for i in range(0, len(ts), per_epoch)]
        rounds[name] = sums[args.warmup : args.warmup + args.rounds]
    raw = rounds["raw loop"]
    print(
        f"workload={args.workload} device={args.device} precision={args.precision} "
        f"compile={args.compile} threads={args.threads} rounds={args.rounds} turn={args.turn} "
        f"torch={torch.__version__} python={platform.python_version()}"
    )
    print("| runner | median µs/step | × raw (medians) | × raw (same-round ratios, median) |")
    print("|---|---:|---:|---:|")
    med_raw = statistics.median(raw)
    for name, ts in rounds.items():
        med = statistics.median(ts)
        paired = statistics.median(t / r for t, r in zip(ts, raw, strict=True))
        print(f"| {name} | {med * 1e6:,.0f} | {med / med_raw:.3f} | {paired:.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subprocess", action="store_true", help="a fresh process per runner and round")
    p.add_argument("--peers", action="store_true", help="also run Lightning, Accelerate, Ignite")
    p.add_argument("--epochs", type=int, default=6, help="timed epochs per child (--subprocess)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed"))
    p.add_argument("--compile", action="store_true", help="torch.compile the model (all runners)")
    p.add_argument("--rounds", type=int, default=30, help="timed epochs per runner")
    p.add_argument("--warmup", type=int, default=3, help="untimed epochs per runner")
    p.add_argument(
        "--turn", type=int, default=None,
        help="batches per turn, in one process (default: up to 5, dividing an epoch)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if os.environ.get("MALLOC_ARENA_MAX") != "1":
        # One malloc arena for every thread: with one arena per runner thread, runners running
        # identical code differed by up to 2 % here, by which arena they happened to get.
        import sys

        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    if args.child:
        return child(args)
    if args.subprocess:
        return subprocess_rounds(args)
    return in_process(args)


if __name__ == "__main__":
    main()
