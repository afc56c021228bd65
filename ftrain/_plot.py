"""`plot_history`: training curves as a PNG (needs the ``plot`` extra, matplotlib)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._optional import require

__all__ = ["plot_history"]


def plot_history(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    metrics: Sequence[str] | None = None,
) -> Path:
    """Draw the curves of `fit`'s history, one panel per metric, train and val together.

    Args:
        history: the list of rows `fit` returned (or several fits' rows concatenated).
        path: the PNG file to write.
        metrics: base names to plot (``"loss"``, ``"acc"``); default: every ``train_*`` /
            ``val_*`` metric found.

    Returns:
        The path written.

    Example:
        >>> import tempfile, os, ftrain
        >>> rows = [{"epoch": 0, "train_loss": 1.0, "val_loss": 1.1},
        ...         {"epoch": 1, "train_loss": 0.5, "val_loss": 0.7}]
        >>> out = ftrain.plot_history(rows, os.path.join(tempfile.mkdtemp(), "curves.png"))
        >>> out.read_bytes()[:4] == b"\\x89PNG"
        True
    """
    require("matplotlib", "plot", "plot_history")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = [r for r in history if "epoch" in r]
    if not rows:
        msg = "`history` must hold at least one row with an 'epoch' (got none)."
        raise ValueError(msg)
    found = {k.split("_", 1)[1] for r in rows for k in r if k.startswith(("train_", "val_"))}
    names = list(metrics) if metrics is not None else sorted(found)
    if not names:
        msg = "`history` has no train_* or val_* metrics to plot."
        raise ValueError(msg)
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for split in ("train", "val"):
            key = f"{split}_{name}"
            points = [(r["step"] if "step" in r else r["epoch"], r[key]) for r in rows if key in r]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=split)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
