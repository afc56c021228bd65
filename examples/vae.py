"""A variational autoencoder on handwritten digits, trained with `ftrain.fit`.

It runs offline on scikit-learn's digits (1,797 real 8x8 digits). The loss is the negative ELBO
*summed* over the batch, as in the PyTorch VAE example; `ftrain.Loss(..., reduction="sum")` says
so, so the gradient is that of the sum while the logs show nats per digit. After every epoch it
decodes latent noise drawn from the state's inference stream into a grid of sampled digits,
``samples-epoch<N>.png`` in ``--out``, through `ftrain.inference` (the model under the state's
placement and precision, in eval mode, without gradients).

    python examples/vae.py                        # a few seconds on 2 CPU cores
    python examples/vae.py --precision bf16-mixed # the sampling autocasts like the steps
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ftrain


class VAE(nn.Module):
    """An MLP encoder to a Gaussian latent and an MLP decoder to pixel logits."""

    def __init__(self, pixels: int = 64, hidden: int = 128, latent: int = 8) -> None:
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(nn.Linear(pixels, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, pixels)
        )

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel logits for latent codes ``z``."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(x.flatten(1))
        mu, logvar = self.mu(h), self.logvar(h)
        # The reparameterisation noise comes from the step's own random stream.
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar


def elbo(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> ftrain.Loss:
    """The negative ELBO summed over the batch; logged per digit (reconstruction + KL)."""
    x, _ = batch
    logits, mu, logvar = model(x)
    target = x.flatten(1).to(logits.dtype)
    recon = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    n = len(x)
    per_digit = {"recon": recon.detach() / n, "kl": kl.detach() / n}
    return ftrain.Loss(recon + kl, metrics=per_digit, count=n, reduction="sum")


def load_digits(batch_size: int, seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """scikit-learn's 8x8 digits in [0, 1] as (train, val) loaders, an 80/20 split."""
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        sys.exit("The digits dataset needs scikit-learn: pip install 'torch-ftrain[examples]'")
    data = sk_digits()
    x = torch.tensor(data.images, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * len(x))
    train, val = order[:cut], order[cut:]
    return (
        DataLoader(TensorDataset(x[train], y[train]), batch_size=batch_size, shuffle=True),
        DataLoader(TensorDataset(x[val], y[val]), batch_size=256),
    )


def sample_digits(state: ftrain.TrainState, n: int = 64) -> torch.Tensor:
    """Decode ``n`` latent draws into 8x8 digits, under the state's placement and precision."""
    with ftrain.inference(state) as run:
        z = torch.randn(n, run.model.latent, generator=run.generator)
        pixels = torch.sigmoid(run.model.decode(run.move(z)))
    return pixels.float().cpu().reshape(n, 8, 8)


def save_grid(digits: torch.Tensor, path: Path) -> None:
    """Save digits as one PNG grid (8 per row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (len(digits) + 7) // 8
    grid = torch.ones(rows * 9 - 1, 8 * 9 - 1)
    for i, digit in enumerate(digits):
        r, c = divmod(i, 8)
        grid[r * 9 : r * 9 + 8, c * 9 : c * 9 + 8] = digit
    big = grid.repeat_interleave(4, 0).repeat_interleave(4, 1)  # 4x4 screen pixels per pixel
    plt.imsave(path, big.numpy(), cmap="gray_r", vmin=0.0, vmax=1.0)


def main(argv: list[str] | None = None) -> float:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--limit-batches", type=int, default=None)
    p.add_argument("--precision", default="32-true")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/vae")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(args.seed)
    state = ftrain.TrainState.create(
        model=VAE(),
        optimizer=lambda params: torch.optim.Adam(params, lr=args.lr),
        loss_fn=elbo,
        seed=args.seed,
    )
    state = ftrain.place(state, ftrain.SingleDevice(args.device, precision=args.precision))

    def save_samples(state: ftrain.TrainState, event: ftrain.EpochEnd) -> ftrain.TrainState:
        if state.rank == 0:
            save_grid(sample_digits(state), out / f"samples-epoch{event.epoch + 1}.png")
        return state

    state, history = ftrain.fit(
        state,
        load_digits(args.batch_size, args.seed),
        [ftrain.on(ftrain.EpochEnd, save_samples)],
        max_epochs=args.epochs,
        limit_train_batches=args.limit_batches,
    )
    last = history[-1]
    print(
        f"vae: {state.epoch} epochs, {state.step} steps, val_loss {last['val_loss']:.2f} nats "
        f"per digit (recon {last['val_recon']:.2f}, kl {last['val_kl']:.2f}); samples in {out}"
    )
    return float(last["val_loss"])


if __name__ == "__main__":
    main()
