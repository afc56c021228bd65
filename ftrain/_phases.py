"""`Phase`: one optimizer's part of a training step, and how a state's phases are built.

A single-optimizer state has one unnamed phase (``name=""``) that optimizes the whole model; a
state built with ``phases=[...]`` has one named phase per optimizer, run in the declared order
every step. Both are the same record, so the step, the checkpoint and placement read one
representation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, Literal

import attrs
import torch

from ._errors import CallbackSignatureError, check_choice, check_int, describe

__all__ = ["Phase", "is_due", "phase_params", "takes_context"]


def _names(value: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@attrs.frozen
class Phase:
    """One optimizer's part of a step: what it trains, with which optimizer and loss.

    Give a list of phases to ``TrainState.create(model={...}, phases=[...])``; the step runs them
    in that order, each with its own forward and backward pass, so a later phase sees the
    parameters an earlier one just updated (a DCGAN's generator loss uses the discriminator
    updated in the same step).

    Attributes:
        name: the phase's name; its metrics are logged as ``f"{name}_loss"`` and so on, and its
            optimizer and scheduler are saved under it.
        optimizes: the name (or names) of the parts of ``state.model`` it trains: keys of the
            dict given as ``model``, or any submodule path (``"encoder.head"``).
        optimizer: a factory ``params -> Optimizer`` called with those parts' parameters, or an
            Optimizer over them. In a state, the built Optimizer.
        loss_fn: ``loss_fn(model, batch)`` or ``loss_fn(model, batch, ctx)``; ``model`` is the
            whole ``state.model`` (all parts), ``ctx`` a `ftrain.StepContext` whose ``handoff``
            holds what earlier phases of the step handed over with ``Loss(handoff=...)``.
        scheduler: an LR scheduler factory ``optimizer -> scheduler`` (or a scheduler), or None.
        every: run this phase only on steps where ``step % every == every - 1``: with
            ``every=5`` it runs after the 4th, 9th, ... step's earlier phases, so a WGAN critic
            phase (every step) trains five times per generator update, as in WGAN-GP's
            algorithm.
        scheduler_interval: ``"step"`` (after each update of this phase) or ``"epoch"``;
            by default ``"epoch"`` for ``ReduceLROnPlateau`` and ``"step"`` for the others.
        scheduler_monitor: the metric a ``ReduceLROnPlateau`` scheduler steps on, as logged
            (e.g. ``"val_g_loss"``); see `ftrain.step_scheduler`.

    Example:
        >>> import torch, ftrain
        >>> Phase = ftrain.Phase
        >>> d = Phase("d", optimizes="disc", optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        ...           loss_fn=lambda model, batch: model["disc"](batch).mean())
        >>> d.name, d.optimizes, d.every
        ('d', ('disc',), 1)
    """

    name: str = attrs.field(validator=attrs.validators.instance_of(str))
    optimizes: tuple[str, ...] = attrs.field(kw_only=True, converter=_names)
    optimizer: Any = attrs.field(kw_only=True)
    loss_fn: Callable[..., Any] = attrs.field(kw_only=True)
    scheduler: Any = attrs.field(default=None, kw_only=True)
    every: int = attrs.field(default=1, kw_only=True)
    scheduler_interval: Literal["step", "epoch"] | None = attrs.field(default=None, kw_only=True)
    scheduler_monitor: str | None = attrs.field(default=None, kw_only=True)
    takes_context: bool = attrs.field(init=False, eq=False, repr=False)
    """Whether ``loss_fn`` takes a third argument (decided once, from its signature)."""

    def __attrs_post_init__(self) -> None:
        where = f"Phase {self.name!r}: `loss_fn`" if self.name else "`loss_fn`"
        object.__setattr__(self, "takes_context", takes_context(self.loss_fn, where))
        check_int("every", self.every, minimum=1)
        if self.scheduler_interval is not None:
            check_choice("scheduler_interval", self.scheduler_interval, ("step", "epoch"))
        for part in self.optimizes:
            if not isinstance(part, str) or not part:
                msg = (
                    f"Phase {self.name!r}: `optimizes` must name parts of the model (strings), "
                    f"got {describe(part)}."
                )
                raise TypeError(msg)


def is_due(phase: Phase, step: int) -> bool:
    """Whether ``phase`` runs at ``step``: every step, or where ``step % every == every - 1``."""
    every = phase.every
    return every == 1 or step % every == every - 1


def takes_context(loss_fn: object, where: str = "`loss_fn`") -> bool:
    """Whether ``loss_fn`` is called as ``loss_fn(model, batch, ctx)``; checks it is callable."""
    if isinstance(loss_fn, torch.nn.modules.loss._Loss) or (
        isinstance(loss_fn, type) and issubclass(loss_fn, torch.nn.Module)
    ):
        msg = (
            f"{where} must be a function loss_fn(model, batch) -> loss, not a criterion (got "
            f"{describe(loss_fn)}): a criterion compares outputs with targets and never calls "
            "the model. Wrap it: loss_fn=ftrain.supervised(torch.nn.MSELoss())."
        )
        raise TypeError(msg)
    if not callable(loss_fn):
        msg = (
            f"{where} must be a callable loss_fn(model, batch) or loss_fn(model, batch, ctx) "
            f"(got {describe(loss_fn)}). For (inputs, targets) batches use "
            "ftrain.supervised(torch.nn.CrossEntropyLoss())."
        )
        raise TypeError(msg)
    try:
        sig = inspect.signature(loss_fn)
    except (TypeError, ValueError):  # builtins and C callables have no signature
        return False
    params = list(sig.parameters.values())
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    variadic = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    try:
        sig.bind(None, None)
    except TypeError as err:
        try:
            sig.bind(None, None, None)
        except TypeError:
            name = getattr(loss_fn, "__name__", type(loss_fn).__name__)
            msg = (
                f"{where} must accept two positional arguments (model, batch), or three "
                f"(model, batch, ctx), but its signature "
                f"is {name}{sig} ({err}). Wrap it: "
                "loss_fn=lambda model, batch: my_loss(model(batch[0]), batch[1])."
            )
            raise CallbackSignatureError(msg) from None
        return True
    return len(positional) >= 3 and not variadic


def phase_params(phase: Phase) -> list[torch.Tensor]:
    """The parameters ``phase`` backpropagates into: its optimizer's, where they require grad."""
    return [p for g in phase.optimizer.param_groups for p in g["params"] if p.requires_grad]
