"""Nothing lost, nothing wrong: one test per failure path of fit, checkpoints and placement.

The adversarial suite (tests/scripts/adversarial.py, its fast subset in test_adversarial.py)
tries each of these as a hostile user would; the tests here pin each fix on its own.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
from helpers import make_classifier, make_loaders, params
from torch import nn

import ftrain
from ftrain import CheckpointError, PlacementError
from ftrain.callbacks import Checkpoint, EarlyStopping


class Boom(Exception):
    pass


def _raise_at(kind, nth=1):
    seen = []

    def callback(state, event):
        if isinstance(event, kind):
            seen.append(event)
            if len(seen) == nth:
                raise Boom(f"at {kind.__name__}")
        return state

    return callback


def _on_interrupt(d):
    return Checkpoint(d, every_n_epochs=None)


def _saved_step(d):
    found = ftrain.latest_checkpoint(d)
    return None if found is None else ftrain.load(make_classifier(), found).step


# 1. Interrupted for failures outside the batch loop


class _FailingLoader:
    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        raise Boom("validation loader")


@pytest.mark.parametrize(
    "how",
    ["val-loader", "epoch-end-callback", "eval-end-callback", "fit-end-callback", "es-typo"],
)
def test_a_failure_outside_the_batch_loop_saves_the_epoch_just_trained(tmp_path, how):
    train, val = make_loaders()  # 6 batches an epoch
    callbacks = {
        "val-loader": [],
        "epoch-end-callback": [_raise_at(ftrain.EpochEnd)],
        "eval-end-callback": [_raise_at(ftrain.EvalEnd)],
        "fit-end-callback": [_raise_at(ftrain.FitEnd)],
        "es-typo": [EarlyStopping(monitor="val_los")],
    }[how]
    if how == "val-loader":
        val = _FailingLoader(val)
    expected = ValueError if how == "es-typo" else Boom
    with pytest.raises(expected):
        ftrain.fit(
            make_classifier(), (train, val), [*callbacks, _on_interrupt(tmp_path)], max_epochs=1
        )
    assert _saved_step(tmp_path) == 6


def test_interrupted_reaches_checkpoint_after_a_callback_that_raises_on_it(tmp_path):
    def always(state, event):
        if isinstance(event, ftrain.StepEnd | ftrain.Interrupted) and event.step >= 3:
            raise Boom("every event")
        return state

    train, _ = make_loaders()
    with pytest.raises(Boom), pytest.warns(UserWarning, match="raised Boom .* on Interrupted"):
        ftrain.fit(make_classifier(), train, [always, _on_interrupt(tmp_path)], max_epochs=1)
    assert _saved_step(tmp_path) == 3


def test_an_interrupt_inside_an_accumulation_group_saves_the_group_start(tmp_path):
    train, _ = make_loaders()
    step = ftrain.with_accumulation(every=3)
    cb = _raise_at(ftrain.StepEnd, nth=4)  # the first micro-batch of the second group
    with pytest.raises(Boom):
        ftrain.fit(
            make_classifier(), train, [cb, _on_interrupt(tmp_path)], max_epochs=2, step_fn=step
        )
    saved = ftrain.load(make_classifier(), ftrain.latest_checkpoint(tmp_path))
    assert (saved.step, saved.micro_step, saved.epoch_batch) == (1, 0, 3)
    resumed, _ = ftrain.fit(saved, train, max_epochs=2, step_fn=step)
    straight, _ = ftrain.fit(make_classifier(), train, max_epochs=2, step_fn=step)
    ftrain.testing.assert_states_equal(resumed, straight)


# 2. Ctrl-C: the first waits for the batch boundary, the second stops at once


class _HalfUpdate(torch.optim.SGD):
    """SGD that sends SIGINT to this process after updating its first parameter, at step ``at``
    (twice: once more after the second parameter)."""

    def __init__(self, params, at, twice=False):
        super().__init__(params, lr=0.1)
        self.at, self.twice, self.calls = at, twice, 0

    @torch.no_grad()
    def step(self, closure=None):
        self.calls += 1
        for i, p in enumerate(p for g in self.param_groups for p in g["params"]):
            p.add_(p.grad, alpha=-0.1)
            if self.calls == self.at and (i == 0 or (i == 1 and self.twice)):
                signal.raise_signal(signal.SIGINT)


def _half_update_state(at, twice=False):
    torch.manual_seed(0)
    return ftrain.TrainState.create(
        model=nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2)),
        optimizer=lambda p: _HalfUpdate(p, at, twice),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
    )


def test_a_first_ctrl_c_finishes_the_batch_saves_and_returns(tmp_path, capfd):
    train, _ = make_loaders()
    state, _ = ftrain.fit(_half_update_state(at=4), train, [_on_interrupt(tmp_path)], max_epochs=3)
    assert state.step == 4  # the interrupted update was completed, then fit stopped
    assert "Ctrl-C" in capfd.readouterr().err
    saved = ftrain.load(_half_update_state(at=0), ftrain.latest_checkpoint(tmp_path))
    assert saved.step == 4
    for a, b in zip(params(saved), params(state), strict=True):
        assert torch.equal(a, b)


def test_a_second_ctrl_c_stops_at_once_and_saves_nothing(tmp_path):
    train, _ = make_loaders()
    with pytest.raises(KeyboardInterrupt):
        ftrain.fit(
            _half_update_state(at=4, twice=True), train, [_on_interrupt(tmp_path)], max_epochs=3
        )
    assert ftrain.latest_checkpoint(tmp_path) is None


def test_a_program_s_own_sigint_handler_is_left_alone(tmp_path):
    calls = []
    previous = signal.signal(signal.SIGINT, lambda *a: calls.append(a))
    try:
        train, _ = make_loaders()
        ftrain.fit(_half_update_state(at=2), train, [_on_interrupt(tmp_path)], max_epochs=1)
        assert len(calls) == 1 and signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


# 3. One run per checkpoint directory


def test_a_second_live_run_in_a_directory_is_refused_naming_the_first(tmp_path):
    train, _ = make_loaders()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"run_id": "feedfacecafe0001", "host": socket.gethostname(), "pid": sleeper.pid}
        (tmp_path / "ftrain.lock").write_text(json.dumps(lock))
        rec = []
        with pytest.raises(
            CheckpointError, match=rf"in use by run 'feedfacecafe0001' \(process {sleeper.pid}"
        ):
            ftrain.fit(
                make_classifier(),
                train,
                [lambda s, e: rec.append(e) or s, Checkpoint(tmp_path)],
                max_epochs=1,
            )
        assert not any(isinstance(e, ftrain.StepEnd) for e in rec)
        assert list(tmp_path.iterdir()) == [tmp_path / "ftrain.lock"]  # nothing written or removed
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_resume_takes_over_the_lock_of_its_own_killed_run(tmp_path):
    train, _ = make_loaders()
    state, _ = ftrain.fit(make_classifier(), train, [Checkpoint(tmp_path)], max_epochs=1)
    run_id = state.callback_state["checkpoint"].run_id
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = {"run_id": run_id, "host": socket.gethostname(), "pid": dead.pid}
    (tmp_path / "ftrain.lock").write_text(json.dumps(lock))  # as a SIGKILL leaves it
    resumed, _ = ftrain.fit(
        make_classifier(), train, [Checkpoint(tmp_path)], max_epochs=2, resume=tmp_path
    )
    assert resumed.step == 12 and resumed.callback_state["checkpoint"].run_id == run_id
    assert json.loads((tmp_path / "ftrain.lock").read_text())["pid"] is None  # released


def test_a_new_run_in_another_run_s_directory_is_refused_before_training(tmp_path):
    train, _ = make_loaders()
    ftrain.fit(make_classifier(), train, [Checkpoint(tmp_path)], max_epochs=2)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError, match="belongs to another run"):
        ftrain.fit(make_classifier(seed=5), train, [Checkpoint(tmp_path)], max_epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("kind", ["file", "dangling-symlink"])
def test_a_checkpoint_directory_that_cannot_be_one_is_refused_at_fit_start(tmp_path, kind):
    path = tmp_path / "ckpt"
    if kind == "file":
        path.write_text("")
    else:
        path.symlink_to(tmp_path / "gone")
    train, _ = make_loaders()
    with pytest.raises(CheckpointError, match="`dirpath`"):
        ftrain.fit(make_classifier(), train, [Checkpoint(path)], max_epochs=1)


# 5. place refuses a device where the weights cannot live


@pytest.mark.parametrize("device", ["meta", torch.device("meta"), ftrain.SingleDevice("meta")])
def test_place_on_meta_is_refused_and_the_weights_stay(device):
    state = make_classifier()
    before = params(state)
    with pytest.raises(PlacementError, match="meta"):
        ftrain.place(state, device)
    assert all(torch.equal(a, b) for a, b in zip(before, params(state), strict=True))


# 6. Kinds, sections, and a refused load leaves the template untouched


def _squares(model, batch):
    return model(batch).pow(2).mean()


def _state(optimizer, scheduler=None, loss_fn=_squares):
    torch.manual_seed(0)
    return ftrain.TrainState.create(
        model=nn.Linear(4, 2),
        optimizer=optimizer,
        loss_fn=loss_fn,
        scheduler=scheduler,
    )


@pytest.mark.parametrize(
    ("saved", "template", "names"),
    [
        (lambda p: torch.optim.SGD(p, lr=0.1), lambda p: torch.optim.AdamW(p), "SGD.*AdamW"),
        (lambda p: torch.optim.AdamW(p), lambda p: torch.optim.SGD(p, lr=0.1), "AdamW.*SGD"),
        (lambda p: torch.optim.AdamW(p), lambda p: torch.optim.Adam(p), "AdamW.*Adam"),
    ],
)
def test_an_optimizer_of_another_kind_is_refused_and_the_template_untouched(
    tmp_path, saved, template, names
):
    state, _ = ftrain.train_step(_state(saved), torch.randn(8, 4))
    path = ftrain.save(state, tmp_path / "a.ckpt")
    target = _state(template)
    before = params(target)
    with pytest.raises(CheckpointError, match=f"optimizer: {names}"):
        ftrain.load(target, path)
    assert target.is_live and all(
        torch.equal(a, b) for a, b in zip(before, params(target), strict=True)
    )


def test_a_scheduler_of_another_kind_is_refused(tmp_path):
    sgd = lambda p: torch.optim.SGD(p, lr=0.1)
    path = ftrain.save(
        _state(sgd, lambda o: torch.optim.lr_scheduler.StepLR(o, 2)), tmp_path / "a.ckpt"
    )
    with pytest.raises(CheckpointError, match="scheduler: StepLR in the checkpoint, ExponentialLR"):
        ftrain.load(_state(sgd, lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9)), path)


@pytest.mark.parametrize("section", ["model", "optimizers", "meta"])
def test_a_checkpoint_with_a_section_missing_is_refused_by_name(tmp_path, section):
    from ftrain._checkpoint._format import write_file

    data = ftrain.read_checkpoint(ftrain.save(make_classifier(), tmp_path / "a.ckpt"))
    del data[section]
    write_file(tmp_path / "b.ckpt", data)  # a valid checksum over an incomplete record
    with pytest.raises(CheckpointError, match=f"'{section}' section is missing"):
        ftrain.load(make_classifier(), tmp_path / "b.ckpt")


# 8. Resuming at the last step closes the open epoch


def test_a_resume_at_the_last_step_finishes_the_epoch(tmp_path):
    train, val = make_loaders()
    ckpt = lambda: Checkpoint(tmp_path, every_n_steps=6, save_on_interrupt=False)
    with pytest.raises(Boom):  # killed between the step-12 checkpoint and the epoch's end
        ftrain.fit(
            make_classifier(),
            (train, val),
            [_raise_at(ftrain.EpochEnd, 2), ckpt()],
            max_steps=12,
            log_every_n_steps=6,
        )
    seen = []
    resumed, history = ftrain.fit(
        make_classifier(), (train, val), [lambda s, e: seen.append(type(e).__name__) or s, ckpt()],
        max_steps=12, log_every_n_steps=6, resume=tmp_path,
    )  # fmt: skip
    straight, straight_history = ftrain.fit(
        make_classifier(), (train, val), max_steps=12, log_every_n_steps=6
    )
    assert "EpochEnd" in seen and "EvalEnd" in seen
    assert resumed.epoch == straight.epoch == 2
    assert history[-1]["val_loss"] == straight_history[-1]["val_loss"]


# 9. resume= decided by what exists


@pytest.mark.parametrize("name", ["lr0.001", "2024.06.01", "exp1"])
def test_resume_of_a_new_directory_starts_and_then_resumes_whatever_its_dots(tmp_path, name):
    train, _ = make_loaders()
    d = tmp_path / "runs" / name
    state, _ = ftrain.fit(make_classifier(), train, [Checkpoint(d)], max_epochs=1, resume=d)
    resumed, _ = ftrain.fit(make_classifier(), train, [Checkpoint(d)], max_epochs=2, resume=d)
    assert (state.step, resumed.step) == (6, 12)


def test_resume_of_a_missing_checkpoint_file_is_refused(tmp_path):
    train, _ = make_loaders()
    with pytest.raises(CheckpointError, match="does not exist"):
        ftrain.fit(make_classifier(), train, max_epochs=1, resume=tmp_path / "step-000000006.ckpt")


# 10. File modes, 11. no optimizer step at save, 13. long names


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_checkpoints_get_the_mode_open_would_give(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = ftrain.save(make_classifier(), tmp_path / "a.ckpt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("trained", [False, True])
def test_save_never_steps_the_optimizer(tmp_path, trained):
    state = _state(lambda p: torch.optim.SGD(p, lr=0.1))
    if trained:
        state, _ = ftrain.train_step(state, torch.randn(8, 4))
    fired = []
    state.optimizer.register_step_pre_hook(lambda *a: fired.append(a))
    ftrain.save(state, tmp_path / "a.ckpt")
    ftrain.load(_state(lambda p: torch.optim.SGD(p, lr=0.1)), tmp_path / "a.ckpt")
    assert fired == [] and all(p.grad is None for p in state.model.parameters())


def test_a_name_at_the_file_name_limit_saves_and_loads(tmp_path):
    path = ftrain.save(make_classifier(), tmp_path / ("n" * 250 + ".ckpt"))
    assert ftrain.load(make_classifier(), path).step == 0


# 12. limits of zero mean none


def test_limit_train_batches_zero_trains_nothing_and_limit_val_batches_zero_validates_nothing():
    train, val = make_loaders()
    state, history = ftrain.fit(
        make_classifier(), (train, val), max_epochs=2, limit_train_batches=0
    )
    assert (state.step, history) == (0, [])
    state, history = ftrain.fit(make_classifier(), (train, val), max_epochs=2, limit_val_batches=0)
    assert state.step == 12 and not any("val_loss" in row for row in history)


# Unclear today: one clear error naming the argument, expected and got


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: ftrain.fit(make_classifier(), None, max_epochs=1), TypeError, "`loaders`.*None"),
        (
            lambda: ftrain.fit(make_classifier(), [], None, max_epochs=1),
            TypeError,
            "`callbacks`.*None",
        ),
        (
            lambda: ftrain.fit(make_classifier(), [], step_fn="sgd", max_epochs=1),
            TypeError,
            "`step_fn`.*'sgd'",
        ),
        (
            lambda: ftrain.fit(make_classifier(), [], stop_signals="SIGTERM", max_epochs=1),
            TypeError,
            "`stop_signals`",
        ),
        (
            lambda: ftrain.fit(make_classifier(), [], stop_signals=(signal.SIGKILL,), max_epochs=1),
            ValueError,
            "`stop_signals`.*SIGKILL",
        ),
        (
            lambda: ftrain.fit(make_classifier(), [], resume=42, max_epochs=1),
            TypeError,
            "`resume`.*42",
        ),
        (lambda: ftrain.eval_epoch(make_classifier(), 42), TypeError, "`loader`.*42"),
        (lambda: ftrain.eval_epoch(make_classifier(), [], prefix=5), TypeError, "`prefix`.*5"),
        (lambda: ftrain.save(make_classifier(), ""), ValueError, "`path`.*''"),
        (lambda: ftrain.load(make_classifier(), 42), TypeError, "`path`.*42"),
        (
            lambda: _state(lambda p: torch.optim.SGD(p, lr=0.1), loss_fn=nn.MSELoss()),
            TypeError,
            "`loss_fn`.*MSELoss",
        ),
        (
            lambda: ftrain.train_step(
                make_classifier(), {"x": torch.randn(2, 10), "y": torch.zeros(2).long()}
            ),
            TypeError,
            "`batch`.*dict",
        ),
    ],
)
def test_bad_arguments_get_one_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_healthy_run_directory_passed_to_load_is_named_as_such(tmp_path):
    train, _ = make_loaders()
    ftrain.fit(make_classifier(), train, [Checkpoint(tmp_path)], max_epochs=1)
    with pytest.raises(CheckpointError, match="is a run directory holding 1 checkpoint") as err:
        ftrain.load(make_classifier(), tmp_path)
    assert "interrupted" not in str(err.value)


def test_an_empty_batch_is_named_not_blamed_on_poisoned_weights():
    batches = [(torch.randn(0, 10), torch.zeros(0).long())]
    with pytest.raises(ValueError, match="`batch` 0 of the epoch holds 0 samples"):
        ftrain.train_epoch(make_classifier(), batches)
