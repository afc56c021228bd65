"""Sample-weighted means of step metrics, kept on the device until one sync.

Per step, `MeanAccumulator.add` only appends references (no tensor op, no sync). `sums` does
the arithmetic for the whole interval at once: a few stacks, one collective across processes (when
placed on several) and one ``tolist()`` host sync.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ._errors import NonFiniteError

__all__ = ["MeanAccumulator", "sample_count"]


def sample_count(metrics: Mapping[str, Any], default: int) -> Any:
    """The batch's sample count: ``metrics["count"]`` if the loss reports one, else ``default``."""
    return metrics.get("count", default)


class MeanAccumulator:
    """Collect ``(metrics, count)`` per batch; `sums` returns ``(weighted sum, count)`` per key."""

    __slots__ = ("counts", "first_step", "values")

    def __init__(self, first_step: int = 0) -> None:
        self.values: list[Mapping[str, Any]] = []
        self.counts: list[Any] = []
        self.first_step = first_step

    def add(self, metrics: Mapping[str, Any], count: Any) -> None:
        self.values.append(metrics)
        self.counts.append(count)

    def __len__(self) -> int:
        return len(self.values)

    def sums(
        self, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> dict[str, tuple[float, float]]:
        """Per key ``(weighted sum, total count)`` over this accumulator (and all processes)."""
        if not self.values:
            if reduce_sum is None:
                return {}
            # Other ranks may have data: still join the collective with zeros.
            reduce_sum(torch.zeros(0, dtype=torch.float64))
            return {}
        keys = list(dict.fromkeys(k for m in self.values for k in m if k != "count"))
        uniform = all(len(m) == len(self.values[0]) for m in self.values)
        device = next(
            (v.device for m in self.values for v in m.values() if isinstance(v, torch.Tensor)), None
        )
        counts = _as_column(self.counts, device)
        rows = []
        for k in keys:
            if uniform:
                vals, n = _as_column([m[k] for m in self.values], device), counts
            else:  # a metric only some batches report (grad_norm under accumulation)
                have = [i for i, m in enumerate(self.values) if k in m]
                vals = _as_column([self.values[i][k] for i in have], device)
                n = _as_column([self.counts[i] for i in have], device)
            rows.append(torch.stack([(vals * n).sum(), n.sum()]))
        table = (
            torch.stack(rows).flatten()
            if rows
            else torch.zeros(0, dtype=torch.float64, device=device)
        )
        if reduce_sum is not None:
            table = reduce_sum(table)
        flat = table.tolist()  # the one host sync
        return {k: (flat[2 * i], flat[2 * i + 1]) for i, k in enumerate(keys)}

    def first_nonfinite(self, key: str = "loss") -> int | None:
        """Index of the first batch whose ``key`` is not finite (syncs; for error messages)."""
        vals = _as_column([m[key] for m in self.values if key in m])
        bad = (~torch.isfinite(vals)).nonzero()
        return int(bad[0, 0]) if len(bad) else None


def _as_column(values: list[Any], device: torch.device | None = None) -> torch.Tensor:
    """A float64 column on ``device`` from tensors and/or Python numbers (no sync for numbers)."""
    if all(isinstance(v, torch.Tensor) for v in values):
        return torch.stack([v.reshape(()) for v in values]).to(torch.float64)
    if not any(isinstance(v, torch.Tensor) for v in values):
        return torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    return torch.stack(
        [
            v.reshape(()).to(torch.float64)
            if isinstance(v, torch.Tensor)
            else torch.tensor(float(v), dtype=torch.float64, device=device)
            for v in values
        ]
    )


def means(sums: Mapping[str, tuple[float, float]]) -> dict[str, float]:
    """Weighted means from ``(sum, count)`` pairs."""
    return {k: (s / n if n else math.nan) for k, (s, n) in sums.items()}


def merge_sums(
    a: Mapping[str, tuple[float, float]], b: Mapping[str, tuple[float, float]]
) -> dict[str, tuple[float, float]]:
    """Add two ``(sum, count)`` tables key by key."""
    out = dict(a)
    for k, (s, n) in b.items():
        s0, n0 = out.get(k, (0.0, 0.0))
        out[k] = (s0 + s, n0 + n)
    return out


def check_finite(
    values: Mapping[str, float], acc: MeanAccumulator, where: str, key: str = "loss"
) -> None:
    """Raise `NonFiniteError` naming the step when ``values[key]`` is NaN or infinite."""
    v = values.get(key)
    if v is None or math.isfinite(v):
        return
    idx = acc.first_nonfinite(key)
    at = (
        f"in the {_ordinal(idx + 1)} batch after step {acc.first_step}"
        if idx is not None
        else "on another process"
    )
    msg = (
        f"The {key} became {v} during {where} ({at}). "
        "The weights in memory may be poisoned; training stopped before any further checkpoint. "
        "Lower the learning rate, clip gradients (ftrain.with_grad_clip) or check the data."
    )
    raise NonFiniteError(msg)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
