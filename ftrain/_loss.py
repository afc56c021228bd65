"""`supervised`: the ready-made loss function for ``(inputs, targets)`` batches."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import attrs
import torch
from torch import nn

from ._errors import check_type, describe

__all__ = ["Supervised", "supervised"]


@attrs.frozen
class Supervised:
    """``loss_fn(model, (inputs, targets))``: ``criterion(model(inputs), targets)``.

    Reports ``"acc"`` (top-1 accuracy over dimension 1) when ``accuracy`` is True, or when it is
    None and the batch looks like classification: integer targets with one dimension fewer than
    the outputs.
    """

    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    accuracy: bool | None = None

    def __call__(self, model: nn.Module, batch: Any) -> Any:
        if isinstance(batch, Mapping | str | bytes | torch.Tensor):
            _not_a_pair(batch)
        try:
            inputs, targets = batch
        except (TypeError, ValueError):
            _not_a_pair(batch)
        if type(inputs) is not torch.Tensor and _is_text(inputs):
            msg = (
                "`batch` for ftrain.supervised must hold tensors (got inputs of str: "
                f"{describe(inputs)}). Turn text into tensors first (tokenize it in the "
                "dataset or the loader's collate_fn)."
            )
            raise TypeError(msg)
        outputs = model(inputs)
        loss = self.criterion(outputs, targets)
        acc = self.accuracy
        if acc is None:
            acc = (
                not targets.is_floating_point()
                and not targets.is_complex()
                and outputs.ndim == targets.ndim + 1
            )
        if not acc:
            return loss
        correct = outputs.detach().argmax(1) == targets
        return loss, {"acc": correct.float().mean()}


def _is_text(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, list | tuple) and any(isinstance(v, str) for v in value)
    )


def _not_a_pair(batch: Any) -> NoReturn:
    size = f" of length {len(batch)}" if isinstance(batch, list | tuple) else ""
    keys = f" with keys {list(batch)[:5]}" if isinstance(batch, Mapping) else ""
    msg = (
        "`batch` for ftrain.supervised must be a pair (inputs, targets) (got "
        f"{type(batch).__name__}{size}{keys}). For other batch layouts write your own "
        "loss_fn(model, batch)."
    )
    raise TypeError(msg)


def supervised(
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    accuracy: bool | None = None,
) -> Supervised:
    """Build ``loss_fn(model, (inputs, targets)) = criterion(model(inputs), targets)``.

    Args:
        criterion: a loss such as ``torch.nn.CrossEntropyLoss()`` returning a scalar.
        accuracy: report top-1 accuracy as ``"acc"``: True, False, or None to decide from the
            targets (integer class labels mean classification).

    Returns:
        A loss function for `TrainState.create`.

    Example:
        >>> import torch, ftrain
        >>> loss_fn = ftrain.supervised(torch.nn.CrossEntropyLoss())
        >>> model = torch.nn.Linear(4, 3)
        >>> loss, metrics = loss_fn(model, (torch.randn(8, 4), torch.randint(0, 3, (8,))))
        >>> sorted(metrics)
        ['acc']
    """
    if not callable(criterion) or isinstance(criterion, type):
        hint = f" Instantiate it: {criterion.__name__}()." if isinstance(criterion, type) else ""
        msg = (
            "`criterion` must be a callable loss such as torch.nn.CrossEntropyLoss() "
            f"(got {describe(criterion)}).{hint}"
        )
        raise TypeError(msg)
    check_type("accuracy", accuracy, (bool, type(None)), "True, False or None")
    return Supervised(criterion=criterion, accuracy=accuracy)
