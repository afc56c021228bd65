"""A word-level LSTM language model trained with truncated backpropagation through time.

The corpus is made in code (sentences of a small grammar), so it runs offline in seconds. As in
PyTorch's word-language-model example, the token stream is cut into ``--batch-size`` columns and
read in windows of ``--bptt`` tokens; the LSTM's hidden state is carried from one window to the
next and detached between them. In ftrain the hidden state is the state's *carry*: the loss
function receives it in ``ctx.carry`` and returns the next one in ``Loss(carry=...)``, so the
step stays pure, and ``carry_init`` makes a fresh one at the start of every epoch and every
evaluation. No closure, no callback; checkpoints hold the carry, so a run killed mid-epoch
resumes bit for bit (on several processes too: each keeps its own carry).

    python examples/lstm_lm.py                               # one process
    python examples/lstm_lm.py --ckpt runs/lm --max-steps 40 # stop mid-epoch; run again to resume
    torchrun --nproc_per_node=2 examples/lstm_lm.py --ddp    # each process reads its own columns
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import ftrain
from ftrain.callbacks import Checkpoint

SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the bird", "a child"]
VERBS = ["sees", "likes", "chases", "finds", "watches"]
OBJECTS = ["the ball", "a fish", "the red house", "some bread", "the river", "a small boat"]
ENDINGS = ["today", "at night", "in the park", "again", "with joy"]
HIDDEN = 64


def make_corpus(sentences: int, seed: int) -> list[str]:
    """Words of ``sentences`` sentences of a small grammar, drawn with ``seed``."""
    rng = random.Random(seed)
    words: list[str] = []
    for _ in range(sentences):
        parts = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
        if rng.random() < 0.5:
            parts.append(rng.choice(ENDINGS))
        words += [*" ".join(parts).split(), "<eos>"]
    return words


class Windows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``(input, target)`` windows of ``bptt`` tokens over ``columns`` parallel streams.

    Item ``i`` is window ``i // groups`` of column group ``i % groups``: with ``groups`` equal to
    the number of processes, ftrain's sampler gives each process every ``groups``-th item, so each
    reads its own columns window after window, as truncated BPTT needs.
    """

    def __init__(self, tokens: torch.Tensor, columns: int, bptt: int, groups: int = 1) -> None:
        usable = len(tokens) // columns * columns
        self.data = tokens[:usable].view(columns, -1).t().contiguous()  # (time, columns)
        self.bptt, self.groups = bptt, groups
        self.windows = (len(self.data) - 1) // bptt
        self.width = columns // groups

    def __len__(self) -> int:
        return self.windows * self.groups

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        window, group = divmod(i, self.groups)
        start, cols = window * self.bptt, slice(group * self.width, (group + 1) * self.width)
        return (
            self.data[start : start + self.bptt, cols],
            self.data[start + 1 : start + 1 + self.bptt, cols],
        )


def one_window(items: list[Any]) -> Any:
    return items[0]  # each item is already a batch of columns


class LanguageModel(nn.Module):
    def __init__(self, vocab: int, embed: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, HIDDEN)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(HIDDEN, vocab)

    def forward(self, x: torch.Tensor, carry: Any) -> tuple[torch.Tensor, Any]:
        out, carry = self.lstm(self.drop(self.embed(x)), carry)
        return self.head(self.drop(out)), carry


def zero_carry(model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The carry at the start of every epoch and evaluation: a zero hidden and cell state."""
    inputs, _ = batch
    h = torch.zeros(1, inputs.shape[1], HIDDEN, device=inputs.device)
    return h, h.clone()


def lm_loss(model: nn.Module, batch: Any, ctx: ftrain.StepContext) -> ftrain.Loss:
    inputs, targets = batch
    logits, carry = model(inputs, ctx.carry)
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    return ftrain.Loss(loss, carry=carry)  # ftrain detaches it: truncated BPTT


def build(args: argparse.Namespace) -> tuple[ftrain.TrainState, DataLoader, DataLoader]:
    words = make_corpus(args.sentences, seed=0)
    vocab = {w: i for i, w in enumerate(sorted(set(words)))}
    tokens = torch.tensor([vocab[w] for w in words])
    cut = int(0.9 * len(tokens))
    torch.manual_seed(args.seed)  # model initialisation; training randomness comes from the state
    state = ftrain.TrainState.create(
        model=LanguageModel(len(vocab)),
        optimizer=lambda p: torch.optim.Adam(p, lr=args.lr),
        loss_fn=lm_loss,
        carry_init=zero_carry,
        seed=args.seed,
    )
    state = ftrain.place(state, ftrain.DDP(timeout_s=120.0) if args.ddp else "cpu")
    groups = state.world_size
    train = Windows(tokens[:cut], args.batch_size, args.bptt, groups)
    val = Windows(tokens[cut:], args.batch_size, args.bptt, groups)
    return (
        state,
        DataLoader(train, batch_size=1, collate_fn=one_window),
        DataLoader(val, batch_size=1, collate_fn=one_window),
    )


def main(argv: Sequence[str] | None = None) -> ftrain.TrainState:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--sentences", type=int, default=3000, help="size of the corpus")
    p.add_argument("--max-steps", type=int, default=None, help="stop early (a mid-epoch cut)")
    p.add_argument("--batch-size", type=int, default=16, help="parallel columns of the stream")
    p.add_argument("--bptt", type=int, default=20, help="tokens per window")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt", default=None, help="checkpoint directory (resumed when it has one)")
    p.add_argument("--ddp", action="store_true", help="run under torchrun with DDP")
    p.add_argument("--save", default=None, help="write the final state here")
    args = p.parse_args(argv)

    state, train, val = build(args)
    callbacks = [] if args.ckpt is None else [Checkpoint(args.ckpt, every_n_steps=10)]
    state, history = ftrain.fit(
        state,
        (train, val),
        callbacks,
        max_epochs=args.epochs,
        max_steps=args.max_steps,
        log_every_n_steps=5,
        resume=args.ckpt,
    )
    if args.save is not None:
        ftrain.save(state, args.save)
    if state.rank == 0 and history:
        row = history[-1]
        print(
            f"lstm lm: {state.epoch} epochs, {state.step} steps on {state.world_size} "
            f"process(es); train_loss {row['train_loss']:.3f}, val_loss {row['val_loss']:.3f}, "
            f"val perplexity {math.exp(row['val_loss']):.2f}"
        )
    return state


if __name__ == "__main__":
    main()
