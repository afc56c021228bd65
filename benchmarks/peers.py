"""The same training with Lightning, Accelerate and Ignite, for `overhead.py --subprocess`.

Each function takes (model, optimizer factory, loader, epochs) and returns the wall time of each
epoch after the first (a warm-up). Imported only in a child process that runs that peer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def lightning(
    model: nn.Module, make_opt: Callable[..., Any], loader: Any, epochs: int
) -> list[float]:
    import lightning as L

    times: list[float] = []

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

        def on_train_epoch_start(self) -> None:
            self._t0 = time.perf_counter()

        def on_train_epoch_end(self) -> None:
            times.append(time.perf_counter() - self._t0)

    trainer = L.Trainer(
        max_epochs=epochs + 1, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Module(), loader)
    return times[1:]


def accelerate(
    model: nn.Module, make_opt: Callable[..., Any], loader: Any, epochs: int
) -> list[float]:
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    opt = make_opt(model.parameters())
    model, opt, loader = acc.prepare(model, opt, loader)
    crit = nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs + 1):
        t0 = time.perf_counter()
        losses = []
        for x, y in loader:
            loss = crit(model(x), y)
            acc.backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
        torch.stack(losses).mean().item()
        times.append(time.perf_counter() - t0)
    return times[1:]


def ignite(model: nn.Module, make_opt: Callable[..., Any], loader: Any, epochs: int) -> list[float]:
    from ignite.engine import Events, create_supervised_trainer

    trainer = create_supervised_trainer(model, make_opt(model.parameters()), nn.CrossEntropyLoss())
    times: list[float] = []
    marks: dict[str, float] = {}
    trainer.add_event_handler(
        Events.EPOCH_STARTED, lambda e: marks.__setitem__("t", time.perf_counter())
    )
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: times.append(time.perf_counter() - marks["t"])
    )
    trainer.run(loader, max_epochs=epochs + 1)
    return times[1:]
