"""Precision settings shared by every strategy."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = [
    "PRECISIONS",
    "apply_true_precision",
    "autocast_dtype",
    "check_precision",
    "make_scaler",
    "true_dtype",
]

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true")
"""``*-mixed``: float32 weights, autocast compute. ``*-true``: weights cast to the dtype."""


def check_precision(_instance: object, _attribute: object, value: str) -> None:
    if value not in PRECISIONS:
        msg = f"`precision` must be one of {', '.join(map(repr, PRECISIONS))} (got {value!r})."
        raise ValueError(msg)


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


def true_dtype(precision: str) -> torch.dtype | None:
    return {"bf16-true": torch.bfloat16, "16-true": torch.float16}.get(precision)


def apply_true_precision(model: nn.Module, precision: str) -> None:
    dtype = true_dtype(precision)
    if dtype is not None:
        model.to(dtype)


def make_scaler(precision: str, device: torch.device) -> Any:
    # Only float16 needs loss scaling: bfloat16 has float32's exponent range.
    if precision != "16-mixed":
        return None
    return torch.amp.GradScaler(device.type)
