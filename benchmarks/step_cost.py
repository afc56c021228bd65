"""Microseconds per step that `train_step` and `fit` add to a hand-written PyTorch loop.

Sequential blocks of steps, in one thread: a raw loop, a loop of `ftrain.train_step`, and `fit`,
taking turns block after block over batches collated in advance, so the three see the same
machine state. Each runner trains its own copy of one tiny model (the overhead is what is
measured, so the model is small enough for it to show). Prints, per runner, the median time per
step and the median over rounds of its difference to the raw block of the same round.

    python benchmarks/step_cost.py --rounds 30 --steps 200

Run it on two checkouts (``PYTHONPATH=path/to/checkout``) to compare versions; quote medians of
a few runs, since processes on a shared machine differ by more than the effect measured here.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

import ftrain


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))


def _batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(64, 32, generator=g), torch.randint(0, 10, (64,), generator=g))
        for _ in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=200, help="steps per block")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = _batches(args.steps)
    criterion = nn.CrossEntropyLoss()

    raw_model = _model()
    raw_opt = torch.optim.SGD(raw_model.parameters(), lr=1e-3)

    def raw() -> None:
        for x, y in batches:
            raw_opt.zero_grad(set_to_none=True)
            criterion(raw_model(x), y).backward()
            raw_opt.step()

    def make_state() -> ftrain.TrainState:
        return ftrain.TrainState.create(
            model=copy.deepcopy(raw_model),
            optimizer=lambda p: torch.optim.SGD(p, lr=1e-3),
            loss_fn=ftrain.supervised(criterion, accuracy=False),
        )

    step_state = [make_state()]

    def steps() -> None:
        state = step_state[0]
        for batch in batches:
            state, _ = ftrain.train_step(state, batch)
        step_state[0] = state

    fit_state = [make_state()]

    def fit() -> None:
        state = fit_state[0]
        state, _ = ftrain.fit(state, batches, max_epochs=state.epoch + 1, log_every_n_steps=50)
        fit_state[0] = state

    runners = {"raw": raw, "train_step": steps, "fit": fit}
    for run in runners.values():  # warm-up
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for r in range(args.rounds):
        order = list(runners)
        order = order[r % 3 :] + order[: r % 3]  # rotate who goes first
        for name in order:
            t0 = time.perf_counter()
            runners[name]()
            times[name].append((time.perf_counter() - t0) / args.steps * 1e6)
    raw_us = times["raw"]
    print(f"torch {torch.__version__}, ftrain {ftrain.__version__}, {args.rounds} rounds")
    print(f"{'runner':<12}{'us/step':>10}{'+us vs raw':>12}{'ratio':>8}")
    for name, us in times.items():
        diff = statistics.median(a - b for a, b in zip(us, raw_us, strict=True))
        ratio = statistics.median(a / b for a, b in zip(us, raw_us, strict=True))
        print(f"{name:<12}{statistics.median(us):>10.1f}{diff:>12.2f}{ratio:>8.3f}")


if __name__ == "__main__":
    main()
