"""The same training with Lightning, Accelerate and Ignite, for `overhead.py --subprocess`.

Each function takes (model, optimizer factory, loader, epochs, device, precision) and trains;
`overhead.py` times the epochs from the loader's collate function, the same way for every runner.
Imported only in a child process that runs that peer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def lightning(
    model: nn.Module,
    make_opt: Callable[..., Any],
    loader: Any,
    epochs: int,
    device: str,
    precision: str,
) -> None:
    import lightning as L

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.crit = nn.CrossEntropyLoss()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return self.crit(self.model(x), y)

        def configure_optimizers(self) -> Any:
            return make_opt(self.parameters())

    trainer = L.Trainer(
        max_epochs=epochs, accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1, precision=precision, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Module(), loader)


def accelerate(
    model: nn.Module,
    make_opt: Callable[..., Any],
    loader: Any,
    epochs: int,
    device: str,
    precision: str,
) -> None:
    from accelerate import Accelerator

    acc = Accelerator(
        cpu=not device.startswith("cuda"),
        mixed_precision="bf16" if precision == "bf16-mixed" else "no",
    )
    opt = make_opt(model.parameters())
    model, opt, loader = acc.prepare(model, opt, loader)
    crit = nn.CrossEntropyLoss()
    for _ in range(epochs):
        losses = []
        for x, y in loader:
            loss = crit(model(x), y)
            acc.backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        torch.stack(losses).mean().item()


def ignite(
    model: nn.Module,
    make_opt: Callable[..., Any],
    loader: Any,
    epochs: int,
    device: str,
    precision: str,
) -> None:
    from ignite.engine import create_supervised_trainer

    dev = torch.device(device)
    model.to(dev)
    bf16 = precision == "bf16-mixed"

    def model_fn(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(dev.type, torch.bfloat16) if bf16 else contextlib.nullcontext():
            return m(x)

    trainer = create_supervised_trainer(
        model, make_opt(model.parameters()), nn.CrossEntropyLoss(), device=dev,
        non_blocking=True, model_fn=model_fn,
    )  # fmt: skip
    trainer.run(loader, max_epochs=epochs)
