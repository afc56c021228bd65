"""`ModelSummary` and `RichModelSummary`: the model's layers and parameter counts at the start."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import attrs
from torch import nn

from .._errors import check_int
from .._events import Event, FitStart
from .._optional import require
from .._state import TrainState

__all__ = ["LayerInfo", "ModelSummary", "RichModelSummary", "summarize"]


@attrs.frozen
class LayerInfo:
    """One row of a model summary."""

    name: str
    type: str
    params: int
    trainable: int


@attrs.frozen
class Summary:
    """Parameter counts of a model, layer by layer, and in total."""

    layers: tuple[LayerInfo, ...]
    total: int
    trainable: int
    size_mb: float

    @property
    def frozen(self) -> int:
        return self.total - self.trainable

    def rows(self) -> list[tuple[str, str, str, str]]:
        return [(x.name, x.type, f"{x.params:,}", f"{x.trainable:,}") for x in self.layers]

    def footer(self) -> list[str]:
        return [
            f"Trainable params: {self.trainable:,}",
            f"Frozen params: {self.frozen:,}",
            f"Total params: {self.total:,}",
            f"Estimated size of parameters and buffers: {self.size_mb:.3f} MB",
        ]


def summarize(model: nn.Module, max_depth: int = 1) -> Summary:
    """Count parameters per submodule down to ``max_depth`` (shared parameters counted once).

    Example:
        >>> import torch, ftrain
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> s = ftrain.callbacks.summarize(model)
        >>> [(layer.name, layer.params) for layer in s.layers], s.total
        ([('0', 40), ('1', 0), ('2', 18)], 58)
    """
    check_int("max_depth", max_depth, minimum=1)
    layers = []
    for name, module in model.named_modules():
        depth = name.count(".") + 1 if name else 0
        if depth == 0 or depth > max_depth:
            continue
        params = list(module.parameters())
        layers.append(
            LayerInfo(
                name=name,
                type=type(module).__name__,
                params=sum(p.numel() for p in params),
                trainable=sum(p.numel() for p in params if p.requires_grad),
            )
        )
    params = list(model.parameters())
    size = sum(p.numel() * p.element_size() for p in params)
    size += sum(b.numel() * b.element_size() for b in model.buffers())
    return Summary(
        layers=tuple(layers),
        total=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        size_mb=size / 1e6,
    )


class ModelSummary:
    """Print a table of the model's layers and parameter counts when `fit` starts (rank 0).

    An observer: returns the state unchanged; does I/O.

    Args:
        max_depth: how deep into nested modules to list layers.
        print_fn: where lines go (default: print to stderr).
    """

    def __init__(self, max_depth: int = 1, print_fn: Callable[[str], Any] | None = None):
        self.max_depth = max_depth
        self.print_fn = print_fn

    def __call__(self, state: TrainState, event: Event) -> TrainState:
        if isinstance(event, FitStart) and state.rank == 0:
            self.render(summarize(state.model, self.max_depth))
        return state

    def render(self, summary: Summary) -> None:
        header = ("Name", "Type", "Params", "Trainable")
        rows = [header, *summary.rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines = [fmt.format(*header), "-" * (sum(widths) + 6)]
        lines += [fmt.format(*r) for r in summary.rows()]
        lines += ["-" * (sum(widths) + 6), *summary.footer()]
        for line in lines:
            if self.print_fn is None:
                print(line, file=sys.stderr)
            else:
                self.print_fn(line)


class RichModelSummary(ModelSummary):
    """`ModelSummary` drawn as a rich table (needs the ``rich`` extra)."""

    def __init__(self, max_depth: int = 1, console: Any = None):
        super().__init__(max_depth)
        self.console = console

    def render(self, summary: Summary) -> None:
        rich_console = require("rich.console", "rich", "RichModelSummary")
        rich_table = require("rich.table", "rich", "RichModelSummary")
        table = rich_table.Table(title="Model summary")
        for col, justify in (("Name", "left"), ("Type", "left"), ("Params", "right"),
                             ("Trainable", "right")):  # fmt: skip
            table.add_column(col, justify=justify)
        for row in summary.rows():
            table.add_row(*row)
        console = self.console or rich_console.Console(stderr=True)
        console.print(table)
        for line in summary.footer():
            console.print(line)
