"""`save` and `load`: one checkpoint per run state, atomic and verified.

A checkpoint is one file, or, for a state placed with `FSDP` on several processes, a directory
of shards; `load` reads either into any placement. One concept per module:

- ``_format.py``: the file (header, checksum, atomic write, verified weights-only read);
- ``_records.py``: the tensor-free record: counters, run state as plain data, and
  `checkpoint_record` for attrs records;
- ``_tensors.py``: the model's and optimizer's state dicts, out of a state and back in;
- ``_match.py``: whether a checkpoint fits the template, every difference named;
- ``_sharded.py``: shard directories (torch.distributed.checkpoint) and their manifest;
- ``_restricted.py``: reading torch's shard files without running code from them;
- ``_rundir.py``: checkpoint names, listing, the newest good one, leftovers of interrupted writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._errors import CheckpointError, NonFiniteError, check_type
from .._state import TrainState, advance, check_live
from ._format import remove, write_file
from ._match import check_matches, shapes
from ._records import checkpoint_record, decode, restore_carry, state_record
from ._rundir import (
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    read_verified,
    remove_leftovers,
)
from ._runstate import restore_runstate, runstate_record
from ._sharded import load_sharded, save_sharded
from ._tensors import load_full, nonfinite_parameters, state_dicts
from ._verify import check_kinds, check_record, state_kinds

__all__ = [
    "checkpoint_name",
    "checkpoint_record",
    "latest_checkpoint",
    "list_checkpoints",
    "load",
    "read_checkpoint",
    "remove",
    "remove_leftovers",
    "save",
]

_PATH = (str, os.PathLike)
_PATH_WORDS = "a str or os.PathLike"


def _checkpoint_path(path: object) -> Path:
    check_type("path", path, _PATH, _PATH_WORDS)
    if not os.fspath(path):  # type: ignore[call-overload]
        msg = "`path` must name a checkpoint file (got an empty path '')."
        raise ValueError(msg)
    return Path(path)  # type: ignore[arg-type]


def save(state: TrainState, path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically; the state is not consumed.

    Stores the model, optimizer, scheduler and scaler state dicts, ``step``, ``epoch``, the
    position inside the epoch, the RNG counters (``seed``, ``step``, ``micro_step``: ftrain's
    randomness is derived from them) and ``callback_state``. Only rank 0 writes under DDP.

    Args:
        state: a live state whose parameters are all finite.
        path: the file to write; its directory is created if missing.

    Returns:
        The path written.

    Raises:
        NonFiniteError: a parameter is NaN or infinite (the last good checkpoint stays good).
        TypeError: ``callback_state`` holds a value that would not come back as it is (an
            object that is not plain data, or an attrs record not registered with
            `checkpoint_record`); the message names where it sits.

    Example:
        >>> import os, tempfile, ftrain
        >>> path = os.path.join(tempfile.mkdtemp(), "a.ckpt")
        >>> path = ftrain.save(ftrain.testing.toy_state(), path)
        >>> ftrain.load(ftrain.testing.toy_state(), path).step
        0
    """
    check_live(state, "save")
    target = _checkpoint_path(path)
    if target.is_dir() and not state.strategy.sharded_checkpoint:
        msg = (
            f"`path` {str(path)!r} is a directory: give save a file path, e.g. "
            f"{str(target / 'last.ckpt')!r}."
        )
        raise ValueError(msg)
    bad = nonfinite_parameters(state)
    if bad:
        msg = (
            f"Refusing to save a checkpoint at step {state.step}: parameters are not finite "
            f"({', '.join(bad[:5])}). The last good checkpoint is left as it was."
        )
        raise NonFiniteError(msg)
    record = state_record(state)  # first: a value it refuses is refused on every rank
    sharded = state.strategy.sharded_checkpoint
    run_record, average_shards = runstate_record(state, full=not sharded)
    record.update(run_record)
    if sharded:
        return save_sharded(state, target, record, averages=average_shards)
    record["model"], record["optimizers"] = state_dicts(state, full=True)  # FSDP: a collective
    if state.rank == 0:
        write_file(target, record)
    return target


def load(
    state: TrainState, path: str | os.PathLike[str], *, reset_carry: bool = False
) -> TrainState:
    """Fill the template ``state`` with the checkpoint at ``path``; the template is consumed.

    The template gives the model, optimizer and placement; keys and shapes must match (every
    mismatch is named). Tensors land on the template's device, whatever device they were saved
    from. Records in ``callback_state`` come back as their classes (see `checkpoint_record`).

    Args:
        state: the template; consumed.
        path: a checkpoint file or shard directory.
        reset_carry: on another number of processes than the checkpoint's, drop its carried
            values (one per process) so ``carry_init`` makes them anew; without it such a load
            is refused.

    Returns:
        A live state with the checkpoint's weights, optimizers' states (by phase name),
        schedulers, counters, callback memory, extras and this process's carry.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, not an ftrain checkpoint, from
            a newer format version, does not match the template, or holds a record whose class
            is not registered in this process.

    Example:
        >>> import os, tempfile, ftrain
        >>> state, _ = ftrain.train_step(ftrain.testing.toy_state(), ftrain.testing.toy_batch())
        >>> path = ftrain.save(state, os.path.join(tempfile.mkdtemp(), "step-1.ckpt"))
        >>> template = ftrain.testing.toy_state()
        >>> restored = ftrain.load(template, path)
        >>> restored.step, template.is_live
        (1, False)
    """
    check_live(state, "load")
    source = _checkpoint_path(path)
    data = read_verified(source)
    # Everything is checked before anything is copied: a refused load leaves the template as is.
    check_record(data, source)
    callback_state = decode(data["callback_state"], "callback_state")
    check_kinds(source, data.get("kinds"), state_kinds(state))
    extras = {**state.extras, **decode(data["extras"], "extras")}
    carry = restore_carry(data["carry"], state, str(path), reset_carry)
    schedulers = data["schedulers"]
    pairs = [("scaler", state.scaler, data["scaler"])]
    pairs += [
        ("scheduler" if not p.name else f"phase {p.name!r} scheduler", p.scheduler,
         schedulers.get(p.name))
        for p in state.phases
    ]  # fmt: skip
    for name, obj, saved in pairs:
        if (obj is None) != (saved is None):
            msg = (
                f"Checkpoint {str(path)!r} {'has' if saved is not None else 'has no'} {name} "
                f"state but the template {'has no' if obj is None else 'has a'} {name}: build "
                "the template the way the saved run was built."
            )
            raise CheckpointError(msg)
    run_changes, average_shards = restore_runstate(state, data, str(path))
    if source.is_dir():
        load_sharded(state, source, data, averages=average_shards)
    else:
        groups = {name: sd["param_groups"] for name, sd in data["optimizers"].items()}
        check_matches(state, source, shapes(data["model"]), groups)
        load_full(state, data)
    for _, obj, saved in pairs:
        if saved is not None:
            obj.load_state_dict(saved)
    meta = data["meta"]
    return advance(
        state,
        "load",
        step=meta["step"],
        epoch=meta["epoch"],
        epoch_batch=meta["epoch_batch"],
        micro_step=meta["micro_step"],
        skipped_steps=meta.get("skipped_steps", 0),
        seed=meta["seed"],
        stream=meta["stream"],
        extras=extras,
        carry=carry,
        handoff={},
        epoch_totals={k: (float(s), float(n)) for k, (s, n) in meta["epoch_totals"].items()},
        callback_state=callback_state,
        should_stop=False,
        **run_changes,
    )


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and verify the checkpoint at ``path`` without a template; return what it holds.

    For inspection: nothing is loaded into a model. The result is a dict of plain data, with
    tensors on the CPU:

    - ``"meta"``: ``step``, ``epoch``, ``epoch_batch``, ``micro_step``, ``skipped_steps``,
      ``seed``, ``stream``, ``epoch_totals`` and the ``torch_version`` that wrote it;
    - ``"model"``: the full state dict (parameter names without any wrapper's prefix), and
      ``"optimizers"``: every optimizer's by phase name (``""`` for a single optimizer); absent
      for a directory of shards, which has ``"sharded"`` instead (the world size that wrote it
      and the optimizers' hyperparameters; the tensors stay in the shards);
    - ``"schedulers"`` (by phase name) and ``"scaler"``: their state dicts, or None;
      ``"kinds"``: the class names of every phase's optimizer and scheduler;
    - ``"callback_state"`` and ``"extras"``: the run state, registered records rebuilt as their
      classes and generators as generators; ``"carry"``: every process's carried value.
    - ``"history"``: the rows `fit` returned in the run so far;
    - ``"averages"``: each average's ``kind``, ``count`` and (in a file) ``tensors``;
    - ``"loader"``: the train loader's position of every rank, or None.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, not an ftrain checkpoint, from
            a newer format version, or holds a record whose class is not registered.

    Example:
        >>> import os, tempfile, ftrain
        >>> state, _ = ftrain.train_step(ftrain.testing.toy_state(), ftrain.testing.toy_batch())
        >>> path = ftrain.save(state, os.path.join(tempfile.mkdtemp(), "step-1.ckpt"))
        >>> contents = ftrain.read_checkpoint(path)
        >>> meta, model = contents["meta"], contents["model"]
        >>> meta["step"], sorted(model)
        (1, ['bias', 'weight'])
    """
    source = _checkpoint_path(path)
    data = read_verified(source)
    check_record(data, source)
    data["callback_state"] = decode(data["callback_state"], "callback_state")
    data["extras"] = decode(data["extras"], "extras")
    data["history"] = decode(data.get("history", []), "history")
    return data
