"""Building a state's phases from what `TrainState.create` is given, with its checks."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
from torch import nn
from torch.optim import Optimizer

from ._errors import check_choice, describe
from ._phases import Phase, takes_context
from ._schedulers import settle_scheduler
from ._state_checks import check_optimizer_params, is_scheduler

__all__ = [
    "as_module",
    "build_phase",
    "build_scheduler",
    "check_extras",
    "check_phases",
    "check_state_phases",
    "frozen_parts",
    "make_phases",
    "phases_tuple",
    "resolve_part",
    "single_phase",
]


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
    return settle_scheduler(attrs.evolve(phase, optimizer=optimizer, scheduler=scheduler))


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


def single_phase(
    model: nn.Module,
    optimizer: Any,
    loss_fn: Any,
    scheduler: Any,
    scheduler_interval: Any,
    scheduler_monitor: Any = None,
) -> Phase:
    """The one unnamed phase of a single-optimizer state, over the whole model."""
    if optimizer is None or loss_fn is None:
        missing = " and ".join(
            n for n, v in (("optimizer", optimizer), ("loss_fn", loss_fn)) if v is None
        )
        msg = (
            f"`TrainState.create` needs `{missing}` (got None; or `phases=[ftrain.Phase(...), "
            "...]` for several optimizers)."
        )
        raise TypeError(msg)
    if not isinstance(optimizer, Optimizer):
        if not callable(optimizer):
            msg = (
                "`optimizer` must be a torch.optim.Optimizer or a factory params -> Optimizer "
                f"(got {describe(optimizer)}). Example: "
                "optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3)."
            )
            raise TypeError(msg)
        optimizer = optimizer(model.parameters())
        if not isinstance(optimizer, Optimizer):
            msg = (
                "`optimizer` factory must return a torch.optim.Optimizer "
                f"(got {describe(optimizer)})."
            )
            raise TypeError(msg)
    check_optimizer_params(model, optimizer)
    takes_context(loss_fn)  # the signature errors name `loss_fn`, before anything else
    if scheduler_interval is not None:
        check_choice("scheduler_interval", scheduler_interval, ("step", "epoch"))
    phase = Phase(
        "",
        optimizes=(),
        optimizer=optimizer,
        loss_fn=loss_fn,
        scheduler=build_scheduler(scheduler, optimizer, ""),
        scheduler_interval=scheduler_interval,
        scheduler_monitor=scheduler_monitor,
    )
    return settle_scheduler(phase)


def phases_tuple(value: Iterable[Phase]) -> tuple[Phase, ...]:
    return tuple(value)


def make_phases(
    model: nn.Module,
    phases: Sequence[Phase] | None,
    optimizer: Any,
    loss_fn: Any,
    scheduler: Any,
    scheduler_interval: Any,
    scheduler_monitor: Any = None,
) -> tuple[Phase, ...]:
    """The built phases of a new state; parts no phase optimizes are frozen."""
    if phases is None:
        return (
            single_phase(
                model, optimizer, loss_fn, scheduler, scheduler_interval, scheduler_monitor
            ),
        )
    pairs = (
        ("optimizer", optimizer),
        ("loss_fn", loss_fn),
        ("scheduler", scheduler),
        ("scheduler_monitor", scheduler_monitor),
    )
    given = [n for n, v in pairs if v is not None]
    if given:
        msg = (
            f"`phases` and `{'`, `'.join(given)}` were both given: with phases, each "
            "Phase names its own optimizer, loss_fn and scheduler."
        )
        raise ValueError(msg)
    check_phases(model, phases)
    built = tuple(build_phase(model, p) for p in phases)
    for name in frozen_parts(model, built):
        model.get_submodule(name).requires_grad_(False)
    return built


def check_state_phases(instance: Any, attribute: Any, value: tuple[Any, ...]) -> None:
    if not value or not all(isinstance(p, Phase) for p in value):
        msg = f"`phases` must be a non-empty tuple of ftrain.Phase (got {describe(value)})."
        raise TypeError(msg)
    for p in value:
        if not isinstance(p.optimizer, Optimizer):
            msg = (
                f"Phase {p.name!r} in a state must hold a built optimizer (got "
                f"{describe(p.optimizer)}): build states with TrainState.create."
            )
            raise TypeError(msg)


def check_extras(instance: Any, attribute: Any, value: Mapping[str, Any]) -> None:
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        msg = f"`extras` must be keyed by names (str), got the key {describe(bad[0])}."
        raise TypeError(msg)
