"""`Phase`: one optimizer's part of a training step, and how a state's phases are built.

A single-optimizer state has one unnamed phase (``name=""``) that optimizes the whole model; a
state built with ``phases=[...]`` has one named phase per optimizer, run in the declared order
every step. Both are the same record, so the step, the checkpoint and placement read one
representation.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs
import torch
from torch import nn
from torch.optim import Optimizer

from ._errors import CallbackSignatureError, check_choice, check_int, describe
from ._state_checks import is_scheduler

__all__ = ["Phase", "build_phase", "frozen_parts", "phase_params", "takes_context"]


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
        scheduler_interval: ``"step"`` (after each update of this phase) or ``"epoch"``.

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
    scheduler_interval: Literal["step", "epoch"] = attrs.field(default="step", kw_only=True)
    takes_context: bool = attrs.field(init=False, eq=False, repr=False)
    """Whether ``loss_fn`` takes a third argument (decided once, from its signature)."""

    def __attrs_post_init__(self) -> None:
        where = f"Phase {self.name!r}: `loss_fn`" if self.name else "`loss_fn`"
        object.__setattr__(self, "takes_context", takes_context(self.loss_fn, where))
        check_int("every", self.every, minimum=1)
        check_choice("scheduler_interval", self.scheduler_interval, ("step", "epoch"))
        for part in self.optimizes:
            if not isinstance(part, str) or not part:
                msg = (
                    f"Phase {self.name!r}: `optimizes` must name parts of the model (strings), "
                    f"got {describe(part)}."
                )
                raise TypeError(msg)


def takes_context(loss_fn: object, where: str = "`loss_fn`") -> bool:
    """Whether ``loss_fn`` is called as ``loss_fn(model, batch, ctx)``; checks it is callable."""
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


def resolve_part(model: nn.Module, name: str, where: str) -> nn.Module:
    """The submodule ``name`` of ``model``, or a clear error listing the parts there are."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        parts = [n for n, _ in model.named_children()]
        msg = f"{where} optimizes {name!r}, which is not a part of the model (parts: {parts})."
        raise ValueError(msg) from None


def build_phase(model: nn.Module, phase: Phase) -> Phase:
    """``phase`` with its optimizer and scheduler built over its parts' parameters."""
    where = f"Phase {phase.name!r}"
    own: list[nn.Parameter] = []
    seen: set[int] = set()
    for name in phase.optimizes:
        for p in resolve_part(model, name, where).parameters():
            if id(p) not in seen:
                seen.add(id(p))
                own.append(p)
    optimizer = phase.optimizer
    if not isinstance(optimizer, Optimizer):
        if not callable(optimizer):
            msg = (
                f"{where}: `optimizer` must be a torch.optim.Optimizer or a factory "
                f"params -> Optimizer (got {describe(optimizer)})."
            )
            raise TypeError(msg)
        optimizer = optimizer([p for p in own if p.requires_grad])
        if not isinstance(optimizer, Optimizer):
            msg = (
                f"{where}: the `optimizer` factory must return an Optimizer "
                f"(got {describe(optimizer)})."
            )
            raise TypeError(msg)
    foreign = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in seen]
    if foreign:
        msg = (
            f"{where}: its optimizer holds {len(foreign)} parameter(s) outside the parts it "
            f"optimizes {list(phase.optimizes)}: a phase updates only its own parts."
        )
        raise ValueError(msg)
    scheduler = build_scheduler(phase.scheduler, optimizer, where)
    return attrs.evolve(phase, optimizer=optimizer, scheduler=scheduler)


def build_scheduler(scheduler: Any, optimizer: Optimizer, where: str) -> Any:
    """A scheduler over ``optimizer`` from a scheduler or a factory (None stays None)."""
    if scheduler is None:
        return None
    at = f"{where}: " if where else ""
    if not is_scheduler(scheduler):
        if not callable(scheduler):
            msg = (
                f"{at}`scheduler` must be an LR scheduler or a factory optimizer -> "
                f"scheduler (got {describe(scheduler)})."
            )
            raise TypeError(msg)
        scheduler = scheduler(optimizer)
        if not is_scheduler(scheduler):
            msg = (
                f"{at}`scheduler` factory must return an LR scheduler (got {describe(scheduler)})."
            )
            raise TypeError(msg)
    if scheduler.optimizer is not optimizer:
        msg = (
            f"{at}`scheduler` must drive the state's optimizer, but it was built over "
            "another optimizer. Pass a factory instead: scheduler=lambda opt: StepLR(opt, 10)."
        )
        raise ValueError(msg)
    return scheduler


def check_phases(model: nn.Module, phases: Sequence[Phase]) -> None:
    """Phases must be a non-empty list of `Phase` records with unique non-empty names."""
    if isinstance(phases, Phase) or not isinstance(phases, Sequence) or not phases:
        msg = f"`phases` must be a non-empty list of ftrain.Phase (got {describe(phases)})."
        raise TypeError(msg)
    names: set[str] = set()
    for i, phase in enumerate(phases):
        if not isinstance(phase, Phase):
            msg = f"`phases[{i}]` must be a ftrain.Phase (got {describe(phase)})."
            raise TypeError(msg)
        if not phase.name or not phase.name.isidentifier():
            msg = (
                f"`phases[{i}]` has the name {phase.name!r}: a phase name must be a non-empty "
                "identifier such as 'd' or 'generator' (it prefixes the phase's metrics)."
            )
            raise ValueError(msg)
        if phase.name in names:
            msg = f"`phases` has two phases named {phase.name!r}: names must be unique."
            raise ValueError(msg)
        if not phase.optimizes:
            msg = f"Phase {phase.name!r} optimizes nothing: name the parts it trains."
            raise ValueError(msg)
        names.add(phase.name)


def frozen_parts(model: nn.Module, phases: Sequence[Phase]) -> list[str]:
    """The top-level parts of ``model`` no phase optimizes (their parameters get no gradients)."""
    owned: set[int] = set()
    for phase in phases:
        for g in phase.optimizer.param_groups:
            owned.update(id(p) for p in g["params"])
    return [
        name
        for name, child in model.named_children()
        if any(True for _ in child.parameters())
        and not any(id(p) in owned for p in child.parameters())
    ]


def phase_params(phase: Phase) -> list[torch.Tensor]:
    """The parameters ``phase`` backpropagates into: its optimizer's, where they require grad."""
    return [p for g in phase.optimizer.param_groups for p in g["params"] if p.requires_grad]


def as_module(model: nn.Module | Mapping[str, nn.Module]) -> nn.Module:
    """A dict of modules becomes an `nn.ModuleDict` (its keys name the parts)."""
    if isinstance(model, Mapping) and not isinstance(model, nn.Module):
        bad = [k for k, v in model.items() if not isinstance(v, nn.Module)]
        if bad:
            msg = (
                "`model` as a dict must map names to nn.Module parts (got "
                f"{describe(model[bad[0]])} under {bad[0]!r})."
            )
            raise TypeError(msg)
        return nn.ModuleDict(dict(model))
    return model
