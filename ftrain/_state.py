"""`TrainState`: the frozen record that holds everything a training run needs to go on.

Over 300 lines because the record's fields, its checked constructor, the validated `replace` and
the phase views (`optimizer`, `optimizers`, ...) are one public surface, documented together:
most of the length is their docstrings. The lineage and the hot path's unvalidated copies
(`advance`/`set_progress`) are in ``_lineage.py``, `fork` in ``_fork.py``, the building of
phases in ``_build.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ._build import as_module, check_extras, check_state_phases, make_phases, phases_tuple
from ._errors import check_int, check_type, describe
from ._lineage import Lineage, advance, raise_stale, set_progress
from ._phases import Phase
from ._state_checks import model_device
from ._typing import LossFn, Strategy
from .strategies._unplaced import Unplaced

if TYPE_CHECKING:
    from ._averaging import WeightAverage

__all__ = ["Lineage", "TrainState", "advance", "check_live", "set_progress"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[[Optimizer], LRScheduler]


_PHASE_VIEWS = ("optimizer", "loss_fn", "scheduler", "scheduler_interval")


@attrs.frozen(kw_only=True, eq=False, repr=False, slots=False)
class TrainState:
    """Everything a training run needs to go on, as one frozen record.

    The *record* is immutable: change a field with ``state.replace(...)`` (or `attrs.evolve`),
    which returns a new record. The objects it points to are not: `train_step` updates parameters,
    gradients and optimizer buffers in place for speed, and the state it was given is then
    *consumed*: using it again raises `StaleStateError`. Keep a copy with `ftrain.fork` when you
    need one. Records made by ``replace`` from a live state share its weights and stay live with it.

    Build one with `TrainState.create`, which sets ``step=0`` and checks its arguments.

    Example:
        >>> import torch, ftrain
        >>> model = torch.nn.Linear(2, 1)
        >>> state = ftrain.TrainState.create(
        ...     model=model,
        ...     optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
        ...     loss_fn=lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1]),
        ... )
        >>> batch = (torch.ones(4, 2), torch.zeros(4, 1))
        >>> state, metrics = ftrain.train_step(state, batch)
        >>> state, metrics = ftrain.train_step(state, batch)
        >>> state.step
        2
        >>> sorted(metrics)
        ['loss']
    """

    model: nn.Module = attrs.field(validator=attrs.validators.instance_of(nn.Module))
    """The user's module, never wrapped: checkpoint keys carry no ``module.`` prefix. A dict of
    parts given to `create` is an `nn.ModuleDict`."""
    phases: tuple[Phase, ...] = attrs.field(converter=phases_tuple, validator=check_state_phases)
    """The optimizers' parts of a step, in order, each with its built optimizer and scheduler.
    A single-optimizer state has one unnamed phase (``name=""``) over the whole model."""
    step: int = attrs.field(
        default=0, validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)]
    )
    """Steps taken since the start of the run (one batch each, or one accumulation group)."""
    epoch: int = attrs.field(
        default=0, validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)]
    )
    """Completed epochs."""
    epoch_batch: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    """Batches of the current (unfinished) epoch already trained on."""
    micro_step: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    """`forward_backward` calls since the last `apply_gradients` (gradient accumulation)."""
    seed: int = attrs.field(default=0, validator=attrs.validators.instance_of(int))
    stream: int = attrs.field(default=0, validator=attrs.validators.instance_of(int))
    """Mixed into every seed the run derives, so two states with one seed can draw differently."""
    grad_count: Mapping[str, Any] = attrs.field(factory=dict)
    """Samples (or tokens) behind the gradients accumulated since the last update, on every
    process, by phase name (``""`` for a single optimizer); read while ``micro_step > 0``."""
    skipped_steps: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    """Updates `with_skip_nonfinite` skipped; part of every training draw's random stream, so a
    retried step draws fresh numbers."""
    # Not validated here: a runtime check against the Strategy protocol costs tens of
    # microseconds on every `replace`; `place` checks the strategy it is given instead.
    strategy: Strategy = attrs.field(factory=Unplaced)
    """The placement this state was placed with; `Unplaced` when it was never placed."""
    device: torch.device = attrs.field(
        factory=lambda: torch.device("cpu"), validator=attrs.validators.instance_of(torch.device)
    )
    wrapped: nn.Module | None = attrs.field(default=None)
    """The module the step calls when placement wrapped `model` (DDP, FSDP, compile); else None."""
    scaler: Any = attrs.field(default=None)
    """A `torch.amp.GradScaler` under ``16-mixed`` precision, else None."""
    autocast_dtype: torch.dtype | None = attrs.field(default=None)
    """The dtype `forward_backward` autocasts to (mixed precision), or None."""
    batch_dtype: torch.dtype | None = attrs.field(default=None)
    """The dtype floating-point batch tensors are cast to (``*-true`` precision), or None."""
    callback_state: Mapping[str, Any] = attrs.field(factory=dict, converter=dict)
    """Memory of callbacks (EarlyStopping's best value, ...), keyed by callback name."""
    extras: Mapping[str, Any] = attrs.field(factory=dict, converter=dict, validator=check_extras)
    """Named run state of your own (generators, tensors, counters, registered records): given
    to the loss function as ``ctx.extras`` and checkpointed as the same types."""
    carry: Any = attrs.field(default=None)
    """The value carried from batch to batch (an RNN's hidden state), made by ``carry_init`` at
    the first batch of every epoch and replaced by each step's ``Loss(carry=...)``, detached.
    `ftrain.UNSET` between an epoch's start and its first batch."""
    carry_init: Callable[[nn.Module, Any], Any] | None = attrs.field(default=None)
    """``carry_init(model, batch)`` makes the carry at the start of each epoch and evaluation."""
    handoff: Mapping[str, Any] = attrs.field(factory=dict)
    """What the phases run so far in the current step handed over (empty between steps)."""
    epoch_totals: Mapping[str, tuple[float, float]] = attrs.field(factory=dict, converter=dict)
    """``(weighted sum, count)`` per train metric of the current epoch, folded in at each log
    interval (so a mid-epoch checkpoint resumes the epoch's averages)."""
    should_stop: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    """Set by a callback to ask `fit` to stop after the current event."""
    history: tuple[Mapping[str, Any], ...] = attrs.field(default=(), converter=tuple)
    """The rows `fit` has returned in this run so far (one per epoch, one per step-interval
    validation); checkpointed, so a resumed `fit` returns the whole run's history."""
    averages: Mapping[str, WeightAverage] = attrs.field(factory=dict, converter=dict)
    """Averaged copies of the weights by name (`ftrain.with_ema`, `ftrain.with_swa`), on the
    model's placement; updated in place like the optimizer, and checkpointed."""
    train_loader: Any = attrs.field(default=None)
    """The object that keeps the train loader's position (a loader or an iterable dataset with
    ``state_dict()``), recorded by `train_epoch` so `save` can store its position. The object
    itself is never checkpointed."""
    loader_state: Any = attrs.field(default=None)
    """A train loader position read by `load`, handed to the loader's ``load_state_dict`` by the
    next `train_epoch`; None when there is none to restore."""
    _lineage: Lineage = attrs.field(factory=Lineage, alias="_lineage")
    _version: int = attrs.field(default=0, alias="_version")

    @classmethod
    def create(
        cls,
        *,
        model: nn.Module | Mapping[str, nn.Module],
        optimizer: Optimizer | OptimizerFactory | None = None,
        loss_fn: LossFn | None = None,
        scheduler: LRScheduler | SchedulerFactory | None = None,
        scheduler_interval: Literal["step", "epoch"] | None = None,
        scheduler_monitor: str | None = None,
        seed: int = 0,
        phases: Sequence[Phase] | None = None,
        extras: Mapping[str, Any] | None = None,
        carry_init: Callable[[nn.Module, Any], Any] | None = None,
        stream: int = 0,
    ) -> TrainState:
        """Build the state of a new run (``step=0``, ``epoch=0``), checking every argument.

        Args:
            model: the `nn.Module` to train, or a dict of named parts (``{"generator": G,
                "discriminator": D}``), which becomes an `nn.ModuleDict`. It stays where it is
                until `ftrain.place`.
            optimizer: an `Optimizer` over ``model``'s parameters, or a factory
                ``params -> Optimizer`` called with them. Either way the state holds the
                optimizer; placement that shards the model (`FSDP`) rebuilds it with the same
                class and parameter groups.
            loss_fn: ``loss_fn(model, batch)`` or ``loss_fn(model, batch, ctx)`` (a
                `ftrain.StepContext`) returning a scalar loss, ``(loss, metrics)`` or a
                `ftrain.Loss`; `ftrain.supervised` builds the common ``(inputs, targets)`` case.
            scheduler: an LR scheduler over ``optimizer``, or a factory ``optimizer -> scheduler``.
            scheduler_interval: ``"step"`` steps the scheduler after every optimizer step,
                ``"epoch"`` after every epoch (in `train_epoch`). Default: ``"epoch"`` for
                ``ReduceLROnPlateau``, ``"step"`` for the others.
            scheduler_monitor: the metric ``ReduceLROnPlateau`` steps on, as logged (e.g.
                ``"val_acc"``), in the direction of its own ``mode``; see `ftrain.step_scheduler`.
            seed: the seed every random choice of the run is derived from (dropout, shuffling).
            phases: instead of ``optimizer``/``loss_fn``/``scheduler``: several optimizers, one
                `ftrain.Phase` each, run in this order every step. Parts of ``model`` no phase
                optimizes are frozen (``requires_grad=False``; a distillation teacher).
            extras: named run state (``torch.Generator``, tensors, numbers, strings, registered
                records, and lists, tuples and dicts of those), passed to the loss as
                ``ctx.extras`` and checkpointed.
            carry_init: ``carry_init(model, batch)`` makes the value carried from batch to batch
                (``ctx.carry``) at the start of every epoch and every evaluation.
            stream: mixed into every seed, so two states with one seed can draw differently.

        Returns:
            A new, live `TrainState`. Nothing is moved; parts no phase optimizes are frozen.

        Raises:
            TypeError: an argument has the wrong type.
            ValueError: the optimizer or scheduler does not belong to this model, or both
                ``phases`` and ``optimizer``/``loss_fn`` were given.
            CallbackSignatureError: ``loss_fn`` cannot be called as ``loss_fn(model, batch)``.
        """
        model = as_module(model)
        check_type("model", model, nn.Module, "a torch.nn.Module")
        check_int("seed", seed, minimum=None)
        check_int("stream", stream, minimum=None)
        if carry_init is not None and not callable(carry_init):
            msg = (
                "`carry_init` must be a callable carry_init(model, batch) "
                f"(got {describe(carry_init)})."
            )
            raise TypeError(msg)
        built = make_phases(
            model, phases, optimizer, loss_fn, scheduler, scheduler_interval, scheduler_monitor
        )
        return cls(
            model=model,
            phases=built,
            seed=seed,
            stream=stream,
            device=model_device(model),
            extras={} if extras is None else extras,
            carry_init=carry_init,
        )

    def replace(self, **changes: Any) -> TrainState:
        """Return a copy of this record with ``changes`` applied (validated, like `attrs.evolve`).

        The copy shares the model and optimizer with ``self`` and stays live together with it.
        On a single-optimizer state, ``optimizer``, ``loss_fn``, ``scheduler`` and
        ``scheduler_interval`` change its one phase.
        """
        views = {k: changes.pop(k) for k in _PHASE_VIEWS if k in changes}
        if views:
            phase = attrs.evolve(self._only_phase("replace"), **views)
            changes["phases"] = (phase,)
        return attrs.evolve(self, **changes)

    def _only_phase(self, what: str) -> Phase:
        phases = self.phases
        if len(phases) != 1:
            names = [p.name for p in phases]
            msg = (
                f"`state.{what}` is ambiguous: this state has {len(phases)} phases {names}, each "
                f"with its own optimizer, scheduler and loss. Use state.optimizers[name], "
                "state.schedulers[name] or state.phase(name)."
            )
            raise AttributeError(msg)
        return phases[0]

    @property
    def optimizer(self) -> Optimizer:
        """The optimizer of a single-optimizer state (`optimizers` for several)."""
        phases = self.phases
        if len(phases) == 1:
            return phases[0].optimizer  # type: ignore[no-any-return]
        return self._only_phase("optimizer").optimizer  # type: ignore[no-any-return]

    @property
    def scheduler(self) -> Any:
        """The LR scheduler of a single-optimizer state, or None (`schedulers` for several)."""
        return self._only_phase("scheduler").scheduler

    @property
    def loss_fn(self) -> LossFn:
        """The loss function of a single-optimizer state (``state.phase(name).loss_fn``)."""
        return self._only_phase("loss_fn").loss_fn

    @property
    def scheduler_interval(self) -> Literal["step", "epoch"]:
        """When the scheduler of a single-optimizer state steps: ``"step"`` or ``"epoch"``."""
        return self._only_phase("scheduler_interval").scheduler_interval or "step"

    @property
    def optimizers(self) -> dict[str, Optimizer]:
        """Every optimizer by phase name (``""`` for a single-optimizer state)."""
        return {p.name: p.optimizer for p in self.phases}

    @property
    def schedulers(self) -> dict[str, Any]:
        """Every phase's LR scheduler (or None) by phase name."""
        return {p.name: p.scheduler for p in self.phases}

    def phase(self, name: str) -> Phase:
        """The phase called ``name``, with its built optimizer and scheduler."""
        for p in self.phases:
            if p.name == name:
                return p
        msg = f"This state has no phase {name!r} (phases: {[p.name for p in self.phases]})."
        raise KeyError(msg)

    @property
    def module(self) -> nn.Module:
        """The module a step calls: the placed wrapper (DDP, compiled) if any, else `model`."""
        return self.model if self.wrapped is None else self.wrapped

    @property
    def is_live(self) -> bool:
        """False once a later step has advanced this record's weights."""
        return self._version == self._lineage.version

    @property
    def rank(self) -> int:
        """This process's rank under the placed strategy (0 when unplaced or single-process)."""
        return self.strategy.rank

    @property
    def world_size(self) -> int:
        """The number of processes training together (1 when unplaced or single-process)."""
        return self.strategy.world_size

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group (of the first phase's optimizer)."""
        return float(self.phases[0].optimizer.param_groups[0]["lr"])

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        live = "" if self.is_live else ", stale"
        if len(self.phases) == 1:
            opts = f"optimizer={type(self.optimizer).__name__}"
        else:
            kinds = ", ".join(f"{p.name}: {type(p.optimizer).__name__}" for p in self.phases)
            opts = f"phases=({kinds})"
        return (
            f"TrainState(step={self.step}, epoch={self.epoch}, "
            f"model={type(self.model).__name__}({n:,} params), "
            f"{opts}, device={self.device}, "
            f"strategy={self.strategy!r}{live})"
        )


def check_live(state: object, where: str) -> None:
    """Raise a clear error unless ``state`` is a live `TrainState`."""
    if type(state) is not TrainState:
        if isinstance(state, tuple) and state and isinstance(state[0], TrainState):
            msg = (
                f"`state` passed to `{where}` must be a TrainState (got a tuple). Steps return "
                "`(state, metrics)`: unpack it, e.g. `state, metrics = train_step(state, batch)`."
            )
        else:
            msg = f"`state` passed to `{where}` must be a TrainState (got {describe(state)})."
        raise TypeError(msg)
    if state._version != state._lineage.version:
        raise_stale(state, where)
