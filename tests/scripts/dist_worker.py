"""A training script run under torchrun by tests/test_distributed.py (not a test module)."""

import json
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ftrain


def make_state(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2)
    )
    return ftrain.TrainState.create(
        model=model,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5),
        seed=seed,
    )


def make_loaders(batch_size):
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(96, 10, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=batch_size, shuffle=True), DataLoader(ds, batch_size=20)


def full_state_dict(state):
    out = {}
    for k, v in state.model.state_dict().items():
        out[k] = v.full_tensor() if hasattr(v, "full_tensor") else v
    return out


def main():
    mode, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    # The elastic run restarts the group: a short timeout makes a failed re-initialisation fail
    # fast (and be retried by torchrun) instead of waiting out the default.
    timeout_s = 30.0 if mode == "elastic" else 600.0
    strategy = (ftrain.FSDP if "fsdp" in mode else ftrain.DDP)(timeout_s=timeout_s)
    state = ftrain.place(make_state(), strategy)
    world, rank = state.world_size, state.rank
    train, val = make_loaders(16 // world)
    if mode == "raise":
        boom = ftrain.on(
            ftrain.StepEnd,
            lambda s, e: (
                (_ for _ in ()).throw(RuntimeError(f"rank {rank} failed on purpose"))
                if rank == 1 and e.step == 3
                else s
            ),
        )
        ftrain.fit(state, train, [boom], max_epochs=50)
        return
    if mode == "empty":
        batches = [] if rank == 1 else [next(iter(train))]
        ftrain.fit(state, batches, max_epochs=1)
        return
    if mode.startswith("save9"):
        state, _ = ftrain.fit(state, (train, val), max_steps=9, log_every_n_steps=3)
        ftrain.save(state, out + ".ckpt")
        return
    if mode.startswith("resume"):
        state = ftrain.load(state, out + ".ckpt")
    callbacks = []
    if mode == "elastic":
        import os
        import signal

        marker = out + ".died"

        def die_once(s, e):
            if rank == 1 and e.step == 7 and not os.path.exists(marker):
                open(marker, "w").close()
                os.kill(os.getpid(), signal.SIGKILL)
            return s

        callbacks = [
            ftrain.on(ftrain.StepEnd, die_once),
            ftrain.callbacks.Checkpoint(out + "-ckpt", every_n_steps=3, every_n_epochs=None),
        ]
    logs = []
    record = ftrain.on(ftrain.IntervalEnd, lambda s, e: (logs.append(e.metrics), s)[1])
    state, history = ftrain.fit(
        state,
        (train, val),
        [record, *callbacks],
        max_epochs=3,
        log_every_n_steps=3,
        resume=out + "-ckpt" if mode == "elastic" else None,
    )
    params = full_state_dict(state)
    if rank == 0:
        torch.save(params, out + ".pt")
        with open(out + ".json", "w") as f:
            json.dump(
                {
                    "history": history,
                    "logs": logs,
                    "step": state.step,
                    "epoch": state.epoch,
                    "world": world,
                },
                f,
            )


if __name__ == "__main__":
    main()
