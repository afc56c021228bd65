"""Built-in callbacks: each called in isolation with a state and an event, and through fit."""

import csv
import io
import math

import pytest
import torch
from helpers import make_classifier, make_loaders

import ftrain
from ftrain import EpochEnd, EpochStart, EvalEnd, FitEnd, FitStart, IntervalEnd, StepEnd
from ftrain.callbacks import (
    Checkpoint,
    CSVLogger,
    EarlyStopping,
    LearningRateMonitor,
    ModelSummary,
    ProgressBar,
    RichModelSummary,
    RichProgressBar,
    TensorBoardLogger,
    TerminateOnNaN,
    Timer,
)
from ftrain.testing import toy_state


def _eval(loss, epoch=0):
    return EvalEnd(step=epoch * 10, epoch=epoch, metrics={"val_loss": loss, "val_acc": 1 - loss})


def test_early_stopping_counts_patience_in_the_state():
    stop = EarlyStopping(monitor="val_loss", patience=2, min_delta=0.01)
    state = toy_state()
    for epoch, loss in enumerate([1.0, 0.5, 0.495, 0.6]):
        state = stop(state, _eval(loss, epoch))
    memory = state.callback_state["early_stopping"]
    assert state.should_stop and memory.best == 0.5 and memory.wait == 2
    assert memory.stopped_at_epoch == 3


def test_early_stopping_max_mode_and_auto_mode():
    assert EarlyStopping(monitor="val_acc").resolved_mode == "max"
    stop = EarlyStopping(monitor="val_acc", patience=1)
    state = stop(toy_state(), _eval(0.5))  # val_acc 0.5
    state = stop(state, _eval(0.4))  # val_acc 0.6: improved
    assert not state.should_stop and state.callback_state["early_stopping"].best == 0.6
    with pytest.raises(ValueError, match="`mode` must be"):
        EarlyStopping(mode="up")


def test_early_stopping_is_pure():
    state = toy_state()
    EarlyStopping()(state, _eval(1.0))
    assert state.callback_state == {} and not state.should_stop


def test_early_stopping_on_train_metric_listens_to_epoch_end():
    stop = EarlyStopping(monitor="train_loss", patience=1)
    state = stop(toy_state(), EpochEnd(step=5, epoch=0, metrics={"train_loss": 1.0}))
    state = stop(state, EpochEnd(step=10, epoch=1, metrics={"train_loss": 2.0}))
    assert state.should_stop


def test_progress_bar_writes_a_bar_and_summaries():
    out = io.StringIO()
    train, val = make_loaders()
    ftrain.fit(
        make_classifier(), (train, val), [ProgressBar(refresh_rate=0, file=out)], max_epochs=2
    )
    text = out.getvalue()
    assert "epoch 0" in text and "6/6" in text and "loss=" in text
    assert "val_acc=" in text and "train_loss=" in text


def test_progress_bar_syncs_only_at_refresh(monkeypatch):
    reads = []
    original = torch.Tensor.__float__
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: (reads.append(1), original(t))[1])
    bar = ProgressBar(refresh_rate=3600, file=io.StringIO())
    state = bar(toy_state(), EpochStart(step=0, epoch=0, num_batches=100))
    for i in range(50):
        state = bar(
            state,
            StepEnd(
                step=i + 1, epoch=0, batch=i, metrics={"loss": torch.tensor(1.0)}, batch_size=4
            ),
        )
    assert reads == []


def test_rich_progress_bar_and_summaries_render():
    rich_console = pytest.importorskip("rich.console")
    console = rich_console.Console(file=io.StringIO(), width=120)
    train, val = make_loaders()
    lines = []
    callbacks = [
        RichProgressBar(refresh_rate=0, console=console),
        RichModelSummary(console=console),
        ModelSummary(print_fn=lines.append),
    ]
    ftrain.fit(make_classifier(), (train, val), callbacks, max_epochs=1)
    text = console.file.getvalue()
    assert "Model summary" in text and "Linear" in text and "val_loss=" in text
    assert any("Total params: 210" in line for line in lines)
    assert any(line.startswith("0") and "Linear" in line and "176" in line for line in lines)


def test_summarize_counts_frozen_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    model[0].requires_grad_(False)
    s = ftrain.callbacks.summarize(model)
    assert (s.total, s.trainable, s.frozen) == (58, 18, 40)
    assert s.size_mb == pytest.approx(58 * 4 / 1e6)


def test_csv_logger_writes_interval_epoch_and_val_rows(tmp_path):
    train, val = make_loaders()
    log = CSVLogger(tmp_path)
    ftrain.fit(make_classifier(), (train, val), [log], max_epochs=2, log_every_n_steps=3)
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text().splitlines()))
    assert [r["event"] for r in rows] == ["interval", "interval", "epoch", "val"] * 2
    assert [int(r["step"]) for r in rows if r["event"] == "interval"] == [3, 6, 9, 12]
    assert float(rows[2]["train_loss"]) > 0 and rows[3]["val_acc"] != ""


def test_csv_logger_appends_when_resuming(tmp_path):
    CSVLogger(tmp_path)(toy_state(), EpochEnd(step=5, epoch=0, metrics={"train_loss": 1.0}))
    log = CSVLogger(tmp_path / "metrics.csv", append=True)
    log(toy_state(), EvalEnd(step=5, epoch=0, metrics={"val_loss": 2.0}))
    rows = list(csv.DictReader((tmp_path / "metrics.csv").read_text().splitlines()))
    assert [(r["event"], r["train_loss"], r["val_loss"]) for r in rows] == [
        ("epoch", "1.0", ""),
        ("val", "", "2.0"),
    ]


def test_tensorboard_logger_writes_readable_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train, val = make_loaders()
    ftrain.fit(
        make_classifier(),
        (train, val),
        [TensorBoardLogger(tmp_path)],
        max_epochs=2,
        log_every_n_steps=2,
    )
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"step/train_loss", "epoch/train_loss", "val_loss", "val_acc"} <= set(tags)
    assert [e.step for e in acc.Scalars("step/train_loss")] == [2, 4, 6, 8, 10, 12]


def test_learning_rate_monitor_records_every_group():
    state = ftrain.TrainState.create(
        model=torch.nn.Linear(2, 2),
        optimizer=lambda p: torch.optim.SGD(
            [{"params": [next(iter(p))], "lr": 0.1}, {"params": [], "lr": 0.5}]
        ),
        loss_fn=lambda m, b: m(b).sum(),
    )
    mon = LearningRateMonitor()
    state = mon(state, IntervalEnd(step=10, epoch=0, metrics={}))
    state = mon(state, EpochEnd(step=10, epoch=0, metrics={}))  # ignored at interval="step"
    assert state.callback_state["lr_monitor"] == ((10, (0.1, 0.5)),)


def test_terminate_on_nan_stops_gracefully():
    cb = TerminateOnNaN()
    state = cb(toy_state(), EvalEnd(step=4, epoch=0, metrics={"val_loss": math.nan}))
    assert state.should_stop and state.callback_state["terminate_on_nan"]["metrics"] == (
        "val_loss",
    )
    assert not cb(toy_state(), EvalEnd(step=4, epoch=0, metrics={"val_loss": 1.0})).should_stop
    per_step = TerminateOnNaN(check_every_n_steps=2)
    event = StepEnd(
        step=2, epoch=0, batch=1, metrics={"loss": torch.tensor(math.inf)}, batch_size=4
    )
    assert per_step(toy_state(), event).should_stop
    assert not per_step(
        toy_state(),
        StepEnd(step=3, epoch=0, batch=2, metrics={"loss": torch.tensor(math.inf)}, batch_size=4),
    ).should_stop


def test_timer_stops_fit_and_remembers_elapsed_time():
    train, _ = make_loaders()
    state, history = ftrain.fit(make_classifier(), train, [Timer(max_time=1e-9)], max_epochs=5)
    memory = state.callback_state["timer"]
    assert state.step == 1 and memory.stopped_at_step == 1 and history == []
    timer = Timer(max_time="00:00:00:01")
    assert timer.max_seconds == 1.0
    state = timer(toy_state(), FitStart(step=0, epoch=0, max_epochs=1, max_steps=None))
    state = timer(state, FitEnd(step=0, epoch=0, history=()))
    assert 0 <= state.callback_state["timer"].elapsed < 1 and not state.should_stop
    with pytest.raises(ValueError, match="`max_time` must be"):
        Timer("1 hour")


def test_observers_return_the_state_unchanged():
    state = toy_state()
    for cb in (ProgressBar(file=io.StringIO()), ModelSummary(print_fn=lambda line: None)):
        for event in (
            FitStart(step=0, epoch=0, max_epochs=1, max_steps=None),
            EpochStart(step=0, epoch=0, num_batches=1),
            EpochEnd(step=1, epoch=0, metrics={}),
            FitEnd(step=1, epoch=1, history=()),
        ):
            assert cb(state, event) is state


def test_plot_history_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    train, val = make_loaders()
    _, history = ftrain.fit(make_classifier(), (train, val), max_epochs=2)
    out = ftrain.plot_history(history, tmp_path / "curves.png")
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 5000
    with pytest.raises(ValueError, match="at least one row"):
        ftrain.plot_history([], tmp_path / "x.png")


def test_missing_optional_extras_name_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_rich(name, *args, **kwargs):
        if name.startswith(("rich", "torch.utils.tensorboard")):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rich)
    import importlib

    monkeypatch.setattr(importlib, "import_module", lambda name: no_rich(name))
    with pytest.raises(ImportError, match=r"pip install 'torch-ftrain\[rich\]'"):
        RichProgressBar()
    with pytest.raises(ImportError, match=r"torch-ftrain\[tensorboard\]"):
        TensorBoardLogger("unused")(
            toy_state(), IntervalEnd(step=1, epoch=0, metrics={"train_loss": 1.0})
        )


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: EarlyStopping(patience=1.5), TypeError, r"`patience` must be an int >= 0"),
        (lambda: EarlyStopping(mode="maximum"), ValueError, r"`mode` must be one of None"),
        (lambda: Checkpoint("d", save_top_k=-1), ValueError, r"`save_top_k` must be an int >= 0"),
        (lambda: Checkpoint("d", keep_last=0), ValueError, r"`keep_last` must be an int >= 1 \("),
        (lambda: Checkpoint("d", every_n_steps=2.0), TypeError, r"`every_n_steps` must be an int"),
        (lambda: Checkpoint("d", mode="best"), ValueError, r"`mode` must be one of"),
        (lambda: Timer(max_time=[1]), TypeError, r"`max_time` must be a timedelta"),
        (lambda: LearningRateMonitor(interval="batch"), ValueError, r"`interval` must be one of"),
    ],
)
def test_callbacks_reject_bad_arguments(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_checkpoint_and_early_stopping_infer_the_same_mode():
    for monitor, mode in (("val_acc", "max"), ("val_loss", "min"), (None, "min")):
        assert Checkpoint("d", monitor=monitor).mode == mode
        if monitor is not None:
            assert EarlyStopping(monitor=monitor).resolved_mode == mode


def test_checkpoint_saves_the_final_state_of_a_fit_ending_mid_epoch_at_max_steps(tmp_path):
    train, _ = make_loaders()  # 6 batches per epoch
    ckpt = Checkpoint(tmp_path, every_n_steps=4)
    state, _ = ftrain.fit(make_classifier(), train, [ckpt], max_steps=9, log_every_n_steps=2)
    assert ckpt.last_path(state) == tmp_path / "step-000000009.ckpt"
    assert ftrain.latest_checkpoint(tmp_path) == ckpt.last_path(state)
    restored = ftrain.load(make_classifier(), ckpt.last_path(state))
    assert (restored.step, restored.epoch, restored.epoch_batch) == (9, 1, 3)
    ftrain.testing.assert_states_equal(state, restored)


def test_checkpoint_writes_no_extra_file_when_the_final_state_is_saved(tmp_path):
    train, _ = make_loaders()
    ckpt = Checkpoint(tmp_path, keep_last=5)
    ftrain.fit(make_classifier(), train, [ckpt], max_epochs=2)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == [
        "step-000000006.ckpt",
        "step-000000012.ckpt",
    ]


def test_the_best_checkpoint_path_is_public_and_survives_a_resume(tmp_path):
    train, val = make_loaders()
    ckpt = Checkpoint(tmp_path, monitor="val_loss", keep_last=1)
    state, history = ftrain.fit(make_classifier(), (train, val), [ckpt], max_epochs=3)
    best_epoch = min(history, key=lambda r: r["val_loss"])
    assert ckpt.best_path(state) == tmp_path / f"step-{best_epoch['step']:09d}.ckpt"
    assert ckpt.best_path(state).exists()
    resumed = ftrain.load(make_classifier(), ckpt.last_path(state))
    assert ckpt.best_path(resumed) == ckpt.best_path(state)
    assert Checkpoint(tmp_path).best_path(make_classifier()) is None
