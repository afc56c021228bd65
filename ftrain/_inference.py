"""`inference`: the model of a state in code of your own, under its placement and precision."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import attrs
import torch
from torch import nn

from ._batch import cast_floating, move
from ._passes import autocast
from ._state import TrainState, check_live
from ._step import eval_mode
from ._streams import INFERENCE, seed_site, site_generator

__all__ = ["Inference", "inference"]


@attrs.frozen
class Inference:
    """What `inference` gives: the model to call and how to bring inputs to it.

    Attributes:
        model: the module to call (the state's model, unwrapped where the wrapper's forward
            would sync processes); submodules and methods can be called too.
        device: where inputs go.
        dtype: the dtype floating-point inputs are cast to (``*-true`` precision), or None.
        generator: a CPU `torch.Generator` seeded from the state's inference stream (seed,
            stream id, step, rank): draw sampling noise from it.
    """

    model: nn.Module
    device: torch.device
    dtype: torch.dtype | None
    generator: torch.Generator

    def move(self, inputs: Any) -> Any:
        """``inputs`` (tensors in any nesting) on the device, floating ones in the model's dtype."""
        inputs = move(inputs, self.device)
        return inputs if self.dtype is None else cast_floating(inputs, self.dtype)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the model on the moved arguments."""
        return self.model(*self.move(args), **self.move(kwargs))


@contextlib.contextmanager
def inference(state: TrainState) -> Iterator[Inference]:
    """Run the model of ``state`` in code of your own, under its placement and precision.

    Inside the block every module is in eval mode, no gradient is recorded, forwards autocast
    under ``*-mixed`` precision, and torch's default generator is seeded from the state's
    inference stream. Inputs go through ``run.move`` (or call ``run(...)``), which puts them on
    the state's device and casts floating-point ones under ``*-true`` precision, so a forward of
    your own (sampling images, generating text) runs as the training step would. Each module's
    ``training`` flag is restored on exit. Outputs are tensors on the state's device, in the
    compute dtype (``bfloat16`` under ``bf16-*``): convert them as you need
    (``.float().cpu()``).

    Args:
        state: a live state; left as it was.

    Yields:
        An `Inference`: ``run.model``, ``run.move(x)``, ``run(x)`` and ``run.generator``.

    Example:
        >>> import torch, ftrain
        >>> state = ftrain.testing.toy_state()
        >>> with ftrain.inference(state) as run:
        ...     x = torch.randn(5, 2, generator=run.generator)
        ...     y = run(x)
        >>> y.shape, y.requires_grad, state.model.training
        (torch.Size([5, 3]), False, True)
    """
    check_live(state, "inference")
    seed_site(state, INFERENCE)
    run = Inference(
        model=state.strategy.eval_module(state),
        device=state.device,
        dtype=state.batch_dtype,
        generator=site_generator(state, INFERENCE),
    )
    with eval_mode(state.model), torch.no_grad(), autocast(state):
        yield run
