"""``mnist.py``'s model and data, trained by your own loop made of ftrain's step functions.

No `fit`: the loop below is all there is. It shows the pieces `fit` is made of (`train_step`,
`eval_epoch`, `prepare_loader`) and where your own logic goes: here a hand-written early stop
and a log line every 50 steps that syncs once per log, not once per step.

    python examples/custom_loop.py
"""

from __future__ import annotations

import argparse
import time

import torch
from mnist import build_model, load_digits
from torch import nn

import ftrain


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--limit-batches", type=int, default=None)
    p.add_argument("--patience", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    train, val = load_digits(args.batch_size, args.seed)
    state = ftrain.TrainState.create(
        model=build_model(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
        seed=args.seed,
    )
    state = ftrain.place(state, "auto")
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(state.optimizer, T_max=args.epochs)
    # Seeded, resumable shuffling: the order of each epoch is a function of (seed, epoch).
    train = ftrain.prepare_loader(state, train)

    best, waited, start = 0.0, 0, time.perf_counter()
    for epoch in range(args.epochs):
        train.sampler.set_epoch(epoch)
        losses = []
        for i, batch in enumerate(train):
            if args.limit_batches is not None and i >= args.limit_batches:
                break
            state, metrics = ftrain.train_step(state, batch)  # no .to(), no host sync
            losses.append(metrics["loss"])
            if state.step % 50 == 0:
                print(f"step {state.step}: loss {torch.stack(losses[-50:]).mean():.4f}")
        scheduler.step()
        val_metrics = ftrain.eval_epoch(state, val)
        print(f"epoch {epoch}: val_loss {val_metrics['loss']:.4f} val_acc {val_metrics['acc']:.4f}")
        if val_metrics["acc"] > best:
            best, waited = val_metrics["acc"], 0
        else:
            waited += 1
            if waited >= args.patience:
                print(f"no improvement for {args.patience} epochs: stopping")
                break
    print(
        f"custom loop: {state.step} steps in {time.perf_counter() - start:.1f} s; "
        f"val_acc {val_metrics['acc']:.4f} (best {best:.4f})"
    )
    return float(val_metrics["acc"])


if __name__ == "__main__":
    main()
