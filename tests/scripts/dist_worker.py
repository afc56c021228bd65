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


def make_bn_state():
    """A model with BatchNorm buffers (set to values a fresh model would not have)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].running_mean.copy_(torch.linspace(-1, 1, 16))
        model[1].running_var.copy_(torch.linspace(0.5, 2, 16))
    return ftrain.TrainState.create(
        model=model,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
    )


def make_uneven_val():
    """21 samples in batches of 10: one rank evaluates 2 batches, the other 1."""
    g = torch.Generator().manual_seed(99)
    x = torch.randn(21, 10, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=10)


def evaluate_unevenly(out):
    """DDP evaluation with BatchNorm buffers and unequal batch counts per rank."""
    state = ftrain.place(make_bn_state(), ftrain.DDP(timeout_s=30.0))
    val = make_uneven_val()
    metrics = ftrain.eval_epoch(state, val, prefix="val_")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(32, 10, generator=g)
    train = DataLoader(TensorDataset(x, (x[:, 1] > 0).long()), batch_size=8, shuffle=True)
    # Each rank's last forward updates its own running statistics: they now differ by rank.
    state, _ = ftrain.fit(state, train, max_epochs=1)
    before = [b.clone() for b in state.model.buffers()]
    ftrain.eval_epoch(state, val)
    after = [b.clone() for b in state.model.buffers()]
    torch.save({"before": before, "after": after}, f"{out}.rank{state.rank}.pt")
    if state.rank == 0:
        with open(out + ".json", "w") as f:
            json.dump(metrics, f)


def sync_outside_the_wrapper(out):
    """Gradients of a backward through `state.model` (not DDP's wrapper) stay per rank until
    `sync_gradients` averages them."""
    state = ftrain.place(make_state(), ftrain.DDP(timeout_s=30.0))
    g = torch.Generator().manual_seed(state.rank)
    x, y = torch.randn(8, 10, generator=g), torch.randint(0, 2, (8,), generator=g)
    loss, _ = state.loss_fn(state.model, (x, y))
    loss.backward()
    before = [p.grad.clone() for p in state.model.parameters()]
    state.strategy.sync_gradients(state.model.parameters())
    after = [p.grad.clone() for p in state.model.parameters()]
    torch.save({"before": before, "after": after}, f"{out}.rank{state.rank}.pt")


def regression_state(seed=0):
    """A small regression MLP with plain SGD, for exact gradient comparisons."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    return ftrain.TrainState.create(
        model=model,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
        loss_fn=lambda m, b: nn.functional.mse_loss(m(b[0]), b[1]),
    )


def regression_data(n=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randn(n, 1, generator=g)


def token_state(seed=0):
    """A bigram model whose loss is the mean over the valid tokens, reported as the count."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Embedding(11, 6), nn.Linear(6, 11))

    def token_mean(m, batch):
        tokens, mask = batch
        logits = m(tokens[:, :-1])
        nll = nn.functional.cross_entropy(
            logits.reshape(-1, 11), tokens[:, 1:].reshape(-1), reduction="none"
        )
        valid = mask[:, 1:].reshape(-1).float()
        n = valid.sum()
        return ftrain.Loss((nll * valid).sum() / n, count=n)

    return ftrain.TrainState.create(
        model=model, optimizer=lambda p: torch.optim.SGD(p, lr=1.0), loss_fn=token_mean
    )


def token_data():
    """4 sequences with very different numbers of valid tokens."""
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 11, (4, 9), generator=g)
    lengths = torch.tensor([9, 2, 3, 8])
    return tokens, torch.arange(9)[None, :] < lengths[:, None]


def sum_state(seed=0):
    """A linear model whose loss is a sum over the batch (reduction='sum')."""
    torch.manual_seed(seed)

    def summed(m, b):
        x, y = b
        return ftrain.Loss(((m(x) - y) ** 2).sum(), count=len(x), reduction="sum")

    return ftrain.TrainState.create(
        model=nn.Linear(5, 1), optimizer=lambda p: torch.optim.SGD(p, lr=0.01), loss_fn=summed
    )


def weigh_unevenly(out, strategy):
    """One SGD step on a batch cut unevenly across 2 ranks (and into micro-batches); every rank
    runs as many micro-batches as the other (DDP syncs in each backward)."""
    results = {}
    x, y = regression_data()
    tokens, mask = token_data()  # 8, 1, 2 and 7 valid targets per sequence
    for case, make, pieces in (
        ("accumulated", regression_state, [[(0, 3), (3, 4)], [(4, 6), (6, 7)]]),
        ("uneven", regression_state, [[(0, 4)], [(4, 7)]]),
        ("sum", sum_state, [[(0, 4), (4, 5)], [(5, 6), (6, 7)]]),
        ("tokens", token_state, [[(0, 1), (1, 2)], [(2, 3), (3, 4)]]),
        ("tokens-uneven", token_state, [[(0, 3)], [(3, 4)]]),
    ):
        state = ftrain.place(make(), strategy(timeout_s=30.0))
        data = (tokens, mask) if case.startswith("tokens") else (x, y)
        for a, b in pieces[state.rank]:
            state, _ = ftrain.forward_backward(state, tuple(t[a:b] for t in data))
        state = ftrain.apply_gradients(state)
        results[case] = list(full_state_dict(state).values())
    if state.rank == 0:
        torch.save(results, out + ".pt")


def predict_in_order(out, strategy):
    """`predict` under 2 processes: shuffled loader, and a user's padding DistributedSampler."""
    state = ftrain.place(make_state(), strategy(timeout_s=30.0))
    g = torch.Generator().manual_seed(7)
    ds = TensorDataset(torch.randn(21, 10, generator=g), torch.arange(21))
    shuffled = DataLoader(ds, batch_size=4, shuffle=True)
    sampler = torch.utils.data.DistributedSampler(ds, shuffle=True, seed=3)  # pads 21 to 22
    padded = DataLoader(ds, batch_size=4, sampler=sampler)
    results = {
        "concat": ftrain.predict(state, shuffled),
        "per_batch": ftrain.predict(state, shuffled, concat=False),
        "labels": ftrain.predict(state, padded, forward=lambda m, b: b[1]),
        "padded": ftrain.predict(state, padded),
    }
    if state.rank == 0:
        torch.save(results, out + ".pt")


def full_state_dict(state):
    out = {}
    for k, v in state.model.state_dict().items():
        out[k] = v.full_tensor() if hasattr(v, "full_tensor") else v
    return out


def averaged(state, name="ema"):
    """The average's whole tensors (gathered from their shards under FSDP)."""
    tensors = state.averages[name].tensors
    return {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in tensors.items()}


def ema_run(out, mode):
    """EMA under DDP/FSDP: a straight run, and one cut at step 9 and resumed from its checkpoint
    (a shard directory under FSDP) in fresh states: the two must be equal bit for bit."""
    strategy = ftrain.FSDP if "fsdp" in mode else ftrain.DDP

    def run(**kwargs):
        state = ftrain.place(make_state(), strategy(timeout_s=60.0))
        train, val = make_loaders(16 // state.world_size)
        return ftrain.fit(
            state,
            (train, val),
            step_fn=ftrain.with_ema(decay=0.9),
            val_weights=("model", "ema"),
            log_every_n_steps=3,
            **kwargs,
        )

    straight, history = run(max_epochs=3)
    ckpt = ftrain.callbacks.Checkpoint(out + "-ckpt", every_n_steps=3, every_n_epochs=None)
    run(callbacks=[ckpt], max_steps=9)
    resumed, resumed_history = run(max_epochs=3, resume=out + "-ckpt")
    ema, again = averaged(straight), averaged(resumed)
    exact = all(torch.equal(ema[k], again[k]) for k in ema)
    exact = exact and all(
        torch.equal(a, b)
        for a, b in zip(
            full_state_dict(straight).values(), full_state_dict(resumed).values(), strict=True
        )
    )
    if straight.rank == 0:
        torch.save(ema, out + ".pt")
        with open(out + ".json", "w") as f:
            json.dump(
                {
                    "history": history,
                    "resumed_history": resumed_history,
                    "exact": exact,
                    "count": resumed.averages["ema"].count,
                },
                f,
            )


def train_gan(out, mode):
    """The GAN of tests/scripts/gan.py, one global batch of 16 split over the processes."""
    import gan  # beside this script, which torchrun runs as a file

    strategy = (ftrain.FSDP if "fsdp" in mode else ftrain.DDP)(timeout_s=60.0)
    state = ftrain.place(gan.make_pair_gan(), strategy)
    loader = gan.pair_loader(16 // state.world_size)
    state, history = ftrain.fit(state, loader, max_epochs=2, log_every_n_steps=3)
    params = full_state_dict(state)
    if state.rank == 0:
        torch.save(params, out + ".pt")
        with open(out + ".json", "w") as f:
            json.dump({"history": history, "step": state.step, "world": state.world_size}, f)


class _Unsized:
    """An iterable of batches without ``len()`` (like an iterable dataset's loader)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def main():
    mode, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    if mode.startswith("gan"):
        return train_gan(out, mode)
    if mode == "ddp-eval":
        return evaluate_unevenly(out)
    if mode.startswith("ema"):
        return ema_run(out, mode)
    if mode == "sync-grads":
        return sync_outside_the_wrapper(out)
    if mode.startswith("weighting"):
        return weigh_unevenly(out, ftrain.FSDP if "fsdp" in mode else ftrain.DDP)
    if mode.startswith("predict"):
        return predict_in_order(out, ftrain.FSDP if "fsdp" in mode else ftrain.DDP)
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
    if mode == "short":  # an iterable without len(): rank 1 has one batch fewer
        batches = list(train)[: 3 - rank]
        ftrain.fit(state, _Unsized(batches), max_epochs=1)
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
