"""The tensor-free record of a checkpoint: counters, scheduler, scaler and run state.

``state.callback_state`` is stored as plain data that ``torch.load(weights_only=True)`` reads:
``None``, bools, ints, floats, strings, tensors, lists, tuples and dicts (whose keys may be any of
the scalars above or tuples of them, so int and tuple keys stay what they were). A frozen attrs
record is stored as its registered name and its fields; `load` rebuilds it with the class
registered under that name by `checkpoint_record`, and never imports anything a file names.
Anything else is refused at `save`, naming where it sits, rather than coming back different.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import torch

from .._errors import CheckpointError, describe
from .._outputs import UNSET
from ._verify import state_kinds

if TYPE_CHECKING:
    from .._state import TrainState

__all__ = [
    "carry_record",
    "checkpoint_record",
    "decode",
    "encode",
    "restore_carry",
    "state_record",
]

T = TypeVar("T", bound=type)

_RECORD = "__ftrain_record__"
_GENERATOR = "__ftrain_generator__"
_RECORDS: dict[str, type] = {}
_SCALARS = frozenset({type(None), bool, int, float, str})  # exact types: no numpy scalars


def state_record(state: TrainState) -> dict[str, Any]:
    """Everything a checkpoint of ``state`` holds but the model and optimizer state.

    Schedulers are stored by phase name (``""`` for a single optimizer), with the class names of
    every phase's optimizer and scheduler (``"kinds"``), so `load` refuses a template whose
    optimizer or scheduler differs in kind. The carry is gathered from every process (a
    collective: every rank calls this).
    """
    return {
        "format": "ftrain",
        "meta": {
            "step": state.step,
            "epoch": state.epoch,
            "epoch_batch": state.epoch_batch,
            "micro_step": state.micro_step,
            "skipped_steps": state.skipped_steps,
            "seed": state.seed,
            "stream": state.stream,
            "epoch_totals": {k: [s, n] for k, (s, n) in state.epoch_totals.items()},
            "torch_version": str(torch.__version__),
        },
        "schedulers": {
            p.name: None if p.scheduler is None else p.scheduler.state_dict() for p in state.phases
        },
        "kinds": state_kinds(state),
        "scaler": None if state.scaler is None else state.scaler.state_dict(),
        "callback_state": encode(dict(state.callback_state), "callback_state"),
        "extras": encode(dict(state.extras), "extras"),
        "carry": carry_record(state),
    }


def carry_record(state: TrainState) -> dict[str, Any]:
    """Every process's carry (``None`` where it is unset), on the CPU, with the world size."""
    mine = None if state.carry is UNSET else [_to_cpu(encode(state.carry, "carry"))]
    ranks = [mine]
    if state.world_size > 1:
        import torch.distributed as dist

        ranks = [None] * state.world_size
        dist.all_gather_object(ranks, mine)
    return {"world_size": state.world_size, "ranks": ranks}


def restore_carry(saved: dict[str, Any], state: TrainState, path: str, reset: bool) -> Any:
    """This process's carry from `carry_record`'s record; refused across world sizes."""
    ranks = saved["ranks"]
    if saved["world_size"] != state.world_size:
        if reset or all(r is None or r == [None] for r in ranks):
            return UNSET
        msg = (
            f"Checkpoint {path!r} holds a carry per process for {saved['world_size']} "
            f"process(es), and this state runs on {state.world_size}: a carry belongs to its "
            "process's data. Load with `reset_carry=True` to make it anew with `carry_init`."
        )
        raise CheckpointError(msg)
    mine = ranks[state.rank]
    if mine is None:
        return UNSET
    return _to_device(decode(mine[0], "carry"), state.device)


def _to_cpu(value: Any) -> Any:
    return _map_tensors(value, lambda t: t.detach().cpu())


def _to_device(value: Any, device: torch.device) -> Any:
    return _map_tensors(value, lambda t: t.to(device))


def _map_tensors(value: Any, fn: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return fn(value)
    kind = type(value)
    if kind is list or kind is tuple:
        return kind(_map_tensors(v, fn) for v in value)
    if kind is dict:
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    return value


def checkpoint_record(cls: T) -> T:
    """Register an attrs record class, so a checkpoint restores its instances as that class.

    Put it above ``@attrs.frozen``. An instance anywhere in ``state.callback_state`` is saved
    as the class's qualified name and its fields; `ftrain.load` rebuilds it with the class
    registered under that name. Loading never imports a module named in a file: the module that
    defines the class must have been imported (so the decorator ran) before `load`. Registering
    a class again under the same name (a re-run notebook cell) replaces the earlier one.

    Raises:
        TypeError: ``cls`` is not an attrs class, or has a field its constructor does not take.

    Example:
        >>> import attrs, ftrain
        >>> @ftrain.checkpoint_record
        ... @attrs.frozen
        ... class BestSoFar:
        ...     value: float = float("inf")
        ...     step: int = 0
        >>> state = ftrain.testing.toy_state().replace(callback_state={"best": BestSoFar(0.5, 3)})
    """
    if not _is_attrs_class(cls):
        msg = (
            f"`checkpoint_record` registers attrs classes (got {describe(cls)}): put it above "
            "`@attrs.frozen`."
        )
        raise TypeError(msg)
    skipped = [a.name for a in attrs.fields(cls) if not a.init]
    if skipped:
        msg = (
            f"`checkpoint_record` cannot register {cls.__qualname__}: its field(s) {skipped} "
            "have init=False, and a record is rebuilt through its constructor."
        )
        raise TypeError(msg)
    _RECORDS[_name(cls)] = cls
    return cls


def _is_attrs_class(cls: object) -> bool:
    # A plain bool, not attrs.has's type guard, which would narrow the class returned above.
    return isinstance(cls, type) and attrs.has(cls)


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def encode(value: Any, where: str) -> Any:
    """``value`` as plain data a weights-only load reads back; ``where`` names it in errors.

    Raises:
        TypeError: a value (or dict key) that would not come back as it went in.
    """
    kind = type(value)
    if kind in _SCALARS or isinstance(value, torch.Tensor):
        return value
    if kind is torch.Generator:
        return {_GENERATOR: str(value.device), "state": value.get_state()}
    if kind is list or kind is tuple:
        return kind(encode(v, f"{where}[{i}]") for i, v in enumerate(value))
    if kind is dict:
        out = {}
        for k, v in value.items():
            _check_key(k, where)
            out[k] = encode(v, f"{where}[{k!r}]")
        return out
    if attrs.has(kind):
        name = _name(kind)
        if name not in _RECORDS:
            msg = (
                f"`{where}` is a {name}, an attrs record that is not registered for "
                "checkpoints, so `load` could not rebuild it: decorate its class with "
                "`@ftrain.checkpoint_record`."
            )
            raise TypeError(msg)
        fields = {
            a.name: encode(getattr(value, a.name), f"{where}.{a.name}") for a in attrs.fields(kind)
        }
        return {_RECORD: name, "fields": fields}
    msg = (
        f"`{where}` cannot be checkpointed (got {describe(value)}): run state must be plain data "
        "(None, bools, numbers, strings, tensors, torch.Generator, and lists, tuples and dicts "
        "of those) or attrs records registered with `@ftrain.checkpoint_record`."
    )
    raise TypeError(msg)


def _check_key(key: Any, where: str) -> None:
    if not _plain_key(key):
        msg = (
            f"`{where}` has the key {describe(key)}, which cannot be checkpointed: dict keys "
            "must be None, bools, numbers, strings, or tuples of those."
        )
        raise TypeError(msg)
    if key in (_RECORD, _GENERATOR):
        msg = f"`{where}` uses the key {key!r}, which ftrain reserves for its own values."
        raise TypeError(msg)


def _plain_key(key: Any) -> bool:
    if type(key) is tuple:
        return all(_plain_key(k) for k in key)
    return type(key) in _SCALARS


def decode(value: Any, where: str) -> Any:
    """Undo `encode`: rebuild registered records, keep everything else as it was read.

    Raises:
        CheckpointError: a record whose class is not registered in this process, or whose
            fields no longer fit its class.
    """
    kind = type(value)
    if kind is dict:
        if _RECORD in value:
            return _rebuild(value[_RECORD], value["fields"], where)
        if _GENERATOR in value:
            generator = torch.Generator(value[_GENERATOR])
            generator.set_state(value["state"])
            return generator
        return {k: decode(v, f"{where}[{k!r}]") for k, v in value.items()}
    if kind is list or kind is tuple:
        return kind(decode(v, f"{where}[{i}]") for i, v in enumerate(value))
    return value


def _rebuild(name: str, fields: dict[str, Any], where: str) -> Any:
    cls = _RECORDS.get(name)
    if cls is None:
        msg = (
            f"The checkpoint holds a {name} record at `{where}`, and no class is registered "
            "under that name: import the module that defines it (decorated with "
            "`@ftrain.checkpoint_record`) before loading. ftrain never imports what a file names."
        )
        raise CheckpointError(msg)
    values = {k: decode(v, f"{where}.{k}") for k, v in fields.items()}
    aliases = {a.name: a.alias for a in attrs.fields(cls)}  # the constructor's argument names
    if set(values) != set(aliases):
        msg = (
            f"The checkpoint's {name} record at `{where}` has the fields {sorted(values)}, but "
            f"the class registered under that name has {sorted(aliases)}."
        )
        raise CheckpointError(msg)
    return cls(**{aliases[k]: v for k, v in values.items()})
