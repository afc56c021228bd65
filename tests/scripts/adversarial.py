"""ftrain's adversarial suite: bad input and faults, each case judged automatically.

Written to the behaviour issue 13 asks for ("nothing lost, nothing wrong"), so a case that fails
names a bug to fix. Every case is a small record in one of the tables below:

- **bad input** (`Bad`): a call a hostile new user might make. It must raise the right type
  (``TypeError`` for a wrong type, ``ValueError`` for a wrong value, ftrain's own errors where they
  apply) with a message that names the argument and shows what came. A failing case counts as an
  *unclear error*.
- **faults** (`Fault`): exceptions inside `fit` (a batch, validation, a callback at each event,
  an epoch end), Ctrl-C and SIGKILL, mismatched checkpoints, odd directories and files. Judged by
  the files on disk (the last checkpoint loads and holds the progress made), by the weights (never
  half updated) and by resuming: the resumed run must equal an uninterrupted one bit for bit
  (``torch.equal`` on every parameter, buffer and optimizer tensor). A failing case counts as
  *work lost* or *silently wrong*.
- **campaigns** (``--kills N``, ``--interrupts N``): N random SIGKILLs and N random Ctrl-Cs
  (SIGINT) during a `fit` with `Checkpoint` in a subprocess; after each, the newest checkpoint
  must load and equal the uninterrupted run at its step, and the run finished by resuming must
  equal the uninterrupted one.

One line per case, ``PASS|FAIL|ERROR  <category>  <case id>  <detail>``, then a summary line; the
exit status is 1 when anything failed. ERROR means the case could not be judged (its own set-up
failed, or it timed out).

    python tests/scripts/adversarial.py                  # everything, with 20 kills and 20 Ctrl-Cs
    python tests/scripts/adversarial.py --fast           # the CI subset (under a minute)
    python tests/scripts/adversarial.py --only load.  # cases whose id or category contains "load."
    python tests/scripts/adversarial.py --list  # the table: what each case does and expects
    python tests/scripts/adversarial.py --kills 50 --interrupts 0 --only kill
    python tests/scripts/adversarial.py --report report.txt

Only ftrain's public API is used (``import ftrain``, ``ftrain.callbacks``); events are matched with
``isinstance``, never built.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fnmatch
import hashlib
import io
import math
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import ftrain
from ftrain.callbacks import (
    Checkpoint,
    CSVLogger,
    EarlyStopping,
    LearningRateMonitor,
    ProgressBar,
    TerminateOnNaN,
    Timer,
)

ROOT = Path(__file__).resolve().parents[2]
FTRAIN_DIR = Path(ftrain.__file__).resolve().parent

# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------

LOST, WRONG, UNCLEAR = "work lost", "silently wrong", "unclear error"


class Fail(Exception):
    """A judged failure; ``risk`` overrides the case's own (a resume that differs is wrong)."""

    def __init__(self, detail: str, risk: str | None = None):
        super().__init__(detail)
        self.risk = risk


class Harness(Exception):
    """The case could not be set up or judged (an ERROR line, not a FAIL)."""


class CaseTimeout(BaseException):
    """A case ran past its deadline."""


class Boom(Exception):
    """The injected fault."""


class Reported(Exception):
    """What a user saw, collected by the harness (judged like an error ftrain raised)."""


class DistributedFailure(Reported):
    """What the ranks of a failed distributed job reported (their error lines)."""


class Late(Reported):
    """A bad argument was found only after training had started (it should be found first)."""


@dataclass
class Result:
    status: str  # PASS, FAIL or ERROR
    risk: str
    detail: str
    seconds: float = 0.0


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return clip(lines[-1] if lines else "?", 100)


def clip(text: object, n: int = 150) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def describe_error(err: BaseException) -> str:
    if isinstance(err, Reported):
        return clip(str(err))
    return clip(f"{type(err).__name__}: {err}")


def from_ftrain(err: BaseException) -> bool:
    """True when ``err`` was raised inside ftrain (or by code ftrain called)."""
    tb = err.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        # attrs validators of ftrain's records run in generated code named after the class
        if filename.startswith("<attrs generated") and "ftrain." in filename:
            return True
        if Path(filename).resolve().is_relative_to(FTRAIN_DIR):
            return True
        tb = tb.tb_next
    cause = err.__cause__ or err.__context__
    return cause is not None and cause is not err and from_ftrain(cause)


# ---------------------------------------------------------------------------------------------
# Fault injection: points armed only during the faulty run of a case
# ---------------------------------------------------------------------------------------------

ARMED: dict[str, Any] = {}
COUNTS: dict[str, int] = {}


@contextlib.contextmanager
def armed(**points: Any) -> Iterator[None]:
    """Arm fault points (``loss_call=9``: the 9th training call of the loss raises) for a block."""
    ARMED.clear()
    COUNTS.clear()
    ARMED.update(points)
    try:
        yield
    finally:
        ARMED.clear()
        COUNTS.clear()


def tick(point: str) -> bool:
    """Count one pass through ``point``; True exactly when its armed count is reached."""
    at = ARMED.get(point)
    if at is None:
        return False
    COUNTS[point] = COUNTS.get(point, 0) + 1
    return COUNTS[point] == at


class FlakyData(Dataset):  # type: ignore[type-arg]
    """A tensor dataset whose ``role``_fetch-th item fetch raises (when armed)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, role: str):
        self.x, self.y, self.role = x, y, role

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if tick(f"{self.role}_fetch"):
            raise Boom(f"{self.role} loader failed on purpose")
        if tick(f"{self.role}_sigint"):
            signal.raise_signal(signal.SIGINT)
        return self.x[i], self.y[i]


class FlakyLoss:
    """Cross-entropy through `ftrain.supervised`; raises or goes NaN on an armed training call."""

    def __init__(self) -> None:
        self.inner = ftrain.supervised(nn.CrossEntropyLoss())

    def __call__(self, model: nn.Module, batch: Any) -> Any:
        if model.training:
            if tick("loss_call"):
                raise Boom("loss_fn failed on purpose")
            if tick("nan_call"):
                loss, metrics = self.inner(model, batch)
                return loss * math.nan, metrics
        return self.inner(model, batch)


class FlakyStepLR(torch.optim.lr_scheduler.StepLR):
    """StepLR whose armed ``sched_step``-th step raises (at an epoch end, with interval "epoch")."""

    def step(self, *args: Any, **kwargs: Any) -> None:
        if tick("sched_step"):
            raise Boom("scheduler failed on purpose at the epoch end")
        super().step(*args, **kwargs)


class TwoPhaseSGD(torch.optim.Optimizer):
    """SGD with momentum that updates one parameter at a time, so a Ctrl-C can land in between.

    When ``update`` is armed, the armed optimizer step sends this process SIGINT after its first
    parameter was updated (and, with ``twice``, again after the second one).
    """

    def __init__(self, params: Any, lr: float = 0.05, momentum: float = 0.9):
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        done, fire = 0, False
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = self.state[p]["momentum_buffer"] = p.grad.clone()
                else:
                    buf.mul_(group["momentum"]).add_(p.grad)
                p.add_(buf, alpha=-group["lr"])
                done += 1
                if not group["lr"]:  # torch's state-dict helper stepping with lr 0: not an update
                    continue
                if done == 1:
                    fire = tick("update")
                if fire and (done == 1 or (done == 2 and ARMED.get("twice"))):
                    signal.raise_signal(signal.SIGINT)


# ---------------------------------------------------------------------------------------------
# Small builders (public API only)
# ---------------------------------------------------------------------------------------------


def toy(**kw: Any) -> ftrain.TrainState:
    return ftrain.testing.toy_state(**kw)


def dict_batch() -> dict[str, torch.Tensor]:
    x, y = ftrain.testing.toy_batch()
    return {"x": x, "y": y}


def toy_batches(n: int = 4) -> list[Any]:
    return [ftrain.testing.toy_batch(seed=i) for i in range(n)]


def custom_loss(loss_fn: Callable[..., Any]) -> ftrain.TrainState:
    """A toy-sized state (Linear 2 -> 3, SGD) with the given loss function."""
    return ftrain.TrainState.create(
        model=nn.Linear(2, 3),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        loss_fn=loss_fn,
    )


def mse(model: nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def with_metrics(extra: Callable[[torch.Tensor, torch.Tensor], dict[Any, Any]]) -> Any:
    def loss_fn(model: nn.Module, batch: Any) -> Any:
        x, y = batch
        out = model(x)
        return nn.functional.mse_loss(out, y), extra(out, y)

    return loss_fn


OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.05),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "two-phase": lambda p: TwoPhaseSGD(p),
}
SCHEDULERS: dict[str | None, Any] = {
    None: None,
    "steplr": lambda o: FlakyStepLR(o, step_size=5, gamma=0.5),
    "torch-steplr": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=5, gamma=0.5),
    "exponential": lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.9),
}


def mlp(
    seed: int = 0,
    *,
    optimizer: str = "adamw",
    scheduler: str | None = "steplr",
    interval: str = "step",
    groups: int = 1,
) -> ftrain.TrainState:
    """A 10 -> 16 -> 2 classifier with dropout: the model of the fault cases."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 2))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    make = OPTIMIZERS[optimizer]

    def two_groups(params: Any) -> torch.optim.Optimizer:
        return make([{"params": model[0].parameters()}, {"params": model[3].parameters()}])

    opt = two_groups if groups == 2 else make
    return ftrain.TrainState.create(
        model=model,
        optimizer=opt,
        loss_fn=FlakyLoss(),
        scheduler=SCHEDULERS[scheduler],
        scheduler_interval=interval,  # type: ignore[arg-type]
        seed=seed,
    )


def dataset(role: str, n: int = 96) -> FlakyData:
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(n, 10, generator=g)
    return FlakyData(x, (x[:, 0] + 0.5 * x[:, 1] > 0).long(), role)


def loaders() -> tuple[DataLoader[Any], DataLoader[Any]]:
    """6 shuffled training batches of 16 and 3 validation batches of 32."""
    return DataLoader(dataset("train"), batch_size=16, shuffle=True), DataLoader(
        dataset("val"), batch_size=32
    )


BATCHES_PER_EPOCH = 6


@dataclass(frozen=True)
class Run:
    """One training configuration of the fault cases: state, data and `fit` limits."""

    optimizer: str = "adamw"
    scheduler: str | None = "steplr"
    interval: str = "step"
    epochs: int | None = 3
    steps: int | None = None
    log_every: int = 2
    validate: bool = True

    def state(self, seed: int = 0) -> ftrain.TrainState:
        return mlp(seed, optimizer=self.optimizer, scheduler=self.scheduler, interval=self.interval)

    def fit(
        self,
        state: ftrain.TrainState,
        callbacks: Sequence[Any] = (),
        **kw: Any,
    ) -> tuple[ftrain.TrainState, list[dict[str, Any]]]:
        train, val = loaders()
        kw = {
            "max_epochs": self.epochs,
            "max_steps": self.steps,
            "log_every_n_steps": self.log_every,
            **kw,
        }
        return ftrain.fit(state, (train, val) if self.validate else train, list(callbacks), **kw)

    def straight(self) -> tuple[ftrain.TrainState, list[dict[str, Any]]]:
        """The uninterrupted run (computed once per configuration)."""
        if self not in _STRAIGHT:
            _STRAIGHT[self] = self.fit(self.state())
        return _STRAIGHT[self]


_STRAIGHT: dict[Run, tuple[ftrain.TrainState, list[dict[str, Any]]]] = {}
DEFAULT = Run()


def interrupt_only(directory: Path, **kw: Any) -> Checkpoint:
    """A `Checkpoint` that saves only when training is cut short: it must catch every failure."""
    return Checkpoint(directory, every_n_steps=None, every_n_epochs=None, **kw)


class Recorder:
    """Remembers the last training step that completed and the events seen."""

    def __init__(self) -> None:
        self.step = 0
        self.first_step: int | None = None
        self.events: list[str] = []

    def __call__(self, state: ftrain.TrainState, event: Any) -> ftrain.TrainState:
        self.events.append(type(event).__name__)
        if isinstance(event, ftrain.FitStart) and self.first_step is None:
            self.first_step = event.step
        if isinstance(event, ftrain.StepEnd):
            self.step = event.step
        return state


class Raiser:
    """Raises `Boom` on the ``nth`` event of ``kind`` (with ``forever``, on every later one too)."""

    def __init__(self, kind: type, nth: int = 1, forever: bool = False):
        self.kind, self.nth, self.forever, self.seen, self.fired = kind, nth, forever, 0, False

    def __call__(self, state: ftrain.TrainState, event: Any) -> ftrain.TrainState:
        if self.fired and self.forever:
            raise Boom(f"callback raising on every event ({type(event).__name__})")
        if isinstance(event, self.kind):
            self.seen += 1
            if self.seen == self.nth:
                self.fired = True
                raise Boom(f"callback failed on purpose at {type(event).__name__}")
        return state


class SignalAt:
    """Sends this process ``sig`` at the ``nth`` event of ``kind``."""

    def __init__(self, sig: int, kind: type = ftrain.StepEnd, nth: int = 7):
        self.sig, self.kind, self.nth, self.seen = sig, kind, nth, 0

    def __call__(self, state: ftrain.TrainState, event: Any) -> ftrain.TrainState:
        if isinstance(event, self.kind):
            self.seen += 1
            if self.seen == self.nth:
                signal.raise_signal(self.sig)
        return state


def at_start(run_fit: Callable[[Recorder], Any]) -> Any:
    """Run ``run_fit(recorder)``; an error found only after training started becomes `Late`."""
    rec = Recorder()
    try:
        return run_fit(rec)
    except Exception as err:
        if rec.step > 0:
            raise Late(
                f"found only after {rec.step} trained steps: {type(err).__name__}: {err}"
            ) from err
        raise


# ---------------------------------------------------------------------------------------------
# Comparing states bit for bit
# ---------------------------------------------------------------------------------------------


def tree_differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths where two nested structures of tensors and plain values differ (torch.equal)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and a.dtype == b.dtype
            and torch.equal(a, b)
        )
        return [] if same else [path or "value"]
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k}" for k in set(a) ^ set(b)]
        for k in a:
            if k in b:
                out += tree_differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [path]
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += tree_differences(x, y, f"{path}[{i}]")
        return out
    try:
        return [] if a == b else [path or "value"]
    except Exception:
        return [path or "value"]


def snapshot(state: ftrain.TrainState) -> dict[str, Any]:
    """Everything training depends on, as plain data: weights, buffers, optimizer, scheduler."""
    return {
        "model": {k: v.detach().clone() for k, v in state.model.state_dict().items()},
        "optimizer": copy.deepcopy(state.optimizer.state_dict()),
        "optimizer_class": type(state.optimizer).__name__,
        "scheduler": None
        if state.scheduler is None
        else copy.deepcopy(state.scheduler.state_dict()),
    }


def differences(
    a: ftrain.TrainState, b: ftrain.TrainState, counters: tuple[str, ...] = ("step", "epoch")
) -> list[str]:
    out = [
        f"{c} {getattr(a, c)} vs {getattr(b, c)}"
        for c in counters
        if getattr(a, c) != getattr(b, c)
    ]
    return out + tree_differences(snapshot(a), snapshot(b))


def same(
    resumed: ftrain.TrainState, straight: ftrain.TrainState, what: str = "the resumed run"
) -> None:
    diff = differences(resumed, straight)
    if diff:
        raise Fail(
            f"{what} differs from the uninterrupted one in {', '.join(diff[:4])}"
            f"{' ...' if len(diff) > 4 else ''}",
            WRONG,
        )


def latest(directory: Path) -> Path | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ftrain.latest_checkpoint(directory) if directory.is_dir() else None


# ---------------------------------------------------------------------------------------------
# Case records
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A bad input: ``action`` must raise ``raises`` with a message matching ``names`` (the
    argument) and ``shows`` (what came), and not matching ``avoid`` (a misleading diagnosis)."""

    id: str
    call: str
    action: Callable[[Path], Any]
    raises: type[BaseException] | tuple[type[BaseException], ...]
    names: str
    shows: str
    avoid: str | None = None
    tag: str = "args"
    fast: bool = True
    category: str = "bad-input"
    timeout: float = 120.0

    @property
    def expect(self) -> str:
        types = self.raises if isinstance(self.raises, tuple) else (self.raises,)
        text = f"{self.call} -> {' or '.join(t.__name__ for t in types)} naming /{self.names}/"
        text += f", showing /{self.shows}/"
        return text + (f", not saying /{self.avoid}/" if self.avoid else "")

    def judge(self, tmp: Path) -> Result:
        try:
            self.action(tmp)
        except Harness:
            raise
        except Exception as err:
            return self.verdict(err)
        return Result("FAIL", UNCLEAR, "no error: the bad input was accepted")

    def verdict(self, err: Exception) -> Result:
        if not isinstance(err, Reported) and not from_ftrain(err):
            return Result("ERROR", UNCLEAR, f"harness: {describe_error(err)}")
        msg = str(err)
        problems = []
        if not isinstance(err, self.raises):
            types = self.raises if isinstance(self.raises, tuple) else (self.raises,)
            problems.append(f"want {'/'.join(t.__name__ for t in types)}")
        quoted = self.names.replace("`", "[`']")  # `arg` or 'arg' both name it
        if not re.search(quoted, msg, re.S):
            problems.append("argument not named")
        if not re.search(self.shows, msg, re.S):
            problems.append("value not shown")
        if self.avoid and re.search(self.avoid, msg, re.S):
            problems.append("misleading")
        if problems:
            return Result("FAIL", UNCLEAR, f"{'; '.join(problems)}: {describe_error(err)}")
        return Result("PASS", UNCLEAR, describe_error(err))


@dataclass(frozen=True)
class Fault:
    """A fault: ``check(tmp)`` returns a detail, or raises `Fail` with what went wrong."""

    id: str
    category: str
    risk: str
    expect: str
    check: Callable[[Path], str]
    tag: str = "extra"
    fast: bool = True
    timeout: float = 180.0

    def judge(self, tmp: Path) -> Result:
        try:
            return Result("PASS", self.risk, self.check(tmp))
        except Fail as err:
            return Result("FAIL", err.risk or self.risk, str(err))
        except Harness:
            raise
        except Exception as err:
            if from_ftrain(err):  # ftrain itself failed in a way the check did not expect
                return Result("FAIL", self.risk, f"ftrain raised {describe_error(err)}")
            raise Harness(describe_error(err)) from err


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def _fit(state: Any = None, loaders_: Any = None, **kw: Any) -> Any:
    """`fit` on the toy state and 4 toy batches, for one epoch, with ``kw`` overriding."""
    args = {"max_epochs": 1, **kw}
    state = toy() if state is None else state
    return ftrain.fit(state, toy_batches() if loaders_ is None else loaders_, **args)


def _train_step(loss_fn: Callable[..., Any]) -> Any:
    return ftrain.train_step(custom_loss(loss_fn), ftrain.testing.toy_batch())


def _fit_metrics(extra: Callable[[torch.Tensor, torch.Tensor], dict[Any, Any]]) -> Any:
    return ftrain.fit(
        custom_loss(with_metrics(extra)), toy_batches(), max_epochs=1, log_every_n_steps=2
    )


def _other_model_optimizer() -> Any:
    return ftrain.TrainState.create(
        model=nn.Linear(2, 3),
        optimizer=torch.optim.SGD(nn.Linear(2, 3).parameters(), lr=0.1),
        loss_fn=mse,
    )


def _scheduler_over_other_optimizer() -> Any:
    other = torch.optim.SGD(nn.Linear(2, 3).parameters(), lr=0.1)
    return ftrain.TrainState.create(
        model=nn.Linear(2, 3),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        loss_fn=mse,
        scheduler=torch.optim.lr_scheduler.StepLR(other, 5),
    )


def _create(**kw: Any) -> Any:
    args: dict[str, Any] = {
        "model": nn.Linear(2, 3),
        "optimizer": lambda p: torch.optim.SGD(p, lr=0.1),
        "loss_fn": mse,
        **kw,
    }
    return ftrain.TrainState.create(**args)


def _create_and_step(**kw: Any) -> Any:
    return ftrain.train_step(_create(**kw), ftrain.testing.toy_batch())


def _checkpoint_dir_is_file(tmp: Path) -> Any:
    target = tmp / "checkpoints"
    target.write_text("not a directory")
    return at_start(
        lambda rec: ftrain.fit(toy(), toy_batches(), [rec, Checkpoint(target)], max_epochs=2)
    )


def _checkpoint_dir_dangling(tmp: Path) -> Any:
    target = tmp / "checkpoints"
    target.symlink_to(tmp / "gone" / "away")
    return at_start(
        lambda rec: ftrain.fit(toy(), toy_batches(), [rec, Checkpoint(target)], max_epochs=2)
    )


def _early_stopping_typo(tmp: Path) -> Any:
    stop = EarlyStopping(monitor="val_los")
    return ftrain.fit(toy(), (toy_batches(), toy_batches(2)), [stop], max_epochs=2)


def _nan_in_second_epoch(tmp: Path) -> Any:
    state = mlp()
    train = DataLoader(dataset("train", 64), batch_size=16, shuffle=True)  # 4 batches
    with armed(nan_call=6):  # epoch 2, its batch 1
        return ftrain.fit(state, train, max_epochs=3, log_every_n_steps=50)


def _saved(tmp: Path, state: Any = None, name: str = "a.ckpt") -> Path:
    return ftrain.save(toy() if state is None else state, tmp / name)


def _run_dir(tmp: Path) -> Path:
    d = tmp / "run"
    ftrain.fit(toy(), toy_batches(), [Checkpoint(d, every_n_epochs=1, keep_last=2)], max_epochs=2)
    return d


def _truncated(tmp: Path) -> Path:
    p = _saved(tmp)
    p.write_bytes(p.read_bytes()[:-100])
    return p


def _corrupt(tmp: Path) -> Path:
    p = _saved(tmp)
    raw = bytearray(p.read_bytes())
    raw[-50] ^= 0xFF
    p.write_bytes(bytes(raw))
    return p


def _foreign(tmp: Path) -> Path:
    p = tmp / "foreign.ckpt"
    torch.save({"model": {"weight": torch.zeros(3, 2)}}, p)
    return p


def _rewrite(path: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """Edit a checkpoint's payload and re-sign it, so its checksum stays valid.

    Finds the payload (a ``torch.save`` zip archive) after the header, and the header's SHA-256
    of it and its length, whatever their offsets; no private code of ftrain is used.
    """
    raw = path.read_bytes()
    for start in [m.start() for m in re.finditer(b"PK\x03\x04", raw)]:
        header, payload = raw[:start], raw[start:]
        digest = hashlib.sha256(payload).digest()
        at = header.find(digest)
        if at >= 0:
            break
    else:
        raise Harness("cannot find a signed torch.save payload in this checkpoint format")
    data = torch.load(io.BytesIO(payload), weights_only=True)
    edit(data)
    buf = io.BytesIO()
    torch.save(data, buf)
    new = buf.getvalue()
    header = header[:at] + hashlib.sha256(new).digest() + header[at + 32 :]
    for fmt in ("<Q", ">Q", "<I", ">I"):
        old_len = struct.pack(fmt, len(payload))
        if old_len in header:
            header = header.replace(old_len, struct.pack(fmt, len(new)), 1)
            break
    else:
        raise Harness("cannot find the payload length in the checkpoint header")
    path.write_bytes(header + new)
    return path


def _section(data: dict[str, Any], role: str) -> str:
    """The top-level key of a checkpoint payload holding ``role`` (found by content)."""
    for key, value in data.items():
        if not isinstance(value, dict):
            continue
        if role == "model" and value and all(isinstance(v, torch.Tensor) for v in value.values()):
            return key
        if role == "optimizer" and (
            "param_groups" in value  # one optimizer, or one per named phase:
            or any(isinstance(v, dict) and "param_groups" in v for v in value.values())
        ):
            return key
        if role == "counters" and "step" in value:
            return key
    raise Harness(f"no {role} section found in the checkpoint payload ({sorted(data)})")


def _without(role: str) -> Callable[[Path], Any]:
    def action(tmp: Path) -> Any:
        p = _rewrite(_saved(tmp), lambda d: d.pop(_section(d, role)))
        return ftrain.load(toy(), p)

    return action


def _counters_edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], Any]:
    def action(tmp: Path) -> Any:
        p = _rewrite(_saved(tmp), lambda d: change(d[_section(d, "counters")]))
        return ftrain.load(toy(), p)

    return action


def _stale(fn: Callable[[ftrain.TrainState], Any]) -> Callable[[Path], Any]:
    def action(tmp: Path) -> Any:
        state = toy()
        ftrain.train_step(state, ftrain.testing.toy_batch())
        return fn(state)

    return action


def _with_callback_state(value: Any) -> Callable[[Path], Any]:
    def action(tmp: Path) -> Any:
        state = toy().replace(callback_state={"mine": value})
        return ftrain.save(state, tmp / "a.ckpt")

    return action


def _ddp_short_loader(tmp: Path) -> Any:
    """Two processes under torchrun; rank 1's loader (no len()) has one batch fewer."""
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           __file__, "--worker", "ddp-short"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise Late("the job hung: no process failed within 150 s") from None
    if proc.returncode == 0:
        return None
    errors = [ln for ln in out.splitlines() if re.search(r"(Error|Exception)\b", ln)]
    raise DistributedFailure(" | ".join(dict.fromkeys(errors))[-600:] or out[-600:])


class StreamLoader:
    """An iterable of toy batches without ``len()``."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self) -> Iterator[Any]:
        return (ftrain.testing.toy_batch(seed=i) for i in range(self.n))


def ddp_short_worker() -> None:
    torch.set_num_threads(1)
    state = ftrain.place(toy(), ftrain.DDP(timeout_s=20))
    n = 4 if state.rank == 0 else 3
    ftrain.fit(state, StreamLoader(n), max_epochs=1, log_every_n_steps=1)


# TypeError for a wrong type, ValueError for a wrong value; messages name the argument and show
# what came. ``names`` and ``shows`` are regexes searched in str(error).
NONE = r"None"
SGD_ADAMW = r"SGD.*AdamW|AdamW.*SGD"
BAD: list[Bad] = [
    # TrainState.create
    Bad("create.model-str", 'TrainState.create(model="resnet", ...)',
        lambda t: _create(model="resnet"), TypeError, r"`model`", r"'resnet'"),
    Bad("create.model-none", "TrainState.create(model=None, ...)",
        lambda t: _create(model=None), TypeError, r"`model`", NONE),
    Bad("create.model-class", "TrainState.create(model=nn.Linear, ...) (the class)",
        lambda t: _create(model=nn.Linear), TypeError, r"`model`", r"Linear"),
    Bad("create.optimizer-int", "TrainState.create(optimizer=42, ...)",
        lambda t: _create(optimizer=42), TypeError, r"`optimizer`", r"42"),
    Bad("create.optimizer-factory-none", "TrainState.create(optimizer=lambda p: None, ...)",
        lambda t: _create(optimizer=lambda p: None), TypeError, r"`optimizer`", NONE),
    Bad("create.optimizer-other-params", "an optimizer built over another model's parameters",
        lambda t: _other_model_optimizer(), ValueError, r"`optimizer`", r"param"),
    Bad("create.loss-none", "TrainState.create(loss_fn=None, ...)",
        lambda t: _create(loss_fn=None), TypeError, r"`loss_fn`", NONE),
    Bad("create.loss-criterion", "TrainState.create(loss_fn=nn.MSELoss(), ...), then a step",
        lambda t: _create_and_step(loss_fn=nn.MSELoss()), TypeError, r"`loss_fn`", r"MSELoss",
        tag="unclear"),
    Bad("create.loss-one-arg", "TrainState.create(loss_fn=lambda batch: ..., ...)",
        lambda t: _create(loss_fn=lambda batch: batch), TypeError, r"`loss_fn`",
        r"signature|\(batch\)|lambda"),
    Bad("create.scheduler-int", "TrainState.create(scheduler=42, ...)",
        lambda t: _create(scheduler=42), TypeError, r"`scheduler`", r"42"),
    Bad("create.scheduler-other-optimizer", "a scheduler built over another optimizer",
        lambda t: _scheduler_over_other_optimizer(), ValueError, r"`scheduler`", r"optimizer"),
    Bad("create.scheduler-interval", 'TrainState.create(scheduler_interval="batch", ...)',
        lambda t: _create(scheduler_interval="batch"), ValueError, r"`scheduler_interval`",
        r"'batch'"),
    Bad("create.seed-str", 'TrainState.create(seed="0", ...)',
        lambda t: _create(seed="0"), TypeError, r"`seed`", r"'0'"),
    Bad("create.seed-float", "TrainState.create(seed=1.5, ...)",
        lambda t: _create(seed=1.5), TypeError, r"`seed`", r"1\.5"),
    Bad("create.seed-bool", "TrainState.create(seed=True, ...)",
        lambda t: _create(seed=True), TypeError, r"`seed`", r"True"),
    # What loss_fn returns
    Bad("loss.float", "loss_fn returns loss.item()",
        lambda t: _train_step(lambda m, b: mse(m, b).item()), TypeError, r"`loss_fn`", r"float"),
    Bad("loss.none", "loss_fn returns None",
        lambda t: _train_step(lambda m, b: None), TypeError, r"`loss_fn`", NONE),
    Bad("loss.string", 'loss_fn returns "0.5"',
        lambda t: _train_step(lambda m, b: "0.5"), TypeError, r"`loss_fn`", r"str"),
    Bad("loss.per-sample", "loss_fn returns a per-sample loss of shape (4,)",
        lambda t: _train_step(lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(1)), ValueError,
        r"`loss_fn`", r"\(4,\)"),
    Bad("loss.detached", "loss_fn returns loss.detach()",
        lambda t: _train_step(lambda m, b: mse(m, b).detach()), ValueError, r"`loss_fn`",
        r"detach"),
    Bad("loss.integer", "loss_fn returns an integer tensor torch.tensor(3)",
        lambda t: _train_step(lambda m, b: torch.tensor(3)), (TypeError, ValueError),
        r"`loss_fn`", r"int64|integer|Long", avoid=r"detach", tag="unclear"),
    Bad("loss.tuple-of-3", "loss_fn returns (loss, {}, 1)",
        lambda t: _train_step(lambda m, b: (mse(m, b), {}, 1)), TypeError, r"`loss_fn`", r"3"),
    Bad("loss.metrics-list", "loss_fn returns (loss, [acc])",
        lambda t: _train_step(lambda m, b: (mse(m, b), [torch.tensor(1.0)])), TypeError,
        r"`loss_fn`", r"list"),
    # Metrics a loss_fn reports
    Bad("metric.string", 'loss_fn reports {"name": "abc"}',
        lambda t: _fit_metrics(lambda o, y: {"name": "abc"}), TypeError, r"'name'|`name`",
        r"str", tag="unclear"),
    Bad("metric.per-sample", 'loss_fn reports {"err": <shape (4,)>}',
        lambda t: _fit_metrics(lambda o, y: {"err": (o - y).abs().mean(1)}), ValueError,
        r"'err'|`err`", r"\(4,\)", tag="unclear"),
    Bad("metric.list", 'loss_fn reports {"vals": [1, 2]}',
        lambda t: _fit_metrics(lambda o, y: {"vals": [1, 2]}), TypeError, r"'vals'|`vals`",
        r"list"),
    Bad("metric.none", 'loss_fn reports {"acc": None}',
        lambda t: _fit_metrics(lambda o, y: {"acc": None}), TypeError, r"'acc'|`acc`", NONE),
    Bad("metric.int-key", "loss_fn reports {1: tensor}",
        lambda t: _fit_metrics(lambda o, y: {1: o.mean()}), TypeError, r"`loss_fn`|metric",
        r"\b1\b"),
    Bad("metric.named-loss", 'loss_fn reports {"loss": <another tensor>}',
        lambda t: _fit_metrics(lambda o, y: {"loss": o.abs().mean()}), ValueError,
        r"'loss'|`loss`", r"metric"),
    # Batches
    Bad("batch.dict-to-supervised", 'train_step(state, {"x": x, "y": y}) with ftrain.supervised',
        lambda t: ftrain.train_step(toy(), dict_batch()),
        TypeError, r"`batch`", r"dict", tag="unclear"),
    Bad("batch.strings", 'train_step(state, (["a", "b"], ["c", "d"]))',
        lambda t: ftrain.train_step(toy(), (["a", "b"], ["c", "d"])), TypeError, r"`batch`",
        r"str", tag="unclear"),
    Bad("batch.empty", "fit on batches of 0 samples",
        lambda t: _fit(loaders_=[(torch.empty(0, 2), torch.empty(0, 3))] * 2), ValueError,
        r"`batch`", r"\b0\b|empty", avoid=r"poison", tag="unclear"),
    Bad("batch.none", "train_step(state, None)",
        lambda t: ftrain.train_step(toy(), None), TypeError, r"`batch`", NONE),
    Bad("batch.tensor", "train_step(state, x) (one tensor for supervised)",
        lambda t: ftrain.train_step(toy(), ftrain.testing.toy_batch()[0]), TypeError, r"`batch`",
        r"Tensor"),
    Bad("batch.triple", "train_step(state, (x, y, w))",
        lambda t: ftrain.train_step(toy(), (*ftrain.testing.toy_batch(), torch.ones(4))),
        TypeError, r"`batch`", r"3"),
    Bad("batch.eval-dict", 'eval_step(state, {"x": x, "y": y})',
        lambda t: ftrain.eval_step(toy(), dict_batch()),
        TypeError, r"`batch`", r"dict"),
    # supervised
    Bad("supervised.criterion-int", "supervised(42)",
        lambda t: ftrain.supervised(42), TypeError, r"`criterion`", r"42"),
    Bad("supervised.criterion-str", 'supervised("mse")',
        lambda t: ftrain.supervised("mse"), TypeError, r"`criterion`", r"'mse'"),
    Bad("supervised.criterion-class", "supervised(nn.MSELoss) (the class), then a step",
        lambda t: _create_and_step(loss_fn=ftrain.supervised(nn.MSELoss)), TypeError,
        r"`criterion`", r"MSELoss"),
    Bad("supervised.accuracy-str", 'supervised(nn.CrossEntropyLoss(), accuracy="yes")',
        lambda t: ftrain.supervised(nn.CrossEntropyLoss(), accuracy="yes"), TypeError,
        r"`accuracy`", r"'yes'"),
    # eval_epoch
    Bad("eval.loader-int", "eval_epoch(state, 42)",
        lambda t: ftrain.eval_epoch(toy(), 42), TypeError, r"`loader`", r"42", tag="unclear"),
    Bad("eval.loader-none", "eval_epoch(state, None)",
        lambda t: ftrain.eval_epoch(toy(), None), TypeError, r"`loader`", NONE),
    Bad("eval.prefix-int", "eval_epoch(state, loader, prefix=5)",
        lambda t: ftrain.eval_epoch(toy(), toy_batches(), prefix=5), TypeError, r"`prefix`",
        r"\b5\b", tag="unclear"),
    Bad("eval.max-batches-negative", "eval_epoch(state, loader, max_batches=-1)",
        lambda t: ftrain.eval_epoch(toy(), toy_batches(), max_batches=-1), ValueError,
        r"`max_batches`", r"-1"),
    Bad("eval.max-batches-str", 'eval_epoch(state, loader, max_batches="2")',
        lambda t: ftrain.eval_epoch(toy(), toy_batches(), max_batches="2"), TypeError,
        r"`max_batches`", r"'2'"),
    Bad("eval.empty", "eval_epoch(state, [])",
        lambda t: ftrain.eval_epoch(toy(), []), ValueError, r"`loader`", r"no batch"),
    Bad("eval.state-none", "eval_epoch(None, loader)",
        lambda t: ftrain.eval_epoch(None, toy_batches()), TypeError, r"`state`", NONE),
    # train_epoch
    Bad("epoch.loader-none", "train_epoch(state, None)",
        lambda t: ftrain.train_epoch(toy(), None), TypeError, r"`loader`", NONE),
    Bad("epoch.loader-int", "train_epoch(state, 42)",
        lambda t: ftrain.train_epoch(toy(), 42), TypeError, r"`loader`", r"42"),
    Bad("epoch.empty", "train_epoch(state, [])",
        lambda t: ftrain.train_epoch(toy(), []), ValueError, r"`loader`", r"no batch"),
    Bad("epoch.callbacks-none", "train_epoch(state, loader, callbacks=None)",
        lambda t: ftrain.train_epoch(toy(), toy_batches(), callbacks=None), TypeError,
        r"`callbacks`", NONE),
    Bad("epoch.step-fn-str", 'train_epoch(state, loader, step_fn="sgd")',
        lambda t: ftrain.train_epoch(toy(), toy_batches(), step_fn="sgd"), TypeError,
        r"`step_fn`", r"'sgd'"),
    Bad("epoch.log-every-zero", "train_epoch(state, loader, log_every_n_steps=0)",
        lambda t: ftrain.train_epoch(toy(), toy_batches(), log_every_n_steps=0), ValueError,
        r"`log_every_n_steps`", r"\b0\b"),
    Bad("epoch.log-every-float", "train_epoch(state, loader, log_every_n_steps=1.5)",
        lambda t: ftrain.train_epoch(toy(), toy_batches(), log_every_n_steps=1.5), TypeError,
        r"`log_every_n_steps`", r"1\.5"),
    Bad("epoch.max-batches-negative", "train_epoch(state, loader, max_batches=-1)",
        lambda t: ftrain.train_epoch(toy(), toy_batches(), max_batches=-1), ValueError,
        r"`max_batches`", r"-1"),
    Bad("epoch.max-steps-float", "train_epoch(state, loader, max_steps=2.5)",
        lambda t: ftrain.train_epoch(toy(), toy_batches(), max_steps=2.5), TypeError,
        r"`max_steps`", r"2\.5"),
    # fit
    Bad("fit.loaders-none", "fit(state, None, max_epochs=1)",
        lambda t: ftrain.fit(toy(), None, max_epochs=1), TypeError, r"`loaders`", NONE,
        tag="unclear"),
    Bad("fit.loaders-int", "fit(state, 42, max_epochs=1)",
        lambda t: ftrain.fit(toy(), 42, max_epochs=1), TypeError, r"`loaders`", r"42"),
    Bad("fit.loaders-str", 'fit(state, "data/train", max_epochs=1)',
        lambda t: ftrain.fit(toy(), "data/train", max_epochs=1), TypeError, r"`loaders`",
        r"'data/train'|str"),
    Bad("fit.loaders-dict-keys", 'fit(state, {"training": loader}, ...)',
        lambda t: ftrain.fit(toy(), {"training": toy_batches()}, max_epochs=1), ValueError,
        r"`loaders`", r"'training'"),
    Bad("fit.loaders-triple", "fit(state, (train, val, test), ...)",
        lambda t: ftrain.fit(toy(), (toy_batches(), toy_batches(), toy_batches()), max_epochs=1),
        (TypeError, ValueError), r"`loaders`", r"3"),
    Bad("fit.callbacks-none", "fit(state, loader, callbacks=None, ...)",
        lambda t: _fit(callbacks=None), TypeError, r"`callbacks`", NONE, tag="unclear"),
    Bad("fit.callbacks-dict", 'fit(state, loader, callbacks={"ckpt": cb}, ...)',
        lambda t: _fit(callbacks={"ckpt": lambda s, e: s}), TypeError, r"`callbacks`", r"dict"),
    Bad("fit.callback-int", "fit(state, loader, [42], ...)",
        lambda t: _fit(callbacks=[42]), TypeError, r"callback", r"42"),
    Bad("fit.callback-one-arg", "fit(state, loader, [lambda s: s], ...)",
        lambda t: _fit(callbacks=[lambda s: s]), TypeError, r"callback",
        r"signature|\(s\)|lambda"),
    Bad("fit.callback-returns-none", "fit(state, loader, [lambda s, e: None], ...)",
        lambda t: _fit(callbacks=[lambda s, e: None]), TypeError, r"callback", r"NoneType|None"),
    Bad("fit.no-limits", "fit(state, loader) without max_epochs or max_steps",
        lambda t: ftrain.fit(toy(), toy_batches()), ValueError, r"`max_epochs`", r"neither"),
    Bad("fit.max-epochs-negative", "fit(..., max_epochs=-1)",
        lambda t: _fit(max_epochs=-1), ValueError, r"`max_epochs`", r"-1"),
    Bad("fit.max-epochs-float", "fit(..., max_epochs=2.0)",
        lambda t: _fit(max_epochs=2.0), TypeError, r"`max_epochs`", r"2\.0"),
    Bad("fit.max-epochs-str", 'fit(..., max_epochs="3")',
        lambda t: _fit(max_epochs="3"), TypeError, r"`max_epochs`", r"'3'"),
    Bad("fit.max-steps-bool", "fit(..., max_steps=True)",
        lambda t: _fit(max_steps=True), TypeError, r"`max_steps`", r"True"),
    Bad("fit.step-fn-str", 'fit(..., step_fn="sgd")',
        lambda t: _fit(step_fn="sgd"), TypeError, r"`step_fn`", r"'sgd'", tag="unclear"),
    Bad("fit.step-fn-one-arg", "fit(..., step_fn=lambda s: s)",
        lambda t: _fit(step_fn=lambda s: s), TypeError, r"`step_fn`",
        r"signature|\(s\)|lambda"),
    Bad("fit.step-fn-returns-state", "fit(..., step_fn=lambda s, b: s)",
        lambda t: _fit(step_fn=lambda s, b: s), TypeError, r"`step_fn`", r"TrainState"),
    Bad("fit.val-every-zero", "fit(..., val_every_n_epochs=0)",
        lambda t: _fit(val_every_n_epochs=0), ValueError, r"`val_every_n_epochs`", r"\b0\b"),
    Bad("fit.val-every-steps-zero", "fit(..., val_every_n_steps=0)",
        lambda t: _fit(val_every_n_steps=0), ValueError, r"`val_every_n_steps`", r"\b0\b"),
    Bad("fit.limit-train-negative", "fit(..., limit_train_batches=-1)",
        lambda t: _fit(limit_train_batches=-1), ValueError, r"`limit_train_batches`", r"-1"),
    Bad("fit.limit-val-str", 'fit(..., limit_val_batches="1")',
        lambda t: _fit(limit_val_batches="1"), TypeError, r"`limit_val_batches`", r"'1'"),
    Bad("fit.log-every-zero", "fit(..., log_every_n_steps=0)",
        lambda t: _fit(log_every_n_steps=0), ValueError, r"`log_every_n_steps`", r"\b0\b"),
    Bad("fit.resume-int", "fit(..., resume=42)",
        lambda t: _fit(resume=42), TypeError, r"`resume`", r"42", tag="unclear"),
    Bad("fit.resume-list", 'fit(..., resume=["runs/a"])',
        lambda t: _fit(resume=["runs/a"]), TypeError, r"`resume`", r"list"),
    Bad("fit.resume-not-a-checkpoint", "fit(..., resume=<a text file>)",
        lambda t: (t / "notes.txt").write_text("hello " * 50) and _fit(resume=t / "notes.txt"),
        ftrain.CheckpointError, r"notes\.txt", r"not an ftrain checkpoint"),
    Bad("fit.stop-signals-str", 'fit(..., stop_signals="SIGTERM")',
        lambda t: _fit(stop_signals="SIGTERM"), TypeError, r"`stop_signals`", r"'SIGTERM'",
        tag="unclear"),
    Bad("fit.stop-signals-sigkill", "fit(..., stop_signals=(signal.SIGKILL,))",
        lambda t: _fit(stop_signals=(signal.SIGKILL,)), ValueError, r"`stop_signals`",
        r"SIGKILL", tag="unclear"),
    Bad("fit.stop-signals-bad-number", "fit(..., stop_signals=(12345,))",
        lambda t: _fit(stop_signals=(12345,)), ValueError, r"`stop_signals`", r"12345"),
    Bad("fit.stop-signals-bare", "fit(..., stop_signals=signal.SIGTERM) (not a sequence)",
        lambda t: _fit(stop_signals=signal.SIGTERM), TypeError, r"`stop_signals`",
        r"SIGTERM|15"),
    Bad("fit.state-none", "fit(None, loader, ...)",
        lambda t: ftrain.fit(None, toy_batches(), max_epochs=1), TypeError, r"`state`", NONE),
    Bad("fit.state-dict", 'fit({"model": model}, loader, ...)',
        lambda t: ftrain.fit({"model": nn.Linear(2, 3)}, toy_batches(), max_epochs=1),
        TypeError, r"`state`", r"dict"),
    Bad("fit.empty-loader", "fit(state, [], ...)",
        lambda t: ftrain.fit(toy(), [], max_epochs=1), ValueError, r"`loader`", r"no batch"),
    Bad("fit.nan-batch-index", "a NaN loss at batch 1 of epoch 2 (4-batch epochs)",
        _nan_in_second_epoch, ftrain.NonFiniteError, r"loss", r"nan",
        avoid=r"batch ([4-9]|\d{2,})\b", tag="unclear"),
    Bad("fit.early-stopping-typo", 'EarlyStopping(monitor="val_los") in fit with validation',
        _early_stopping_typo, (ValueError, ftrain.FtrainError), r"monitor", r"'val_los'",
        tag="unclear"),
    Bad("fit.checkpoint-dir-is-file", "Checkpoint(<a path that is a file>) in fit",
        _checkpoint_dir_is_file, (ValueError, ftrain.CheckpointError), r"`dirpath`|checkpoints",
        r"file|not a directory", tag="unclear"),
    Bad("fit.checkpoint-dir-dangling-symlink", "Checkpoint(<a dangling symlink>) in fit",
        _checkpoint_dir_dangling, (ValueError, ftrain.CheckpointError), r"`dirpath`|checkpoints",
        r"symlink|link|gone", tag="unclear"),
    # Checkpoint
    Bad("ckpt.every-n-steps-zero", "Checkpoint(dir, every_n_steps=0)",
        lambda t: Checkpoint(t, every_n_steps=0), ValueError, r"`every_n_steps`", r"\b0\b"),
    Bad("ckpt.every-n-steps-float", "Checkpoint(dir, every_n_steps=2.0)",
        lambda t: Checkpoint(t, every_n_steps=2.0), TypeError, r"`every_n_steps`", r"2\.0"),
    Bad("ckpt.every-n-steps-not-multiple", "Checkpoint(every_n_steps=3) with log_every_n_steps=2",
        lambda t: _fit(callbacks=[Checkpoint(t, every_n_steps=3)], log_every_n_steps=2),
        ValueError, r"`every_n_steps`", r"\b3\b"),
    Bad("ckpt.keep-last-zero", "Checkpoint(dir, keep_last=0)",
        lambda t: Checkpoint(t, keep_last=0), ValueError, r"`keep_last`", r"\b0\b"),
    Bad("ckpt.keep-last-str", 'Checkpoint(dir, keep_last="2")',
        lambda t: Checkpoint(t, keep_last="2"), TypeError, r"`keep_last`", r"'2'"),
    Bad("ckpt.save-top-k-negative", "Checkpoint(dir, save_top_k=-1)",
        lambda t: Checkpoint(t, save_top_k=-1), ValueError, r"`save_top_k`", r"-1"),
    Bad("ckpt.mode", 'Checkpoint(dir, mode="maximum")',
        lambda t: Checkpoint(t, mode="maximum"), ValueError, r"`mode`", r"'maximum'"),
    Bad("ckpt.dirpath-none", "Checkpoint(None)",
        lambda t: Checkpoint(None), TypeError, r"`dirpath`", NONE),
    Bad("ckpt.dirpath-int", "Checkpoint(42)",
        lambda t: Checkpoint(42), TypeError, r"`dirpath`", r"42"),
    Bad("ckpt.monitor-int", "Checkpoint(dir, monitor=5)",
        lambda t: Checkpoint(t, monitor=5), TypeError, r"`monitor`", r"\b5\b"),
    Bad("ckpt.save-on-interrupt-str", 'Checkpoint(dir, save_on_interrupt="yes")',
        lambda t: Checkpoint(t, save_on_interrupt="yes"), TypeError, r"`save_on_interrupt`",
        r"'yes'"),
    # EarlyStopping and the other callbacks
    Bad("es.patience-negative", "EarlyStopping(patience=-1)",
        lambda t: EarlyStopping(patience=-1), ValueError, r"`patience`", r"-1"),
    Bad("es.patience-str", 'EarlyStopping(patience="3")',
        lambda t: EarlyStopping(patience="3"), TypeError, r"`patience`", r"'3'"),
    Bad("es.mode", 'EarlyStopping(mode="up")',
        lambda t: EarlyStopping(mode="up"), ValueError, r"`mode`", r"'up'"),
    Bad("es.monitor-none", "EarlyStopping(monitor=None)",
        lambda t: EarlyStopping(monitor=None), TypeError, r"`monitor`", NONE),
    Bad("es.min-delta-negative", "EarlyStopping(min_delta=-0.1)",
        lambda t: EarlyStopping(min_delta=-0.1), ValueError, r"`min_delta`", r"-0\.1"),
    Bad("cb.lr-monitor-interval", 'LearningRateMonitor(interval="batch")',
        lambda t: LearningRateMonitor(interval="batch"), ValueError, r"`interval`", r"'batch'"),
    Bad("cb.timer-negative", "Timer(max_time=-5)",
        lambda t: Timer(max_time=-5), ValueError, r"`max_time`", r"-5"),
    Bad("cb.timer-garbage", 'Timer(max_time="soon")',
        lambda t: Timer(max_time="soon"), ValueError, r"`max_time`", r"'soon'"),
    Bad("cb.csv-logger-none", "CSVLogger(None)",
        lambda t: CSVLogger(None), TypeError, r"`path`", NONE),
    Bad("cb.terminate-on-nan-monitor-str", 'TerminateOnNaN(monitor="val_loss") (not a list)',
        lambda t: TerminateOnNaN(monitor="val_loss"), TypeError, r"`monitor`", r"str|'val_loss'"),
    Bad("cb.progress-refresh-negative", "ProgressBar(refresh_rate=-1)",
        lambda t: ProgressBar(refresh_rate=-1), ValueError, r"`refresh_rate`", r"-1"),
    # Combinators
    Bad("comb.every-zero", "every(0, cb)",
        lambda t: ftrain.every(0, lambda s, e: s), ValueError, r"`n`", r"\b0\b"),
    Bad("comb.every-float", "every(2.5, cb)",
        lambda t: ftrain.every(2.5, lambda s, e: s), TypeError, r"`n`", r"2\.5"),
    Bad("comb.every-not-callable", "every(2, 42)",
        lambda t: ftrain.every(2, 42), TypeError, r"callback", r"42"),
    Bad("comb.on-int", "on(42, cb)",
        lambda t: ftrain.on(42, lambda s, e: s), TypeError, r"`event_type`", r"42"),
    Bad("comb.on-not-callable", "on(ftrain.StepEnd, 42)",
        lambda t: ftrain.on(ftrain.StepEnd, 42), TypeError, r"callback", r"42"),
    Bad("comb.when-not-callable", "when(42, cb)",
        lambda t: ftrain.when(42, lambda s, e: s), TypeError, r"predicate", r"42"),
    Bad("comb.chain-int", "chain(42)",
        lambda t: ftrain.chain(42), TypeError, r"callback", r"42"),
    # Step transforms
    Bad("transform.clip-negative", "with_grad_clip(max_norm=-1)",
        lambda t: ftrain.with_grad_clip(max_norm=-1), ValueError, r"`max_norm`", r"-1"),
    Bad("transform.clip-str", 'with_grad_clip(max_norm="1")',
        lambda t: ftrain.with_grad_clip(max_norm="1"), TypeError, r"`max_norm`", r"'1'"),
    Bad("transform.clip-not-a-step", 'with_grad_clip("sgd", max_norm=1.0)',
        lambda t: ftrain.with_grad_clip("sgd", max_norm=1.0), TypeError, r"`step`", r"'sgd'"),
    Bad("transform.accumulate-zero", "with_accumulation(every=0)",
        lambda t: ftrain.with_accumulation(every=0), ValueError, r"`every`", r"\b0\b"),
    Bad("transform.accumulate-float", "with_accumulation(every=2.0)",
        lambda t: ftrain.with_accumulation(every=2.0), TypeError, r"`every`", r"2\.0"),
    # save / load / latest_checkpoint
    Bad("save.path-int", "save(state, 42)",
        lambda t: ftrain.save(toy(), 42), TypeError, r"`path`", r"42", tag="unclear"),
    Bad("save.path-none", "save(state, None)",
        lambda t: ftrain.save(toy(), None), TypeError, r"`path`", NONE),
    Bad("save.path-empty", 'save(state, "")',
        lambda t: ftrain.save(toy(), ""), ValueError, r"`path`", r"''|empty", tag="unclear"),
    Bad("save.path-is-directory", "save(state, <an existing directory>)",
        lambda t: ftrain.save(toy(), t), (ValueError, ftrain.CheckpointError), r"`path`",
        r"director"),
    Bad("save.state-str", 'save("state", path)',
        lambda t: ftrain.save("state", t / "a.ckpt"), TypeError, r"`state`", r"str|'state'"),
    Bad("save.callback-state-lambda", 'save(state with callback_state={"mine": lambda: 0})',
        _with_callback_state(lambda: 0), TypeError, r"'mine'|`mine`", r"function|lambda"),
    Bad("load.path-int", "load(template, 42)",
        lambda t: ftrain.load(toy(), 42), TypeError, r"`path`", r"42", tag="unclear"),
    Bad("load.path-none", "load(template, None)",
        lambda t: ftrain.load(toy(), None), TypeError, r"`path`", NONE),
    Bad("load.path-empty", 'load(template, "")',
        lambda t: ftrain.load(toy(), ""), (ValueError, ftrain.CheckpointError), r"`path`",
        r"''|empty", tag="unclear"),
    Bad("load.state-none", "load(None, path)",
        lambda t: ftrain.load(None, _saved(t)), TypeError, r"`state`", NONE),
    Bad("load.missing-file", "load(template, <a file that does not exist>)",
        lambda t: ftrain.load(toy(), t / "step-9.ckpt"), ftrain.CheckpointError, r"step-9",
        r"No such|not exist|missing|Cannot read"),
    Bad("load.run-directory", "load(template, <a healthy Checkpoint directory>)",
        lambda t: ftrain.load(toy(), _run_dir(t)), (ftrain.CheckpointError, ValueError),
        r"run", r"director", avoid=r"interrupted", tag="unclear"),
    Bad("load.empty-directory", "load(template, <an empty directory>)",
        lambda t: ftrain.load(toy(), t), (ftrain.CheckpointError, ValueError),
        r"load-empty-directory", r"director|empty", avoid=r"interrupted"),
    Bad("load.truncated", "load(template, <a truncated checkpoint>)",
        lambda t: ftrain.load(toy(), _truncated(t)), ftrain.CheckpointError, r"a\.ckpt",
        r"truncated", tag="files"),
    Bad("load.corrupt", "load(template, <a checkpoint with one byte flipped>)",
        lambda t: ftrain.load(toy(), _corrupt(t)), ftrain.CheckpointError, r"a\.ckpt",
        r"corrupt|checksum", tag="files"),
    Bad("load.empty-file", "load(template, <an empty file>)",
        lambda t: (t / "e.ckpt").touch() or ftrain.load(toy(), t / "e.ckpt"),
        ftrain.CheckpointError, r"e\.ckpt", r"empty", tag="files"),
    Bad("load.foreign-pickle", "load(template, <a plain torch.save file>)",
        lambda t: ftrain.load(toy(), _foreign(t)), ftrain.CheckpointError, r"foreign\.ckpt",
        r"not an ftrain", tag="files"),
    Bad("load.other-architecture", "load(Linear(2, 4) template, <a Linear(2, 3) checkpoint>)",
        lambda t: ftrain.load(toy(out_features=4), _saved(t)), ftrain.CheckpointError,
        r"a\.ckpt", r"shape"),
    Bad("load.missing-optimizer-section", "load(a checkpoint with a valid checksum, no optimizer)",
        _without("optimizer"), ftrain.CheckpointError, r"a\.ckpt", r"optimizer", tag="unclear"),
    Bad("load.missing-model-section", "load(a checkpoint with a valid checksum, no model)",
        _without("model"), ftrain.CheckpointError, r"a\.ckpt", r"model", tag="unclear"),
    Bad("load.missing-step", "load(a checkpoint with a valid checksum, no step counter)",
        _counters_edit(lambda c: c.pop("step")), ftrain.CheckpointError, r"a\.ckpt", r"step",
        tag="unclear"),
    Bad("load.step-wrong-type", 'load(a checkpoint with a valid checksum, step="5")',
        _counters_edit(lambda c: c.update(step="5")), ftrain.CheckpointError, r"a\.ckpt",
        r"step"),
    Bad("load.stale-template", "load(<a consumed state>, path)",
        lambda t: _stale(lambda s: ftrain.load(s, _saved(t, name="b.ckpt")))(t),
        ftrain.StaleStateError, r"state", r"fork"),
    Bad("latest.directory-int", "latest_checkpoint(42)",
        lambda t: ftrain.latest_checkpoint(42), TypeError, r"`directory`", r"42"),
    Bad("latest.a-file", "latest_checkpoint(<a checkpoint file, not a directory>)",
        lambda t: ftrain.latest_checkpoint(_saved(t)), ValueError, r"`directory`",
        r"a\.ckpt"),
    # place, fork, stale states
    Bad("place.strategy-int", "place(state, 42)",
        lambda t: ftrain.place(toy(), 42), TypeError, r"`strategy`", r"42"),
    Bad("place.device-nonsense", 'place(state, "gpu0")',
        lambda t: ftrain.place(toy(), "gpu0"), ValueError, r"`device`|`strategy`", r"'gpu0'"),
    Bad("place.cuda-absent", 'place(state, "cuda:99")',
        lambda t: ftrain.place(toy(), "cuda:99"), ftrain.PlacementError, r"`device`",
        r"cuda"),
    Bad("place.twice", 'place(place(state, "cpu"), "cpu")',
        lambda t: ftrain.place(ftrain.place(toy(), "cpu"), "cpu"), ftrain.PlacementError,
        r"`state`", r"placed"),
    Bad("place.precision", 'place(state, SingleDevice("cpu", precision="fp17"))',
        lambda t: ftrain.place(toy(), ftrain.SingleDevice("cpu", precision="fp17")), ValueError,
        r"`precision`", r"'fp17'"),
    Bad("place.device-float", "place(state, SingleDevice(device=3.5))",
        lambda t: ftrain.place(toy(), ftrain.SingleDevice(device=3.5)), TypeError, r"`device`",
        r"3\.5"),
    Bad("place.ddp-without-torchrun", "place(state, DDP()) outside torchrun",
        lambda t: ftrain.place(toy(), ftrain.DDP()), ftrain.PlacementError, r"torchrun",
        r"RANK|WORLD_SIZE"),
    Bad("place.state-none", 'place(None, "cpu")',
        lambda t: ftrain.place(None, "cpu"), TypeError, r"`state`", NONE),
    Bad("fork.state-none", "fork(None)",
        lambda t: ftrain.fork(None), TypeError, r"`state`", NONE),
    Bad("step.stale-state", "train_step(<a consumed state>, batch)",
        _stale(lambda s: ftrain.train_step(s, ftrain.testing.toy_batch())),
        ftrain.StaleStateError, r"train_step", r"fork"),
    # Distributed
    Bad("ddp.short-loader-without-len", "DDP, 2 ranks: rank 1's loader (no len()) is 1 short",
        _ddp_short_loader, (ValueError, ftrain.FtrainError, DistributedFailure), r"`loader`",
        r"batch", fast=False, tag="unclear", timeout=200),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Faults inside fit: nothing trained may be lost
# ---------------------------------------------------------------------------------------------


def progress_kept(
    arm: dict[str, Any] | None = None,
    callbacks: Callable[[], list[Any]] = list,
    run: Run = DEFAULT,
    raises: type[BaseException] | None = Boom,
    step_fn: Any = None,
) -> Callable[[Path], str]:
    """Train with a fault; judge that an interrupt-only `Checkpoint` saved every trained step.

    Callbacks are ``[recorder, *callbacks(), Checkpoint]``: the checkpoint never sees an event
    the faulty callbacks raised on, so it learns of the failure only through `Interrupted`.
    """

    def check(tmp: Path) -> str:
        d = tmp / "ckpt"
        rec = Recorder()
        kw = {} if step_fn is None else {"step_fn": step_fn}
        state = run.state()
        err: BaseException | None = None
        with armed(**(arm or {})):
            try:
                run.fit(state, [rec, *callbacks(), interrupt_only(d)], **kw)
            except (Exception, KeyboardInterrupt) as e:
                err = e
        if err is None:
            raise Harness("the injected fault did not surface: fit returned normally")
        if raises is not None and not isinstance(err, raises):
            raise Fail(f"fit raised {describe_error(err)} instead of the fault itself")
        return resumes(tmp, d, rec.step, run, step_fn)

    return check


def resumes(tmp: Path, d: Path, trained: int, run: Run, step_fn: Any = None) -> str:
    """The newest checkpoint in ``d`` holds step ``trained`` and resumes to the straight run."""
    found = latest(d)
    if found is None:
        if trained == 0:
            return "nothing was trained, nothing to save"
        raise Fail(f"no checkpoint written: {trained} trained steps lost", LOST)
    saved = ftrain.load(run.state(), found)
    if saved.step != trained:
        raise Fail(f"the checkpoint holds step {saved.step}, training had reached step {trained}")
    kw = {} if step_fn is None else {"step_fn": step_fn}
    resumed, _ = run.fit(run.state(), [interrupt_only(d)], resume=d, **kw)
    same(resumed, run.straight()[0])
    return f"checkpoint at step {trained}; the resumed run is bit-identical"


EVENTS = {
    "fit-start": (ftrain.FitStart, 1),
    "epoch-start": (ftrain.EpochStart, 2),
    "step-end": (ftrain.StepEnd, 8),
    "interval-end": (ftrain.IntervalEnd, 3),
    "epoch-end": (ftrain.EpochEnd, 1),
    "eval-end": (ftrain.EvalEnd, 1),
    "fit-end": (ftrain.FitEnd, 1),
}


def _callback_fault(name: str) -> Fault:
    kind, nth = EVENTS[name]
    inside = name in ("step-end", "interval-end")  # inside the batch loop: kept today
    return Fault(
        f"fault.callback-raises-at-{name}", "fault", LOST,
        f"a callback raises at {kind.__name__} #{nth}: Checkpoint gets Interrupted and saves "
        "every trained step; the resumed run is bit-identical",
        progress_kept(callbacks=lambda: [Raiser(kind, nth)]),
        tag="files" if inside else "lost-1",
    )  # fmt: skip


def _early_stopping_lost(tmp: Path) -> str:
    return progress_kept(callbacks=lambda: [EarlyStopping(monitor="val_los")], raises=None)(tmp)


def _nan_keeps_last_good(tmp: Path) -> str:
    d = tmp / "ckpt"
    state = DEFAULT.state()
    with armed(nan_call=9), contextlib.suppress(ftrain.NonFiniteError):
        DEFAULT.fit(state, [Checkpoint(d, every_n_steps=2, every_n_epochs=None, keep_last=3)])
        raise Fail("a NaN loss did not stop training")
    found = latest(d)
    if found is None:
        raise Fail("no checkpoint left after the NaN", LOST)
    saved = ftrain.load(DEFAULT.state(), found)
    bad = [n for n, p in saved.model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise Fail(f"the newest checkpoint (step {saved.step}) holds non-finite {bad}")
    if saved.step >= 9:
        raise Fail(f"a checkpoint was written at step {saved.step}, after the NaN at step 9")
    return resumes(tmp, d, saved.step, DEFAULT)


ACCUMULATE = ftrain.with_accumulation(every=3)


def _accumulation_fault(tmp: Path) -> str:
    run = Run(epochs=2)
    d = tmp / "ckpt"
    with armed(loss_call=8):  # the 2nd micro-batch of the 3rd group
        try:
            run.fit(run.state(), [interrupt_only(d)], step_fn=ACCUMULATE)
        except Boom:
            pass
        else:
            raise Harness("the injected fault did not surface")
    found = latest(d)
    if found is None:
        raise Fail("no checkpoint written at the fault", LOST)
    resumed, _ = run.fit(run.state(), [interrupt_only(d)], resume=d, step_fn=ACCUMULATE)
    straight, _ = run.fit(run.state(), step_fn=ACCUMULATE)
    same(resumed, straight)
    return "an interrupt inside an accumulation group resumes bit-identical"


FAULTS: list[Fault] = [
    Fault("fault.train-loader-raises", "fault", LOST,
          "the train loader raises at batch 9: the checkpoint holds step 8 and resumes exactly",
          progress_kept({"train_fetch": 16 * 8 + 1}), tag="files"),
    Fault("fault.train-loader-raises-at-epoch-start", "fault", LOST,
          "the train loader raises on the first batch of epoch 2: step 6 is saved",
          progress_kept({"train_fetch": 16 * 6 + 1}), tag="files"),
    Fault("fault.loss-raises", "fault", LOST,
          "loss_fn raises at step 9: the checkpoint holds step 8 and resumes exactly",
          progress_kept({"loss_call": 9}), tag="files"),
    Fault("fault.val-loader-raises", "fault", LOST,
          "the validation loader raises at the first validation: the epoch just trained is saved",
          progress_kept({"val_fetch": 1}), tag="lost-1"),
    *[_callback_fault(name) for name in EVENTS],
    Fault("fault.callback-raises-on-every-event", "fault", LOST,
          "a callback raises at StepEnd #5 and on every later event, Interrupted included: the "
          "Checkpoint after it still gets Interrupted and saves step 5",
          progress_kept(callbacks=lambda: [Raiser(ftrain.StepEnd, 5, forever=True)]),
          tag="lost-4"),
    Fault("fault.epoch-scheduler-raises", "fault", LOST,
          'an epoch-interval scheduler raises at the end of epoch 2: the 12 trained steps are '
          "saved and resume exactly",
          progress_kept({"sched_step": 2}, run=Run(interval="epoch")), tag="lost-1"),
    Fault("fault.early-stopping-monitor-typo", "fault", LOST,
          'EarlyStopping(monitor="val_los") fails at the first validation: epoch 1 is saved',
          _early_stopping_lost, tag="lost-1"),
    Fault("fault.nan-loss-keeps-last-good", "fault", LOST,
          "a NaN loss at step 9 stops training; the newest checkpoint is finite, before step 9, "
          "loads, and resumes exactly", _nan_keeps_last_good, tag="files"),
    Fault("fault.inside-accumulation-group", "fault", WRONG,
          "a fault on the 2nd micro-batch of an accumulation group: the interrupt checkpoint is "
          "consistent and the resumed run is bit-identical", _accumulation_fault, tag="extra"),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Signals in-process: Ctrl-C at a boundary, inside the optimizer update, twice; SIGTERM
# ---------------------------------------------------------------------------------------------

TWO_PHASE = Run(optimizer="two-phase")


def _sigint(arm: dict[str, Any], callbacks: Callable[[], list[Any]] = list, twice: bool = False,
            run: Run = TWO_PHASE, periodic: bool = False) -> Callable[[Path], str]:  # fmt: skip
    def check(tmp: Path) -> str:
        d = tmp / "ckpt"
        rec = Recorder()
        ckpt = (
            Checkpoint(d, every_n_steps=2, every_n_epochs=None, keep_last=3)
            if periodic
            else interrupt_only(d)
        )
        outcome = "returned"
        with armed(**arm):
            try:
                state, _ = run.fit(run.state(), [rec, *callbacks(), ckpt])
            except KeyboardInterrupt:
                outcome = "KeyboardInterrupt"
            except Exception as err:
                raise Fail(f"fit raised {describe_error(err)} at Ctrl-C") from err
            else:
                if state.step >= run.straight()[0].step:
                    raise Harness("the Ctrl-C did not interrupt training")
        if twice:
            if outcome != "KeyboardInterrupt":
                raise Fail("fit did not stop at once at the second Ctrl-C")
            found = latest(d)
            if found is None:
                raise Fail("no checkpoint left", LOST)
            saved = ftrain.load(run.state(), found)
            if saved.step > rec.step or saved.step % 2:
                raise Fail(f"a checkpoint (step {saved.step}) was written after the second Ctrl-C")
            return resumes(tmp, d, saved.step, run) + " (stopped at once, nothing saved)"
        return resumes(tmp, d, rec.step, run) + f" ({outcome})"

    return check


def _sigterm(tmp: Path) -> str:
    d = tmp / "ckpt"
    rec = Recorder()
    callbacks = [rec, SignalAt(signal.SIGTERM, nth=7), interrupt_only(d)]
    state, _ = DEFAULT.fit(DEFAULT.state(), callbacks, stop_signals=(signal.SIGTERM,))
    if state.step != 7:
        raise Fail(f"fit went on to step {state.step} after SIGTERM at step 7")
    return resumes(tmp, d, 7, DEFAULT)


SIGNALS: list[Fault] = [
    Fault("signal.sigint-at-step-boundary", "signal", LOST,
          "Ctrl-C sent at StepEnd 7: the checkpoint holds step 7 and resumes exactly",
          _sigint({}, callbacks=lambda: [SignalAt(signal.SIGINT, nth=7)], run=DEFAULT),
          tag="files"),
    Fault("signal.sigint-inside-optimizer-update", "signal", WRONG,
          "Ctrl-C lands between two parameter updates of step 7: fit finishes the batch, saves "
          "step 7 (never half-updated weights under step 6) and the resume is bit-identical",
          _sigint({"update": 7}), tag="lost-2"),
    Fault("signal.sigint-twice-inside-update", "signal", WRONG,
          "two Ctrl-Cs inside the update of step 7: the second stops at once and saves nothing; "
          "the newest checkpoint is the periodic one of step 6 and resumes exactly",
          _sigint({"update": 7, "twice": True}, twice=True, periodic=True), tag="lost-2"),
    Fault("signal.sigint-during-validation", "signal", LOST,
          "Ctrl-C during the first validation: the epoch just trained (step 6) is saved",
          _sigint({"val_sigint": 5}, run=DEFAULT), tag="lost-2"),
    Fault("signal.sigterm-with-stop-signals", "signal", LOST,
          "SIGTERM at step 7 with stop_signals=(SIGTERM,): fit saves step 7 and returns; the "
          "resume is bit-identical", _sigterm, tag="files"),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Checkpoints: mismatched templates, reused and dotted directories, modes, hooks, names
# ---------------------------------------------------------------------------------------------


def _trained(
    optimizer: str, scheduler: str | None, steps: int, groups: int = 1
) -> ftrain.TrainState:
    state = mlp(optimizer=optimizer, scheduler=scheduler, groups=groups)
    train, _ = loaders()
    if steps:
        state, _ = ftrain.train_epoch(state, train, max_batches=steps)
    return state


def _mismatch(
    saved: dict[str, Any], template: dict[str, Any], pattern: str
) -> Callable[[Path], str]:
    """A checkpoint of one kind loaded into a template of another: refused, template untouched."""

    def check(tmp: Path) -> str:
        path = ftrain.save(
            _trained(**{"optimizer": "adamw", "steps": 3, "scheduler": "torch-steplr", **saved}),
            tmp / "a.ckpt",
        )
        kw = {"optimizer": "adamw", "scheduler": "torch-steplr", "steps": 0, **template}
        target = _trained(**kw)
        before = snapshot(target)
        try:
            ftrain.load(target, path)
        except ftrain.CheckpointError as err:
            error = f"CheckpointError: {err}"
            named = re.search(pattern, str(err), re.S)
        except Exception as err:
            error, named = describe_error(err), None
        else:
            raise Fail(f"loaded without error ({saved} into {template})")
        changed = tree_differences(before, snapshot(target))
        if changed:
            raise Fail(
                f"the refused load overwrote the template ({', '.join(changed[:3])}); "
                f"{clip(error, 90)}"
            )
        if not named:
            raise Fail(
                f"not refused clearly: {clip(error)}",
                UNCLEAR if error.startswith("Checkpoint") else WRONG,
            )
        return clip(error)

    return check


def _reused_directory(tmp: Path) -> str:
    d = tmp / "ckpt"
    DEFAULT.fit(
        DEFAULT.state(), [Checkpoint(d, every_n_epochs=1, keep_last=1)]
    )  # the old run: step 18
    rec = Recorder()
    other = Run(epochs=1)
    try:
        other.fit(other.state(seed=5), [rec, Checkpoint(d, every_n_epochs=1, keep_last=1)])
    except Exception as err:
        if rec.step:
            raise Fail(f"refused only after {rec.step} steps: {describe_error(err)}") from err
        return f"a new run in another run's directory is refused: {describe_error(err)}"
    found = latest(d)
    step = None if found is None else ftrain.load(DEFAULT.state(), found).step
    raise Fail(f"a new run trained in a directory holding another run's checkpoints; resume=dir "
               f"now picks step {step} (the other run's) and retention kept it")  # fmt: skip


def _resume_last_step(limit: str) -> Callable[[Path], str]:
    """A checkpoint taken at the last step, before the epoch was closed, then resumed."""

    def check(tmp: Path) -> str:
        run = (
            Run(epochs=None, steps=12, log_every=6)
            if limit == "steps"
            else Run(epochs=2, log_every=6)
        )
        d = tmp / "ckpt"
        ckpt = lambda: Checkpoint(d, every_n_steps=6, every_n_epochs=1, save_on_interrupt=False)
        with contextlib.suppress(Boom):
            run.fit(run.state(), [Raiser(ftrain.EpochEnd, 2), ckpt()])
        rec = Recorder()
        resumed, history = run.fit(run.state(), [rec, ckpt()], resume=d)
        straight, straight_history = run.straight()
        problems = []
        if "EpochEnd" not in rec.events or "EvalEnd" not in rec.events:
            problems.append(f"events {sorted(set(rec.events))}: no EpochEnd/EvalEnd")
        if resumed.epoch != straight.epoch:
            problems.append(f"epoch {resumed.epoch} vs {straight.epoch}")
        if len(history) != len(straight_history) or "val_loss" not in history[-1]:
            problems.append(f"history {len(history)} rows, {len(straight_history)} straight")
        elif history[-1]["val_loss"] != straight_history[-1]["val_loss"]:
            problems.append("val_loss differs")
        found = latest(d)
        if found is None or ftrain.load(run.state(), found).epoch != 2:
            problems.append("no epoch checkpoint")
        if problems:
            raise Fail("the open epoch was skipped at resume: " + "; ".join(problems))
        same(resumed, straight)
        return "the open epoch is closed, validated and checkpointed; bit-identical"

    return check


def _dotted(name: str) -> Callable[[Path], str]:
    def check(tmp: Path) -> str:
        d = tmp / "runs" / name
        run1, run2 = Run(epochs=1), Run(epochs=2)
        try:
            run1.fit(run1.state(), [Checkpoint(d)], resume=d)
        except Exception as err:
            raise Fail(f"the first run did not start: {describe_error(err)}") from err
        rec = Recorder()
        resumed, _ = run2.fit(run2.state(), [rec, Checkpoint(d)], resume=d)
        if rec.first_step != BATCHES_PER_EPOCH:
            raise Fail(
                f"the second call started at step {rec.first_step}, not where the first ended"
            )
        same(resumed, run2.straight()[0])
        return f"resume={name!r} starts, then resumes bit-identical"

    return check


def _umask(mask: int, via_checkpoint: bool = False) -> Callable[[Path], str]:
    def check(tmp: Path) -> str:
        old = os.umask(mask)
        try:
            if via_checkpoint:
                ftrain.fit(toy(), toy_batches(), [Checkpoint(tmp / "ckpt")], max_epochs=1)
                path = latest(tmp / "ckpt")
                assert path is not None
            else:
                path = ftrain.save(toy(), tmp / "a.ckpt")
        finally:
            os.umask(old)
        mode, want = path.stat().st_mode & 0o777, 0o666 & ~mask
        if mode != want:
            raise Fail(f"mode {mode:04o} under umask {mask:04o}; open() would give {want:04o}")
        return f"mode {mode:04o} under umask {mask:04o}"

    return check


def _hooks(optimizer: str, trained: bool, at: str = "save") -> Callable[[Path], str]:
    def check(tmp: Path) -> str:
        def build() -> ftrain.TrainState:
            return _trained(optimizer, None, 2 if trained else 0)

        state = build()
        calls: list[str] = []
        state.optimizer.register_step_pre_hook(lambda opt, a, k: calls.append("pre"))
        state.optimizer.register_step_post_hook(lambda opt, a, k: calls.append("post"))
        before = snapshot(state)
        if at == "save":
            ftrain.save(state, tmp / "a.ckpt")
            after = snapshot(state)
        else:
            path = ftrain.save(build(), tmp / "a.ckpt")
            state = ftrain.load(state, path)
            after = before = None  # type: ignore[assignment]
        if calls:
            raise Fail(f"{at} ran the optimizer: its step hooks fired {len(calls)} times")
        if before is not None and (changed := tree_differences(before, after)):
            raise Fail(f"save changed the optimizer or weights ({', '.join(changed[:3])})")
        return f"no optimizer step hook fired during {at}"

    return check


def _limit_zero(which: str) -> Callable[[Path], str]:
    def check(tmp: Path) -> str:
        rec = Recorder()
        kw = {f"limit_{which}_batches": 0}
        try:
            state, history = DEFAULT.fit(DEFAULT.state(), [rec], **kw)
        except Exception as err:
            if rec.step == 0 and re.search(f"`limit_{which}_batches`", str(err)):
                return f"refused up front: {describe_error(err)}"
            raise Fail(f"failed after {rec.step} steps: {describe_error(err)}") from err
        if which == "train" and state.step:
            raise Fail(f"limit_train_batches=0 trained {state.step} batches")
        if which == "val" and any(k.startswith("val_") for row in history for k in row):
            raise Fail("limit_val_batches=0 still validated")
        return f"limit_{which}_batches=0 skips {which} (step {state.step})"

    return check


def _long_name(length: int) -> Callable[[Path], str]:
    def check(tmp: Path) -> str:
        name = "n" * (length - 5) + ".ckpt"
        state, _ = ftrain.train_step(toy(), ftrain.testing.toy_batch())
        try:
            path = ftrain.save(state, tmp / name)
        except OSError as err:
            raise Fail(
                f"a {length}-byte name the filesystem accepts failed: {describe_error(err)}"
            ) from err
        loaded = ftrain.load(toy(), path)
        if differences(loaded, state, ("step",)):
            raise Fail("the long-named checkpoint does not load back equal", WRONG)
        return f"a {length}-byte file name saves and loads"

    return check


def _meta(strategy: Callable[[], Any]) -> Callable[[Path], str]:
    def check(tmp: Path) -> str:
        state = toy()
        before = snapshot(state)
        try:
            ftrain.place(state, strategy())
        except (ftrain.PlacementError, ValueError) as err:
            error = describe_error(err)
        else:
            error = ""
        if any(p.is_meta for p in state.model.parameters()):
            raise Fail(f"the weights were moved to meta and are gone ({error or 'no error'})")
        changed = tree_differences(before, snapshot(state))
        if changed:
            raise Fail(f"the weights changed: {changed[:3]}")
        if not error:
            raise Fail("placing on meta was accepted", UNCLEAR)
        return error

    return check


def _fallback(damage: str) -> Callable[[Path], str]:
    """Damage the newest checkpoint of a run; resume falls back to the previous one."""

    def check(tmp: Path) -> str:
        d = tmp / "ckpt"
        run = Run(epochs=2)
        run.fit(run.state(), [Checkpoint(d, every_n_steps=2, every_n_epochs=None, keep_last=3)])
        newest = latest(d)
        assert newest is not None
        if damage == "truncate":
            newest.write_bytes(newest.read_bytes()[:-64])
        elif damage == "flip":
            raw = bytearray(newest.read_bytes())
            raw[len(raw) // 2] ^= 0x01
            newest.write_bytes(bytes(raw))
        elif damage == "empty-newer":
            (d / "step-999999999.ckpt").touch()
        elif damage == "leftover-tmp":
            (d / f".{newest.name}.x1y2z3.tmp").write_bytes(b"partial")
        target = latest(d)
        if target is None:
            raise Fail("no checkpoint validates after damaging one", LOST)
        saved = ftrain.load(run.state(), target)
        longer = Run(epochs=3)
        ckpt = Checkpoint(d, every_n_steps=2, every_n_epochs=None, keep_last=3)
        resumed, _ = longer.fit(longer.state(), [ckpt], resume=d)
        same(resumed, longer.straight()[0])
        leftovers = sorted(p.name for p in d.glob(".*.tmp"))
        if leftovers:
            raise Fail(f"temporary files left after fit: {leftovers}")
        return f"falls back to step {saved.step}; the resumed run is bit-identical"

    return check


class Planted:
    """Unpickling this object creates a directory: proof that a checkpoint ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.makedirs, (str(self.marker),))


def _crafted_pickle(tmp: Path) -> str:
    marker = tmp / "code-ran"
    path = _rewrite(_saved(tmp), lambda d: d.update(extra=Planted(marker)))
    try:
        ftrain.load(toy(), path)
    except ftrain.CheckpointError as err:
        error = describe_error(err)
    else:
        error = ""
    if marker.exists():
        raise Fail("loading a crafted checkpoint ran code from it")
    if not error:
        raise Fail("a checkpoint holding a pickled object loaded without error")
    return error


def _nonfinite_save(tmp: Path) -> str:
    good = ftrain.save(toy(), tmp / "a.ckpt")
    before = good.read_bytes()
    state = toy()
    with torch.no_grad():
        state.model.weight[0, 0] = math.nan
    try:
        ftrain.save(state, good)
    except ftrain.NonFiniteError:
        pass
    else:
        raise Fail("a state with NaN weights was saved over a good checkpoint")
    if good.read_bytes() != before:
        raise Fail("the good checkpoint changed", LOST)
    return "refused with NonFiniteError; the good checkpoint is untouched"


def _cut_and_resume(cuts: tuple[int, ...]) -> Callable[[Path], str]:
    """Run to each step in ``cuts`` (saving there by hand), resuming each time, then finish."""

    def check(tmp: Path) -> str:
        d = tmp / "ckpt"
        for i, cut in enumerate(cuts):
            part = Run(epochs=3, steps=cut)
            state, _ = part.fit(part.state(), [], resume=d if i else None)
            ftrain.save(state, d / f"step-{cut:09d}.ckpt")
        resumed, _ = DEFAULT.fit(DEFAULT.state(), [], resume=d)
        same(resumed, DEFAULT.straight()[0])
        return f"cut at steps {list(cuts)}; the resumed run is bit-identical"

    return check


CHECKPOINTS: list[Fault] = [
    # Mismatched templates (issue 13.6): refused before anything is copied
    Fault("load.sgd-fresh-into-adamw", "checkpoint", WRONG,
          "an SGD checkpoint (never stepped) loaded into an AdamW template: CheckpointError naming "
          "both kinds; the template untouched",
          _mismatch({"optimizer": "sgd", "steps": 0}, {"optimizer": "adamw"}, SGD_ADAMW),
          tag="wrong-6"),
    Fault("load.sgd-momentum-into-adamw", "checkpoint", WRONG,
          "an SGD-with-momentum checkpoint into an AdamW template: refused, template untouched",
          _mismatch({"optimizer": "sgd-momentum"}, {"optimizer": "adamw"}, SGD_ADAMW),
          tag="wrong-6"),
    Fault("load.adamw-into-sgd", "checkpoint", WRONG,
          "an AdamW checkpoint into an SGD template: CheckpointError (not KeyError), template "
          "untouched", _mismatch({"optimizer": "adamw"}, {"optimizer": "sgd"}, SGD_ADAMW),
          tag="wrong-6"),
    Fault("load.adamw-into-adam", "checkpoint", WRONG,
          "an AdamW checkpoint into an Adam template (same state keys): refused, untouched",
          _mismatch({"optimizer": "adamw"}, {"optimizer": "adam"}, r"Adam\b.*AdamW|AdamW.*Adam\b"),
          tag="wrong-6"),
    Fault("load.adam-into-adamw", "checkpoint", WRONG,
          "an Adam checkpoint into an AdamW template: refused, untouched",
          _mismatch({"optimizer": "adam"}, {"optimizer": "adamw"}, r"Adam\b.*AdamW|AdamW.*Adam\b"),
          tag="wrong-6"),
    Fault("load.steplr-into-exponential", "checkpoint", WRONG,
          "a StepLR checkpoint into an ExponentialLR template: refused naming both, untouched",
          _mismatch({}, {"scheduler": "exponential"}, r"StepLR.*Exponential|Exponential.*StepLR"),
          tag="wrong-6"),
    Fault("load.scheduler-into-none", "checkpoint", WRONG,
          "a checkpoint with a scheduler into a template without one: refused before any weight "
          "is copied", _mismatch({}, {"scheduler": None}, r"scheduler"), tag="wrong-6"),
    Fault("load.none-into-scheduler", "checkpoint", WRONG,
          "a checkpoint without a scheduler into a template with one: refused, untouched",
          _mismatch({"scheduler": None}, {}, r"scheduler"), tag="wrong-6"),
    Fault("load.param-groups-differ", "checkpoint", WRONG,
          "a one-group optimizer checkpoint into a two-group template: refused, untouched",
          _mismatch({}, {"groups": 2}, r"group"), tag="wrong-6"),
    # Directories and runs (13.3, 13.7, 13.9)
    Fault("ckpt.reused-directory-other-run", "checkpoint", WRONG,
          "a new run (another seed, no resume) started with Checkpoint in a directory holding an "
          "older run's step-18 checkpoints: refused before training (or made explicit), never "
          "mixed",
          _reused_directory, tag="wrong-7"),
    Fault("resume.last-step-max-steps", "checkpoint", WRONG,
          "a checkpoint taken at the run's last step (max_steps=12) before its epoch closed: the "
          "resume closes the epoch (EpochEnd, validation, epoch checkpoint, history row)",
          _resume_last_step("steps"), tag="wrong-8"),
    Fault("resume.last-step-max-epochs", "checkpoint", WRONG,
          "the same with max_epochs=2: the resume closes the open epoch",
          _resume_last_step("epochs"), tag="wrong-8"),
    Fault("resume.dotted-directory", "checkpoint", WRONG,
          'resume="runs/lr0.001" (a new directory with a dot): starts fresh, then resumes',
          _dotted("lr0.001"), tag="wrong-9"),
    Fault("resume.dotted-date-directory", "checkpoint", WRONG,
          'resume="runs/2024.06.01": starts fresh, then resumes', _dotted("2024.06.01"),
          tag="wrong-9"),
    Fault("resume.plain-directory", "checkpoint", WRONG,
          'resume="runs/exp1" (no dot): starts fresh, then resumes', _dotted("exp1"), tag="files"),
    # Files on disk (13.10, 13.11, 13.13)
    Fault("files.umask-022", "checkpoint", WRONG, "save under umask 022 gives mode 0644",
          _umask(0o022), tag="wrong-10"),
    Fault("files.umask-002", "checkpoint", WRONG, "save under umask 002 gives mode 0664",
          _umask(0o002), tag="wrong-10"),
    Fault("files.umask-077", "checkpoint", WRONG, "save under umask 077 gives mode 0600",
          _umask(0o077), tag="wrong-10"),
    Fault("files.umask-022-checkpoint", "checkpoint", WRONG,
          "Checkpoint's files under umask 022 get mode 0644", _umask(0o022, True), tag="wrong-10"),
    Fault("save.hooks-fresh-adam", "checkpoint", WRONG,
          "save of a never-stepped Adam runs no optimizer step (its hooks never fire)",
          _hooks("adam", False), tag="wrong-11"),
    Fault("save.hooks-fresh-sgd", "checkpoint", WRONG,
          "save of a never-stepped SGD runs no optimizer step", _hooks("sgd", False),
          tag="wrong-11"),
    Fault("save.hooks-trained-sgd", "checkpoint", WRONG,
          "save of a stateless SGD after two steps runs no optimizer step", _hooks("sgd", True),
          tag="wrong-11"),
    Fault("load.hooks-fresh-sgd", "checkpoint", WRONG,
          "load into a never-stepped SGD template runs no optimizer step",
          _hooks("sgd", False, at="load"), tag="wrong-11"),
    Fault("fit.limit-train-batches-zero", "checkpoint", WRONG,
          "limit_train_batches=0 trains nothing (or is refused before training)",
          _limit_zero("train"), tag="wrong-12"),
    Fault("fit.limit-val-batches-zero", "checkpoint", WRONG,
          "limit_val_batches=0 skips validation (or is refused before training)",
          _limit_zero("val"), tag="wrong-12"),
    Fault("save.name-255-bytes", "checkpoint", LOST,
          "a checkpoint name of 255 bytes (the file-name limit) saves and loads", _long_name(255),
          tag="wrong-13"),
    Fault("save.name-240-bytes", "checkpoint", LOST,
          "a checkpoint name of 240 bytes saves and loads", _long_name(240), tag="wrong-13"),
    Fault("place.meta", "checkpoint", LOST,
          'place(state, "meta") is refused (PlacementError) and the weights stay intact',
          _meta(lambda: "meta"), tag="lost-5"),
    Fault("place.meta-torch-device", "checkpoint", LOST,
          'place(state, torch.device("meta")) is refused; the weights stay intact',
          _meta(lambda: torch.device("meta")), tag="lost-5"),
    Fault("place.meta-single-device", "checkpoint", LOST,
          'place(state, SingleDevice("meta")) is refused; the weights stay intact',
          _meta(lambda: ftrain.SingleDevice("meta")), tag="lost-5"),
    # Damaged files: the last good checkpoint wins
    Fault("files.truncated-newest", "checkpoint", LOST,
          "the newest checkpoint is truncated: resume falls back and is bit-identical",
          _fallback("truncate"), tag="files"),
    Fault("files.bit-flip-newest", "checkpoint", LOST,
          "one bit of the newest checkpoint flipped: resume falls back and is bit-identical",
          _fallback("flip"), tag="files"),
    Fault("files.empty-newer-file", "checkpoint", LOST,
          "an empty step-999999999.ckpt: skipped, the resume is bit-identical",
          _fallback("empty-newer"), tag="files"),
    Fault("files.leftover-temporary", "checkpoint", LOST,
          "a temporary file of an interrupted write is removed at start; resume is exact",
          _fallback("leftover-tmp"), tag="files"),
    Fault("files.crafted-pickle", "checkpoint", WRONG,
          "a validly signed checkpoint whose payload pickles a call to os.makedirs: refused with "
          "CheckpointError, and no code runs", _crafted_pickle, tag="files"),
    Fault("files.nonfinite-save-refused", "checkpoint", LOST,
          "saving NaN weights over a good checkpoint is refused; the good file is untouched",
          _nonfinite_save, tag="files"),
    Fault("resume.cut-twice-in-one-epoch", "checkpoint", WRONG,
          "a run cut at steps 8 and 10 (one epoch) and resumed each time equals the straight run",
          _cut_and_resume((8, 10)), tag="files"),
    Fault("resume.cut-at-epoch-boundaries", "checkpoint", WRONG,
          "a run cut at steps 6 and 12 and resumed equals the straight run",
          _cut_and_resume((6, 12)), tag="files"),
]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Subprocess runs: SIGKILL and Ctrl-C at random moments, two runs in one directory
# ---------------------------------------------------------------------------------------------

CAMPAIGN_STEPS = 300


def campaign_state() -> ftrain.TrainState:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 10))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return ftrain.TrainState.create(
        model=model,
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=25, gamma=0.7),
        seed=7,
    )


def train_worker(directory: str, out: str, max_steps: int, snapshots: str) -> None:
    """The training script the campaigns interrupt: the same command starts and resumes."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(512, 32, generator=g), torch.randint(0, 10, (512,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    ready: list[float] = []
    steps: list[tuple[int, dict[str, Any]]] = []
    copying = [0.0]

    def announce(state: ftrain.TrainState, event: Any) -> ftrain.TrainState:
        if not ready:  # after the first step: imports and start-up are paid, training runs now
            ready.append(time.monotonic())
            print("ready", flush=True)
        if snapshots:  # the uninterrupted run records every step (in memory; not timed)
            t0 = time.monotonic()
            steps.append((event.step, snapshot(state)))
            copying[0] += time.monotonic() - t0
        return state

    ckpt = Checkpoint(directory, every_n_steps=2, every_n_epochs=None, keep_last=2)
    state, _ = ftrain.fit(campaign_state(), loader, [ftrain.on(ftrain.StepEnd, announce), ckpt],
                          max_steps=max_steps, log_every_n_steps=2, resume=directory)  # fmt: skip
    if not ready:
        print("ready", flush=True)
    for step, snap in steps:
        torch.save(snap, Path(snapshots) / f"{step}.pt")
    trained = time.monotonic() - (ready[0] if ready else time.monotonic()) - copying[0]
    print(f"trained {trained:.3f} s")
    if state.step < max_steps:
        print(f"stopped at step {state.step}", flush=True)
        sys.exit(3)
    ftrain.save(state, out)
    print("done", flush=True)


def spawn(*args: str) -> subprocess.Popen[str]:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@dataclass
class Reference:
    """The uninterrupted campaign run: its final checkpoint, every step's snapshot, its duration."""

    out: Path
    snapshots: Path
    train_seconds: float


_REFERENCE: dict[int, Reference] = {}


def reference(base: Path, max_steps: int = CAMPAIGN_STEPS) -> Reference:
    if max_steps not in _REFERENCE:
        root = base / f"reference-{max_steps}"
        (root / "snapshots").mkdir(parents=True)
        proc = spawn("train", str(root / "ckpt"), str(root / "final.ckpt"), str(max_steps),
                     str(root / "snapshots"))  # fmt: skip
        out, err = proc.communicate(timeout=600)
        trained = re.search(r"trained ([\d.]+) s", out)
        if proc.returncode != 0 or trained is None:
            raise Harness(f"the reference run failed: {clip(err[-400:], 300)}")
        _REFERENCE[max_steps] = Reference(
            root / "final.ckpt", root / "snapshots", float(trained.group(1))
        )
    return _REFERENCE[max_steps]


def current_step(directory: Path) -> int:
    found = latest(directory)
    return 0 if found is None else ftrain.load(campaign_state(), found).step


def judge_newest(directory: Path, ref: Reference) -> tuple[int | None, list[str]]:
    """Load the newest checkpoint; compare it with the uninterrupted run at the same step."""
    found = latest(directory)
    if found is None:
        return None, []
    state = ftrain.load(campaign_state(), found)
    want = torch.load(ref.snapshots / f"{state.step}.pt", weights_only=True)
    return state.step, tree_differences(snapshot(state), want)


def finish_and_compare(directory: Path, out: Path, ref: Reference) -> list[str]:
    proc = spawn("train", str(directory), str(out), str(CAMPAIGN_STEPS), "")
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise Fail(
            f"the resumed run failed: {clip(err.strip().splitlines()[-1] if err.strip() else err)}",
            LOST,
        )
    return differences(ftrain.load(campaign_state(), out), ftrain.load(campaign_state(), ref.out))


@dataclass
class Trial:
    """One interruption of a campaign."""

    status: str
    risk: str
    detail: str


def interrupt_once(directory: Path, out: Path, sig: int, delay: float) -> Trial | None:
    """Start (or resume) the run and send ``sig`` after ``delay`` s; None if it finished first."""
    proc = spawn("train", str(directory), str(out), str(CAMPAIGN_STEPS), "")
    assert proc.stdout is not None
    if not proc.stdout.readline():
        _, err = proc.communicate()
        return Trial("FAIL", LOST, f"the run could not start or resume: {clip(err[-300:])}")
    time.sleep(delay)
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        rest, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return Trial("FAIL", LOST, "the run did not stop within 60 s of Ctrl-C")
    if "done" in rest:  # training had finished before the signal came
        return None
    how = ""
    if sig == signal.SIGINT:
        how = "fit returned" if "stopped at step" in rest else "KeyboardInterrupt"
    during_write = any(p.name.endswith(".tmp") for p in directory.glob(".*"))
    return Trial("PASS", "", ", ".join(w for w in (how, "during a write" * during_write) if w))


def campaign(kind: str, n: int, base: Path, seed: int) -> Iterator[tuple[str, Result]]:
    """N random SIGKILLs (``kind="kill"``) or Ctrl-Cs (``"interrupt"``) of one training run.

    Each signal lands at a uniform random moment of what is left of the run, and the run starts
    over once less than a third of it is left; the seconds per step are re-estimated from every
    trial (the machine's load changes), so few runs finish before their signal.
    """
    sig = signal.SIGKILL if kind == "kill" else signal.SIGINT
    name = "SIGKILL" if kind == "kill" else "Ctrl-C"
    rng = random.Random(seed)
    try:
        ref = reference(base)
    except Harness as err:
        yield f"{kind}.reference", Result("ERROR", LOST, str(err))
        return
    root = base / f"{kind}-campaign"
    directory, out = root / "ckpt", root / "final.ckpt"
    per_step = ref.train_seconds / CAMPAIGN_STEPS
    done = finished_first = 0
    while done < n:
        t0 = time.monotonic()
        before = current_step(directory)
        if CAMPAIGN_STEPS - before < CAMPAIGN_STEPS // 3:  # start over: signals cover the run
            shutil.rmtree(root)
            before = 0
        delay = rng.uniform(0.0, per_step * (CAMPAIGN_STEPS - before))
        trial = interrupt_once(directory, out, sig, delay)
        if trial is None:  # the run finished before the signal: check its result, start over
            finished_first += 1
            per_step *= 0.7
            diff = differences(
                ftrain.load(campaign_state(), out), ftrain.load(campaign_state(), ref.out)
            )
            shutil.rmtree(root)
            if diff:
                yield (
                    f"{kind}.finished-{finished_first}",
                    Result(
                        "FAIL", WRONG, f"a run that finished between signals differs: {diff[:3]}"
                    ),
                )
            if finished_first > 2 * n:
                yield (
                    f"{kind}.timing",
                    Result("ERROR", LOST, f"{finished_first} runs finished before their signal"),
                )
                return
            continue
        done += 1
        case = f"{kind}.{done:02d}"
        if trial.status != "PASS":
            yield case, Result(trial.status, trial.risk, trial.detail, time.monotonic() - t0)
            shutil.rmtree(root, ignore_errors=True)
            continue
        at = f"{name} at {delay:.2f} s" + (f" ({trial.detail})" if trial.detail else "")
        try:
            step, diff = judge_newest(directory, ref)
        except ftrain.CheckpointError as err:
            step, diff = None, [f"does not load: {describe_error(err)}"]
        if step is not None and step - before >= 4:  # re-estimate the pace of this machine
            per_step = 0.5 * per_step + 0.5 * delay / (step - before)
        seconds = time.monotonic() - t0
        if diff:
            if step is None:  # the newest checkpoint does not load
                yield case, Result("FAIL", LOST, f"{at}: the newest checkpoint {diff[0]}", seconds)
            else:
                yield case, Result("FAIL", WRONG, f"{at}: the checkpoint of step {step} differs "
                                   f"from the uninterrupted run at that step in {diff[:3]}",
                                   seconds)  # fmt: skip
            shutil.rmtree(root)  # judge the next trials on a run of their own
        elif step is None:
            yield case, Result("PASS", LOST, f"{at}: no checkpoint yet (before the first save)",
                               seconds)  # fmt: skip
        else:
            yield case, Result("PASS", LOST, f"{at}: newest checkpoint (step {step}) loads and "
                               "equals the uninterrupted run at that step", seconds)  # fmt: skip
    t0 = time.monotonic()
    try:
        diff = finish_and_compare(directory, out, ref)
    except Fail as err:
        yield f"{kind}.final", Result("FAIL", err.risk or LOST, str(err))
        return
    if diff:
        yield f"{kind}.final", Result("FAIL", WRONG, f"after {n} {name}s the finished run differs "
                                      f"from the uninterrupted one in {diff[:4]}")  # fmt: skip
    else:
        yield f"{kind}.final", Result("PASS", WRONG, f"after {n} {name}s ({finished_first} runs "
                                      "finished first) the resumed run equals the uninterrupted "
                                      "one (torch.equal on every tensor)",
                                      time.monotonic() - t0)  # fmt: skip


def _one_signal(sig: int, fraction: float) -> Callable[[Path], str]:
    def check(tmp: Path) -> str:
        ref = reference(tmp.parent)
        directory, out = tmp / "ckpt", tmp / "final.ckpt"
        trial = interrupt_once(directory, out, sig, fraction * ref.train_seconds)
        if trial is None:
            raise Harness("the run finished before the signal")
        if trial.status != "PASS":
            raise Fail(trial.detail, trial.risk)
        step, diff = judge_newest(directory, ref)
        if step is None:
            raise Harness("no checkpoint had been written yet")
        if diff:
            raise Fail(
                f"the checkpoint of step {step} differs from the uninterrupted run: {diff[:3]}",
                WRONG,
            )
        final = finish_and_compare(directory, out, ref)
        if final:
            raise Fail(f"the resumed run differs from the uninterrupted one in {final[:3]}", WRONG)
        how = f" ({trial.detail})" if trial.detail else ""
        return f"at step {step}{how}: the newest checkpoint and the resumed run are bit-identical"

    return check


def _two_runs(tmp: Path) -> str:
    ref = reference(tmp.parent)
    directory = tmp / "ckpt"
    first = spawn("train", str(directory), str(tmp / "a.ckpt"), str(CAMPAIGN_STEPS), "")
    assert first.stdout is not None
    first.stdout.readline()
    second = spawn("train", str(directory), str(tmp / "b.ckpt"), str(CAMPAIGN_STEPS), "")
    _, err_b = second.communicate(timeout=600)
    _, err_a = first.communicate(timeout=600)
    problems = []
    if first.returncode != 0:
        problems.append(f"the first run died: {last_line(err_a)}")
    elif differences(
        ftrain.load(campaign_state(), tmp / "a.ckpt"), ftrain.load(campaign_state(), ref.out)
    ):
        problems.append("the first run's result differs from an undisturbed run")
    if second.returncode == 0:
        problems.append("the second run was not refused: both trained in one directory")
    elif str(first.pid) not in err_b:
        problems.append(f"the second run failed without naming the first (pid {first.pid}): "
                        f"{last_line(err_b)}")  # fmt: skip
    if problems:
        raise Fail("; ".join(problems))
    return "the second run is refused naming the first; the first finishes undisturbed"


SUBPROCESS: list[Fault] = [
    Fault("signal.sigkill-once", "signal", LOST,
          "SIGKILL half-way through a fit with Checkpoint: the newest checkpoint loads and equals "
          "the uninterrupted run at its step; the resumed run is bit-identical",
          _one_signal(signal.SIGKILL, 0.5), fast=False, tag="files", timeout=400),
    Fault("signal.sigint-once", "signal", WRONG,
          "Ctrl-C half-way through a fit with Checkpoint: the checkpoint is consistent and the "
          "resumed run is bit-identical", _one_signal(signal.SIGINT, 0.45), fast=False,
          tag="lost-2", timeout=400),
    Fault("ckpt.two-runs-one-directory", "checkpoint", LOST,
          "a second run started in a directory where a first one is training is refused with an "
          "error naming the first (its pid); the first run finishes undisturbed",
          _two_runs, fast=False, tag="lost-3", timeout=600),
]  # fmt: skip

CASES: list[Bad | Fault] = [*BAD, *FAULTS, *SIGNALS, *CHECKPOINTS, *SUBPROCESS]

GROUPS: dict[str, tuple[str, str]] = {
    "lost-1": ("13.1 (work lost) A failure outside the batch loop gets no Interrupted",
               "Every exception inside fit (validation, a callback at any event, the epoch end, an "
               "EarlyStopping monitor typo) gives callbacks Interrupted with the last consistent "
               "state, so Checkpoint saves the progress since; the original error is re-raised."),
    "lost-2": ("13.2 (work lost / silently wrong) Ctrl-C inside the optimizer update",
               "A first Ctrl-C waits for the batch boundary, then Interrupted, save, return; a "
               "second one stops at once and saves nothing. Never a checkpoint of half-updated "
               "weights; Ctrl-C during validation also saves the epoch just trained."),
    "lost-3": ("13.3 (work lost) Two runs in one checkpoint directory",
               "A lock file holds the run id, host and pid; a second live run is refused with an "
               "error naming the first; a resume takes over a lock whose pid is dead on this "
               "host."),
    "lost-4": ("13.4 (work lost) A callback raising on Interrupted stops Checkpoint",
               "Interrupted is delivered to each callback on its own: one raising does not stop "
               "the others."),
    "lost-5": ("13.5 (work lost) place on meta destroys the weights",
               "place(state, 'meta') (or any device where weights cannot live) is refused with "
               "PlacementError before anything moves."),
    "wrong-6": ("13.6 (silently wrong) Optimizer and scheduler kinds at load",
                "Save the optimizer and scheduler classes; load checks them and everything else "
                "before copying anything: a refused load leaves the template untouched and raises "
                "CheckpointError naming both kinds."),
    "wrong-7": ("13.7 (silently wrong) Another run's checkpoints in a reused directory",
                "A run directory knows its run (a run id in the checkpoint); starting a new run "
                "there, or mixing runs, is refused or explicit."),
    "wrong-8": ("13.8 (silently wrong) Resuming at the last step skips the open epoch",
                "A resume whose checkpoint is at the run's last step still closes the open epoch: "
                "EpochEnd, validation, the epoch checkpoint, the history row, the epoch counter."),
    "wrong-9": ("13.9 (silently wrong) resume= paths with dots",
                "resume decides by what exists: a path that does not exist yet is a new run "
                "directory, whatever its suffix (say so in the docs)."),
    "wrong-10": ("13.10 (silently wrong) Checkpoint file modes ignore the umask",
                 "Checkpoints get the permissions open() would give (0666 & ~umask)."),
    "wrong-11": ("13.11 (silently wrong) save/load step the optimizer",
                 "save and load never call optimizer.step (torch's state-dict helper initialises "
                 "a fresh optimizer by stepping it): user step hooks never fire."),
    "wrong-12": ("13.12 (silently wrong) limit_*_batches=0",
                 "limit_train_batches=0 trains nothing and limit_val_batches=0 skips validation "
                 "(or either is refused before training)."),
    "wrong-13": ("13.13 (work lost) Long checkpoint names",
                 "Any name the filesystem accepts saves: the temporary name must not be longer."),
    "unclear": ("Unclear errors named in issue 13",
                "One clear error naming the argument, what was expected and what came."),
    "args": ("Arguments checked at the boundary (the type/value policy)",
             "TypeError for a wrong type, ValueError for a wrong value, ftrain's errors where they "
             "apply; the message names the argument and shows what came."),
    "files": ("Files on disk and exact resume (kept behaviours)",
              "The last good checkpoint stays loadable; every resume is bit-identical."),
    "extra": ("Beyond the issue's list",
              "Found by this suite: see each case."),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise CaseTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_case(case: Bad | Fault, base: Path) -> Result:
    tmp = Path(tempfile.mkdtemp(prefix=case.id.replace(".", "-") + "-", dir=base))
    risk = UNCLEAR if isinstance(case, Bad) else case.risk
    t0 = time.monotonic()
    handler = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with warnings.catch_warnings(), deadline(case.timeout):
            warnings.simplefilter("ignore")
            result = case.judge(tmp)
    except CaseTimeout:
        result = Result("ERROR", risk, f"timed out after {case.timeout:.0f} s")
    except Harness as err:
        result = Result("ERROR", risk, f"harness: {err}")
    except KeyboardInterrupt:
        if case.category != "signal":
            raise
        result = Result("ERROR", risk, "a Ctrl-C escaped the case")
    finally:
        signal.signal(signal.SIGINT, handler)
    result.seconds = time.monotonic() - t0
    return result


def select(cases: list[Bad | Fault], fast: bool, only: str | None) -> list[Bad | Fault]:
    out = []
    for case in cases:
        if fast and not case.fast:
            continue
        if only and not matches(only, f"{case.category} {case.id}"):
            continue
        out.append(case)
    return out


def matches(pattern: str, text: str) -> bool:
    if any(c in pattern for c in "*?["):
        return any(fnmatch.fnmatch(part, pattern) for part in text.split())
    return pattern in text


def line(status: str, category: str, case_id: str, result: Result) -> str:
    detail = result.detail if status == "PASS" else f"{result.risk}: {result.detail}"
    return f"{status:<5}  {category:<10}  {case_id:<44}  {clip(detail, 220)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast", action="store_true", help="the CI subset (no subprocess runs)")
    p.add_argument("--only", metavar="PATTERN", help="cases whose id or category contains PATTERN")
    p.add_argument("--list", action="store_true", help="list the cases and what each expects")
    p.add_argument(
        "--kills", type=int, default=None, help="random SIGKILLs (default 20, 0 with --fast)"
    )
    p.add_argument("--interrupts", type=int, default=None,
                   help="random Ctrl-Cs (default 20, 0 with --fast)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the campaigns' random moments")
    p.add_argument(
        "--report", metavar="PATH", help="also write the lines and a grouped list of failures"
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary directories")
    p.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        mode, *rest = args.worker
        if mode == "train":
            train_worker(rest[0], rest[1], int(rest[2]), rest[3] if len(rest) > 3 else "")
        elif mode == "ddp-short":
            ddp_short_worker()
        return 0
    cases = select(CASES, args.fast, args.only)
    default_n = 0 if args.fast else 20
    kills = default_n if args.kills is None else args.kills
    interrupts = default_n if args.interrupts is None else args.interrupts
    if args.only:
        kills = kills if matches(args.only, "kill kill.") or args.kills else 0
        interrupts = (
            interrupts if matches(args.only, "interrupt interrupt.") or args.interrupts else 0
        )
    if args.list:
        for case in cases:
            flag = "fast" if case in select(CASES, True, None) else "full"
            print(f"{case.category:<10}  {case.id:<44}  {flag}  {case.expect}")
        print(f"{len(cases)} cases; campaigns: {kills} SIGKILLs, {interrupts} Ctrl-Cs")
        return 0
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.set_num_threads(1)
    base = Path(tempfile.mkdtemp(prefix="ftrain-adversarial-"))
    t0 = time.monotonic()
    lines: list[str] = []
    results: list[tuple[Bad | Fault | None, str, str, Result]] = []

    def emit(case: Bad | Fault | None, category: str, case_id: str, result: Result) -> None:
        text = line(result.status, category, case_id, result)
        print(text, flush=True)
        lines.append(text)
        results.append((case, category, case_id, result))

    try:
        for case in cases:
            emit(case, case.category, case.id, run_case(case, base))
        for kind, n in (("kill", kills), ("interrupt", interrupts)):
            if n:
                for case_id, result in campaign(kind, n, base, args.seed):
                    emit(None, kind, case_id, result)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    seconds = time.monotonic() - t0
    failed = [r for r in results if r[3].status == "FAIL"]
    count = {risk: sum(1 for r in failed if r[3].risk == risk) for risk in (LOST, WRONG, UNCLEAR)}
    passes = sum(1 for r in results if r[3].status == "PASS")
    errors = sum(1 for r in results if r[3].status == "ERROR")
    summary = (
        f"SUMMARY  {len(results)} cases  {passes} pass  {count[LOST]} work lost  "
        f"{count[WRONG]} silently wrong  {count[UNCLEAR]} unclear errors  {errors} errors  "
        f"in {seconds:.0f} s"
    )
    print(summary, flush=True)
    if args.report:
        write_report(Path(args.report), lines, summary, results, sys.argv[1:])
    return 1 if failed or errors else 0


def write_report(
    path: Path,
    lines: list[str],
    summary: str,
    results: list[tuple[Bad | Fault | None, str, str, Result]],
    argv: list[str],
) -> None:
    by_category: dict[str, list[int]] = {}
    for _, category, _, result in results:
        row = by_category.setdefault(category, [0, 0, 0])
        row[("PASS", "FAIL", "ERROR").index(result.status)] += 1
    out = [
        "ftrain adversarial suite (issue 13): cases written to the desired behaviour",
        f"command: python tests/scripts/adversarial.py {' '.join(argv)}",
        f"torch {torch.__version__}, python {sys.version.split()[0]}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        "",
        summary,
        "",
        "By category (pass / fail / error):",
        *[f"  {c:<10}  {p:>4} / {f:>4} / {e:>4}" for c, (p, f, e) in by_category.items()],
        "",
        "Failing behaviours, grouped (what is expected, then each case and what happened):",
    ]
    groups: dict[str, list[str]] = {}
    for case, _, case_id, result in results:
        if result.status == "PASS":
            continue
        tag = case.tag if case is not None else "files"
        expect = case.expect if case is not None else "bit-identical to the uninterrupted run"
        groups.setdefault(tag, []).append(
            f"  - {case_id} [{result.status}, {result.risk}]\n      expected: {expect}\n"
            f"      got: {clip(result.detail, 400)}"
        )
    for tag, (title, what) in GROUPS.items():
        if tag in groups:
            out += [
                "",
                f"## {title} ({len(groups[tag])} failing)",
                f"  Expected: {what}",
                *groups[tag],
            ]
    out += ["", "All lines:", *lines, summary, ""]
    path.write_text("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
