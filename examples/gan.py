"""A DCGAN on scikit-learn's 8x8 digits, trained with `ftrain.fit`: two models, two optimizers.

One `TrainState` holds the generator and the discriminator, each trained by its own phase: every
step, the discriminator's phase scores real digits and a generated batch, and hands that batch to
the generator's phase, which is scored by the discriminator just updated (as in the PyTorch
DCGAN example: the generator runs forward once per step). Each phase backpropagates only into its
own parameters, so nothing needs ``requires_grad`` toggling or a ``zero_grad`` in the right place.
The noise generator is run state (``state.extras``): it is checkpointed with everything else, so
``--resume`` continues the run exactly. A PNG grid of digits generated from fixed noise is saved
after every epoch.

    python examples/gan.py                       # offline, about half a minute on 2 CPU cores
    python examples/gan.py --epochs 40 --out runs/gan --resume
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

import ftrain
from ftrain.callbacks import Checkpoint

NZ = 16


def generator() -> nn.Module:
    return nn.Sequential(
        nn.ConvTranspose2d(NZ, 32, 4, 1, 0, bias=False), nn.BatchNorm2d(32), nn.ReLU(True),  # 4x4
        nn.ConvTranspose2d(32, 1, 4, 2, 1, bias=False), nn.Tanh(),  # 8x8
    )  # fmt: skip


def discriminator() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),  # 4x4
        nn.Conv2d(32, 64, 4, 2, 1, bias=False), nn.BatchNorm2d(64), nn.LeakyReLU(0.2, True),
        nn.Conv2d(64, 1, 2, 1, 0, bias=False), nn.Sigmoid(), nn.Flatten(0),  # one score each
    )  # fmt: skip


def d_loss(model: nn.Module, real: torch.Tensor, ctx: ftrain.StepContext) -> ftrain.Loss:
    """The discriminator's phase: real digits score 1, generated ones 0."""
    bce = nn.functional.binary_cross_entropy
    b = len(real)
    noise = torch.randn(b, NZ, 1, 1, generator=ctx.extras["noise"]).to(real.device)
    fake = model["generator"](noise)
    real_score = model["discriminator"](real)
    fake_score = model["discriminator"](fake.detach())
    loss = bce(real_score, torch.ones_like(real_score)) + bce(
        fake_score, torch.zeros_like(fake_score)
    )
    metrics = {"real_score": real_score.mean().detach(), "fake_score": fake_score.mean().detach()}
    return ftrain.Loss(loss, metrics=metrics, handoff={"fake": fake})


def g_loss(model: nn.Module, real: torch.Tensor, ctx: ftrain.StepContext) -> torch.Tensor:
    """The generator's phase: make the (just updated) discriminator score the batch as real."""
    score = model["discriminator"](ctx.handoff["fake"])
    return nn.functional.binary_cross_entropy(score, torch.ones_like(score))


def make_state(lr: float, seed: int) -> ftrain.TrainState:
    torch.manual_seed(seed)
    adam = lambda params: torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))  # noqa: E731
    return ftrain.TrainState.create(
        model={"generator": generator(), "discriminator": discriminator()},
        phases=[
            ftrain.Phase("d", optimizes="discriminator", optimizer=adam, loss_fn=d_loss),
            ftrain.Phase("g", optimizes="generator", optimizer=adam, loss_fn=g_loss),
        ],
        extras={
            "noise": torch.Generator().manual_seed(seed),
            "fixed_noise": torch.randn(64, NZ, 1, 1, generator=torch.Generator().manual_seed(1)),
        },
        seed=seed,
    )


def digits(batch_size: int) -> DataLoader:
    """scikit-learn's 1,797 handwritten 8x8 digits, scaled to [-1, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        sys.exit("This example needs scikit-learn: pip install 'torch-ftrain[examples]'")
    x = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    return DataLoader(x, batch_size=batch_size, shuffle=True, drop_last=True)


def save_grid(out: Path):
    """A callback that writes an 8x8 grid of digits generated from the fixed noise per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def write(state: ftrain.TrainState, event: ftrain.EpochEnd) -> ftrain.TrainState:
        if state.rank != 0:
            return state
        generator = state.model["generator"]
        training = generator.training
        generator.eval()  # BatchNorm's running statistics, as at sampling time
        with torch.no_grad():
            images = generator(state.extras["fixed_noise"].to(state.device)).cpu()
        generator.train(training)
        grid = images.view(8, 8, 8, 8).permute(0, 2, 1, 3).reshape(64, 64)
        plt.imsave(out / f"epoch-{event.epoch:03d}.png", grid.numpy(), cmap="gray_r")
        return state

    return ftrain.on(ftrain.EpochEnd, write)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--limit-batches", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/gan"))
    parser.add_argument("--resume", action="store_true", help="continue from --out's checkpoints")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    state = make_state(args.lr, seed=0)
    callbacks = [save_grid(args.out), Checkpoint(args.out / "checkpoints", keep_last=1)]
    state, history = ftrain.fit(
        state,
        digits(args.batch_size),
        callbacks,
        max_epochs=args.epochs,
        limit_train_batches=args.limit_batches,
        resume=args.out / "checkpoints" if args.resume else None,
    )
    last = history[-1]
    print(
        f"gan: {state.epoch} epochs, {state.step} steps, d_loss {last['train_d_loss']:.3f}, "
        f"g_loss {last['train_g_loss']:.3f}, D(real) {last['train_d_real_score']:.2f}, "
        f"D(G(z)) {last['train_d_fake_score']:.2f}; digits in {args.out}/epoch-*.png"
    )


if __name__ == "__main__":
    main()
