"""`TrainState`: the frozen record that holds everything a training run needs to go on.

Over 300 lines because the record, its checked constructor and the rules for copying it (the
validated `replace`, the hot path's unvalidated `advance`/`set_progress`, and `fork`) belong
together: the lineage invariant they share is only readable in one place.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from ._errors import PlacementError, StaleStateError, check_choice, check_int, check_type, describe
from ._state_checks import check_loss_fn, check_optimizer_params, is_scheduler, model_device
from ._typing import LossFn, Strategy
from .strategies._unplaced import Unplaced

if TYPE_CHECKING:
    from ._averaging import WeightAverage

__all__ = ["TrainState", "advance", "check_live", "fork", "set_progress"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], Optimizer]
SchedulerFactory = Callable[[Optimizer], LRScheduler]


class _Lineage:
    """The version counter shared by every record that holds the same live weights.

    Records made by `replace` share it with their source and stay live together; a function that
    advances the weights bumps `version`, which makes every record of the older version stale.
    """

    __slots__ = ("consumed_at_step", "consumed_by", "version")

    def __init__(self) -> None:
        self.version = 0
        self.consumed_by = ""
        self.consumed_at_step = -1


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
    """The user's module, never wrapped: checkpoint keys carry no ``module.`` prefix."""
    optimizer: Optimizer = attrs.field(validator=attrs.validators.instance_of(Optimizer))
    loss_fn: LossFn = attrs.field(validator=attrs.validators.is_callable())
    scheduler: Any = attrs.field(default=None)
    """An LR scheduler or None; stepped by `apply_gradients` or per epoch (`scheduler_interval`)."""
    scheduler_interval: Literal["step", "epoch"] = attrs.field(
        default="step", validator=attrs.validators.in_(("step", "epoch"))
    )
    step: int = attrs.field(
        default=0, validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)]
    )
    """Optimizer steps taken since the start of the run."""
    epoch: int = attrs.field(
        default=0, validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)]
    )
    """Completed epochs."""
    epoch_batch: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    """Batches of the current (unfinished) epoch already trained on."""
    micro_step: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    """`forward_backward` calls since the last `apply_gradients` (gradient accumulation)."""
    seed: int = attrs.field(default=0, validator=attrs.validators.instance_of(int))
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
    _lineage: _Lineage = attrs.field(factory=_Lineage, alias="_lineage")
    _version: int = attrs.field(default=0, alias="_version")

    @classmethod
    def create(
        cls,
        *,
        model: nn.Module,
        optimizer: Optimizer | OptimizerFactory,
        loss_fn: LossFn,
        scheduler: LRScheduler | SchedulerFactory | None = None,
        scheduler_interval: Literal["step", "epoch"] = "step",
        seed: int = 0,
    ) -> TrainState:
        """Build the state of a new run (``step=0``, ``epoch=0``), checking every argument.

        Args:
            model: the `nn.Module` to train. It stays where it is until `ftrain.place`.
            optimizer: an `Optimizer` over ``model``'s parameters, or a factory
                ``params -> Optimizer`` called with them. Either way the state holds the
                optimizer; placement that shards the model (`FSDP`) rebuilds it with the same
                class and parameter groups.
            loss_fn: ``loss_fn(model, batch)`` returning a scalar loss or ``(loss, metrics)``;
                `ftrain.supervised` builds the common ``(inputs, targets)`` case.
            scheduler: an LR scheduler over ``optimizer``, or a factory ``optimizer -> scheduler``.
            scheduler_interval: ``"step"`` steps the scheduler after every optimizer step,
                ``"epoch"`` after every epoch (in `train_epoch`).
            seed: the seed every random choice of the run is derived from (dropout, shuffling).

        Returns:
            A new, live `TrainState`. Nothing is moved or mutated.

        Raises:
            TypeError: an argument has the wrong type.
            ValueError: the optimizer or scheduler does not belong to this model.
            CallbackSignatureError: ``loss_fn`` cannot be called as ``loss_fn(model, batch)``.
        """
        check_type("model", model, nn.Module, "a torch.nn.Module")
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
        check_loss_fn(loss_fn)
        if scheduler is not None and not is_scheduler(scheduler):
            if not callable(scheduler):
                msg = (
                    "`scheduler` must be an LR scheduler or a factory optimizer -> scheduler "
                    f"(got {describe(scheduler)})."
                )
                raise TypeError(msg)
            scheduler = scheduler(optimizer)
            if not is_scheduler(scheduler):
                msg = (
                    f"`scheduler` factory must return an LR scheduler (got {describe(scheduler)})."
                )
                raise TypeError(msg)
        if scheduler is not None and scheduler.optimizer is not optimizer:  # type: ignore[union-attr]
            msg = (
                "`scheduler` must drive the state's optimizer, but it was built over another "
                "optimizer. Pass a factory instead: scheduler=lambda opt: StepLR(opt, 10)."
            )
            raise ValueError(msg)
        check_choice("scheduler_interval", scheduler_interval, ("step", "epoch"))
        check_int("seed", seed, minimum=None)
        return cls(
            model=model,
            optimizer=optimizer,
            loss_fn=loss_fn,
            scheduler=scheduler,
            scheduler_interval=scheduler_interval,
            seed=seed,
            device=model_device(model),
        )

    def replace(self, **changes: Any) -> TrainState:
        """Return a copy of this record with ``changes`` applied (validated, like `attrs.evolve`).

        The copy shares the model and optimizer with ``self`` and stays live together with it.
        """
        return attrs.evolve(self, **changes)

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
        """The learning rate of the first parameter group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        live = "" if self.is_live else ", stale"
        return (
            f"TrainState(step={self.step}, epoch={self.epoch}, "
            f"model={type(self.model).__name__}({n:,} params), "
            f"optimizer={type(self.optimizer).__name__}, device={self.device}, "
            f"strategy={self.strategy!r}{live})"
        )


# The hot path's copy of the record: every step makes a new record, and attrs.evolve re-runs all
# validators (~6 us). `_copy` copies the instance dict instead (~0.6 us), skipping validation,
# because only ftrain's own code calls it, with values it computed itself; users go through
# `replace`. The record is a dict-backed (not slotted) frozen class so that this copy is one
# C-level dict update; writing `new.__dict__` directly bypasses the frozen `__setattr__` (as
# attrs' own generated __init__ does).
_new = object.__new__


def _copy(state: TrainState, changes: Mapping[str, Any]) -> TrainState:
    """The one unvalidated copy of a record: ``state`` with ``changes`` applied."""
    new = _new(TrainState)
    d = new.__dict__
    d.update(state.__dict__)
    d.update(changes)
    return new


def advance(state: TrainState, by: str, **changes: Any) -> TrainState:
    """Consume ``state`` (``by`` names the consumer) and return the next live record.

    Every record of ``state``'s weights becomes stale; the returned one, with ``changes``
    applied, is the only live one. For functions that change the weights (steps, `place`, `load`).
    """
    lineage = state._lineage
    if state._version != lineage.version:
        _raise_stale(state, by)
    lineage.version += 1
    lineage.consumed_by = by
    lineage.consumed_at_step = state.step
    changes["_version"] = lineage.version
    return _copy(state, changes)


def set_progress(state: TrainState, **changes: Any) -> TrainState:
    """``state`` with the loop's bookkeeping fields changed (epoch position, totals, stop flag).

    Unvalidated like `advance`, but consumes nothing: the weights are the same, so the new
    record shares ``state``'s lineage and both stay live.
    """
    return _copy(state, changes)


def _raise_stale(state: TrainState, where: str) -> None:
    lineage = state._lineage
    msg = (
        f"`state` passed to `{where}` is stale: its weights were advanced by "
        f"`{lineage.consumed_by}` at step {lineage.consumed_at_step} (this record is version "
        f"{state._version}, the weights are now at version {lineage.version}). ftrain updates "
        "weights in place, so use the state that call returned; to keep the old weights, take a "
        "copy first with `ftrain.fork(state)`."
    )
    raise StaleStateError(msg)


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
        _raise_stale(state, where)


def fork(state: TrainState) -> TrainState:
    """Return an independent deep copy of ``state``: model, optimizer, scheduler, scaler, memory.

    The copy and the original can be trained separately; neither consumes the other. Use it to
    keep a snapshot before a step (``before = fork(state)``) or to branch an experiment.

    Args:
        state: a live state.

    Returns:
        A new live state with its own weights and optimizer buffers; ``state`` is not consumed.

    Example:
        >>> import torch, ftrain
        >>> state = ftrain.testing.toy_state()
        >>> snapshot = ftrain.fork(state)
        >>> state, _ = ftrain.train_step(state, ftrain.testing.toy_batch())
        >>> snapshot.is_live, snapshot.step, state.step
        (True, 0, 1)
    """
    check_live(state, "fork")
    if state.world_size > 1:
        msg = (
            "`fork` of a distributed state is not supported: its model is wrapped or sharded "
            f"by {state.strategy!r}. Fork before `place`, or save a checkpoint instead."
        )
        raise PlacementError(msg)
    memo: dict[int, Any] = {}
    model, optimizer, scheduler, scaler, cb_state, averages = copy.deepcopy(
        (
            state.model,
            state.optimizer,
            state.scheduler,
            state.scaler,
            dict(state.callback_state),
            dict(state.averages),
        ),
        memo,
    )
    wrapped = None if state.wrapped is None else state.strategy.rewrap(model)
    if wrapped is None and state.wrapped is not None:
        msg = f"`fork` cannot re-create the wrapper of a state placed with {state.strategy!r}."
        raise PlacementError(msg)
    return attrs.evolve(
        state,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        callback_state=cb_state,
        averages=averages,  # type: ignore[arg-type]
        wrapped=wrapped,
        _lineage=_Lineage(),
        _version=0,
    )
