"""A kit for testing training code: tiny states and batches, and assertions on steps.

It is one module, a little over 300 lines, because it is the public ``ftrain.testing``
namespace: a handful of short, independent helpers that users import from one place.

Example:
    >>> import ftrain
    >>> state = ftrain.testing.toy_state(seed=1)
    >>> state, metrics = ftrain.train_step(state, ftrain.testing.toy_batch())
    >>> state.step
    1
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ._checkpoint import load, save
from ._fit import fit
from ._fork import fork
from ._loss import supervised
from ._state import TrainState
from ._step import eval_step, forward_backward, train_step
from ._typing import StepFn

__all__ = [
    "assert_no_param_change",
    "assert_overfits",
    "assert_pure_step",
    "assert_resume_equivalent",
    "assert_states_equal",
    "assert_step_changes_params",
    "find_unused_parameters",
    "toy_batch",
    "toy_state",
]


def toy_state(
    *,
    in_features: int = 2,
    out_features: int = 3,
    lr: float = 0.1,
    seed: int = 0,
    dropout: float = 0.0,
) -> TrainState:
    """A tiny regression state: ``Linear(in, out)`` (with optional dropout), SGD, MSE loss.

    The weights are drawn from a private generator seeded with ``seed``, so building one does not
    touch torch's global RNG.
    """
    g = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=g) * 0.5)
        linear.bias.copy_(torch.randn(linear.bias.shape, generator=g) * 0.1)
    model: nn.Module = linear if dropout == 0 else nn.Sequential(nn.Dropout(dropout), linear)
    return TrainState.create(
        model=model,
        optimizer=lambda params: torch.optim.SGD(params, lr=lr),
        loss_fn=supervised(nn.MSELoss()),
        seed=seed,
    )


def toy_batch(
    n: int = 4, *, in_features: int = 2, out_features: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic ``(inputs, targets)`` batch for `toy_state`."""
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, in_features, generator=g)
    return x, torch.randn(n, out_features, generator=g)


def _params(state: TrainState) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in state.model.named_parameters()}


def assert_step_changes_params(
    state: TrainState, batch: Any, *, step_fn: StepFn = train_step, allow: Sequence[str] = ()
) -> None:
    """Assert one step changes every trainable parameter (except those named in ``allow``).

    Works on a `fork`, so ``state`` is not consumed.

    Example:
        >>> import ftrain
        >>> from ftrain.testing import assert_step_changes_params, toy_batch, toy_state
        >>> assert_step_changes_params(toy_state(), toy_batch())
    """
    work = fork(state)
    before = _params(work)
    after_state, _ = step_fn(work, batch)
    after = _params(after_state)
    trainable = {n for n, p in after_state.model.named_parameters() if p.requires_grad}
    unchanged = [n for n in sorted(trainable - set(allow)) if torch.equal(before[n], after[n])]
    if unchanged:
        msg = f"parameters did not change after one step: {', '.join(unchanged)}."
        raise AssertionError(msg)


def assert_no_param_change(fn: Callable[..., Any], state: TrainState, *args: Any) -> Any:
    """Assert ``fn(state, *args)`` leaves every parameter and buffer as it was; return its result.

    Example:
        >>> import ftrain
        >>> s = ftrain.testing.toy_state()
        >>> batch = ftrain.testing.toy_batch()
        >>> _ = ftrain.testing.assert_no_param_change(ftrain.eval_step, s, batch)
    """
    before = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
    result = fn(state, *args)
    changed = [k for k, v in state.model.state_dict().items() if not torch.equal(before[k], v)]
    if changed:
        msg = f"{getattr(fn, '__name__', fn)!s} changed: {', '.join(changed)}."
        raise AssertionError(msg)
    return result


def assert_overfits(
    state: TrainState,
    batch: Any,
    steps: int = 50,
    *,
    factor: float = 0.5,
    step_fn: StepFn = train_step,
) -> tuple[float, float]:
    """Assert training on one batch for ``steps`` steps brings the loss below ``factor`` × start.

    The classic sanity check: a model that cannot overfit one batch has a bug. Works on a fork.

    Returns:
        ``(first_loss, last_loss)``.

    Example:
        >>> import ftrain
        >>> from ftrain.testing import assert_overfits, toy_batch, toy_state
        >>> first, last = assert_overfits(toy_state(), toy_batch())
    """
    work = fork(state)
    first = float(eval_step(work, batch)["loss"])
    for _ in range(steps):
        work, _ = step_fn(work, batch)
    last = float(eval_step(work, batch)["loss"])
    if not last < factor * first:
        msg = (
            f"loss did not fall below {factor} x its start after {steps} steps on one batch "
            f"(from {first:.6g} to {last:.6g}): check the loss, the learning rate and that "
            "the optimizer holds the model's parameters."
        )
        raise AssertionError(msg)
    return first, last


def find_unused_parameters(state: TrainState, batch: Any) -> list[str]:
    """Names of trainable parameters that get no gradient from ``loss_fn`` on ``batch``.

    Runs `forward_backward` on a fork, so ``state`` is not consumed; on a state with named
    phases, every phase's, in order (each phase's parameters get gradients only from its own loss).

    Example:
        >>> import ftrain
        >>> from ftrain.testing import find_unused_parameters, toy_batch, toy_state
        >>> find_unused_parameters(toy_state(), toy_batch())
        []
    """
    work = fork(state)
    if not work.phases[0].name:
        work, _ = forward_backward(work, batch)
    for phase in work.phases if work.phases[0].name else ():
        work, _ = forward_backward(work, batch, phase=phase.name)
    return [n for n, p in work.model.named_parameters() if p.requires_grad and p.grad is None]


def assert_pure_step(state: TrainState, batch: Any, *, step_fn: StepFn = train_step) -> None:
    """Assert two forks of ``state`` given ``batch`` give bit-identical metrics and parameters.

    Catches randomness that does not come from the state (a global generator read outside the
    step, ``time``-based seeds, nondeterministic kernels). Works on forks.

    Example:
        >>> import ftrain
        >>> from ftrain.testing import assert_pure_step, toy_batch, toy_state
        >>> assert_pure_step(toy_state(dropout=0.5), toy_batch())
    """
    a, ma = step_fn(fork(state), batch)
    torch.manual_seed(torch.seed() % 2**31)  # disturb the global generator in between
    b, mb = step_fn(fork(state), batch)
    diff = [k for k in ma if not torch.equal(torch.as_tensor(ma[k]), torch.as_tensor(mb[k]))]
    pa, pb = _params(a), _params(b)
    diff += [n for n in pa if not torch.equal(pa[n], pb[n])]
    if diff:
        msg = f"the same state and batch gave different results for: {', '.join(diff)}."
        raise AssertionError(msg)


_TIMING = ("epoch_time", "samples_per_sec")


def assert_states_equal(a: TrainState, b: TrainState) -> None:
    """Assert two states hold bit-identical weights, buffers, optimizer state, counters, extras."""
    for field in ("step", "epoch", "epoch_batch", "micro_step", "skipped_steps", "seed", "stream"):
        if getattr(a, field) != getattr(b, field):
            msg = f"`{field}` differs: {getattr(a, field)} vs {getattr(b, field)}."
            raise AssertionError(msg)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    diff = [k for k in sa if not torch.equal(sa[k], sb[k])]
    for pa, pb in zip(a.phases, b.phases, strict=True):
        where = f"optimizers[{pa.name!r}]" if pa.name else "optimizer"
        oa, ob = pa.optimizer.state_dict()["state"], pb.optimizer.state_dict()["state"]
        diff += [
            f"{where}[{i}].{k}"
            for i in oa
            for k, v in oa[i].items()
            if isinstance(v, torch.Tensor) and not torch.equal(v, ob[i][k])
        ]
        if pa.scheduler is not None and pa.scheduler.state_dict() != pb.scheduler.state_dict():
            diff.append(f"schedulers[{pa.name!r}]" if pa.name else "scheduler")
    diff += [
        f"extras[{k!r}]"
        for k in set(a.extras) | set(b.extras)
        if not _same(a.extras.get(k), b.extras.get(k))
    ]
    if set(a.averages) != set(b.averages):
        diff.append(f"averages ({sorted(a.averages)} vs {sorted(b.averages)})")
    for name in set(a.averages) & set(b.averages):
        ta, tb = a.averages[name], b.averages[name]
        if ta.count != tb.count:
            diff.append(f"averages[{name!r}].count")
        diff += [
            f"averages[{name!r}].{k}"
            for k in ta.tensors
            if not torch.equal(ta.tensors[k], tb.tensors[k])
        ]
    if diff:
        msg = f"states differ in: {', '.join(diff[:10])}."
        raise AssertionError(msg)


def _same(a: Any, b: Any) -> bool:
    """Run state compared exactly: generators by their state, tensors bit for bit."""
    if isinstance(a, torch.Generator) and isinstance(b, torch.Generator):
        return torch.equal(a.get_state(), b.get_state())
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.equal(a, b)
    if type(a) in (list, tuple) and type(a) is type(b) and len(a) == len(b):
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict and type(b) is dict and a.keys() == b.keys():
        return all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def assert_resume_equivalent(
    make_state: Callable[[], TrainState],
    loaders: Any,
    *,
    max_steps: int,
    resume_at: int,
    path: str | os.PathLike[str],
    callbacks: Callable[[], Sequence[Any]] = tuple,
    **fit_kwargs: Any,
) -> TrainState:
    """Assert N steps straight equal k steps, `save`, `load` into a fresh state, N − k steps.

    Compares every parameter, buffer, optimizer and averaged-weight tensor bit for bit
    (`torch.equal`), the counters, and the history `fit` returned: the resumed `fit` returns the
    whole run's (timings aside; float logs to 1e-12 relative, since an epoch's sums are added in
    another order across the split).

    Args:
        make_state: builds a fresh (unplaced or placed) state; called three times.
        loaders: as for `fit`.
        max_steps: N, the length of the run.
        resume_at: k, where the run is cut, saved and resumed.
        path: the checkpoint file to use.
        callbacks: builds the run's callbacks (fresh ones for each of the three fits).
        fit_kwargs: passed to every `fit` call.

    Returns:
        The resumed run's final state.
    """
    straight, history = fit(make_state(), loaders, callbacks(), max_steps=max_steps, **fit_kwargs)
    first, _ = fit(make_state(), loaders, callbacks(), max_steps=resume_at, **fit_kwargs)
    save(first, path)
    resumed = load(make_state(), path)
    resumed, joined = fit(resumed, loaders, callbacks(), max_steps=max_steps, **fit_kwargs)
    assert_states_equal(straight, resumed)
    if len(joined) != len(history):
        msg = f"history has {len(history)} rows straight but {len(joined)} resumed."
        raise AssertionError(msg)
    for row_a, row_b in zip(history, joined, strict=True):
        keys = set(row_a) - set(_TIMING)
        if keys != set(row_b) - set(_TIMING) or any(
            not math.isclose(row_a[k], row_b[k], rel_tol=1e-12, abs_tol=1e-15) for k in keys
        ):
            msg = f"history differs: {row_a} vs {row_b}."
            raise AssertionError(msg)
    return resumed
