"""Metric-driven schedulers: the user names the metric, the scheduler's mode gives the
direction, `step_scheduler` steps them in fit and in loops of one's own."""

import attrs
import pytest
import torch
from helpers import make_loaders
from torch import nn

import ftrain

Plateau = torch.optim.lr_scheduler.ReduceLROnPlateau


def _state(monitor="val_acc", mode="max", loss_fn=None, **kwargs):
    torch.manual_seed(0)
    return ftrain.TrainState.create(
        model=nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2)),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        loss_fn=loss_fn or ftrain.supervised(nn.CrossEntropyLoss()),
        scheduler=lambda o: Plateau(o, mode=mode, patience=1, factor=0.5),
        scheduler_monitor=monitor,
        **kwargs,
    )


def test_plateau_on_val_acc_lowers_the_lr_only_when_accuracy_stalls():
    state = _state()
    accs = [0.5, 0.6, 0.7, 0.7, 0.7, 0.8, 0.8, 0.8]
    lrs = []
    for epoch, acc in enumerate(accs):
        # the loss falls all along: a scheduler fed val_loss under mode="max" would cut the LR
        metrics = {"val_acc": acc, "val_loss": 1.0 / (epoch + 1), "train_loss": 0.1}
        state = ftrain.step_scheduler(state, metrics)
        lrs.append(state.lr)
    assert lrs == [0.1, 0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]


def test_fit_feeds_the_monitored_validation_metric():
    scripted = iter([0.5, 0.6, 0.6, 0.6, 0.9, 0.9, 0.9])

    def loss_fn(model, batch):
        x, y = batch
        loss = nn.functional.cross_entropy(model(x), y)
        if model.training:
            return loss
        return loss, {"acc": torch.tensor(next(scripted))}

    train, val = make_loaders(n=32, batch_size=16)
    val = [next(iter(val))]  # one validation batch: one scripted accuracy per epoch
    state = _state(loss_fn=loss_fn)
    state, history = ftrain.fit(state, (train, val), max_epochs=7)
    assert [round(r["val_acc"], 3) for r in history] == [0.5, 0.6, 0.6, 0.6, 0.9, 0.9, 0.9]
    assert [r["lr"] for r in history][1:] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05]
    assert state.lr == 0.025


def test_a_loop_of_train_epoch_eval_epoch_and_step_scheduler_equals_fit():
    train, val = make_loaders()
    fitted, history = ftrain.fit(_state(), (train, val), max_epochs=6)
    state = _state()
    rows = []
    for _ in range(6):
        state, logs = ftrain.train_epoch(state, train)
        metrics = ftrain.eval_epoch(state, val, prefix="val_")
        state = ftrain.step_scheduler(state, {**logs, **metrics})
        rows.append({**logs, **metrics})
    assert state.lr == fitted.lr
    assert state.scheduler.state_dict() == fitted.scheduler.state_dict()
    for a, b in zip(state.model.parameters(), fitted.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for row, want in zip(rows, history, strict=True):
        assert row["val_acc"] == want["val_acc"] and row["train_loss"] == want["train_loss"]


def test_without_validation_fit_steps_on_the_training_metric():
    train, _ = make_loaders()
    state = _state(monitor="train_loss", mode="min")
    state, _ = ftrain.fit(state, train, max_epochs=3)
    assert state.scheduler.last_epoch == 3


def test_impossible_combinations_are_refused_at_create():
    with pytest.raises(ValueError, match="cannot step after every optimizer step"):
        _state(scheduler_interval="step")
    with pytest.raises(ValueError, match="which metric to maximise"):
        _state(monitor=None)
    with pytest.raises(ValueError, match="does not step on a metric"):
        ftrain.TrainState.create(
            model=nn.Linear(2, 1),
            optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
            loss_fn=lambda m, b: m(b).mean(),
            scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1),
            scheduler_monitor="val_loss",
        )
    # mode="min" without a monitor keeps watching val_loss (train_loss without validation)
    assert _state(monitor=None, mode="min").scheduler_interval == "epoch"


def test_a_monitored_metric_missing_at_the_first_validation_is_an_error():
    train, val = make_loaders()
    state = _state(monitor="val_f1")
    with pytest.raises(ValueError, match=r"watches 'val_f1'.*val_acc, val_loss"):
        ftrain.fit(state, (train, val), max_epochs=2)


def test_a_phase_names_the_metric_its_plateau_scheduler_watches():
    torch.manual_seed(0)

    def part_loss(name):
        return lambda model, b: nn.functional.cross_entropy(model[name](b[0]), b[1])

    def phase(name, **kwargs):
        return ftrain.Phase(
            name,
            optimizes=name,
            optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
            loss_fn=part_loss(name),
            scheduler=lambda o: Plateau(o, patience=0, factor=0.5, **kwargs),
        )

    state = ftrain.TrainState.create(
        model={"a": nn.Linear(10, 2), "b": nn.Linear(10, 2)},
        phases=[phase("a"), attrs.evolve(phase("b", mode="max"), scheduler_monitor="val_b_acc")],
    )
    assert [p.scheduler_interval for p in state.phases] == ["epoch", "epoch"]
    for a_loss, b_acc in ((1.0, 0.5), (0.5, 0.5), (0.6, 0.6)):
        metrics = {"val_a_loss": a_loss, "val_b_loss": 1.0, "val_b_acc": b_acc}
        state = ftrain.step_scheduler(state, metrics)
    lrs = {name: o.param_groups[0]["lr"] for name, o in state.optimizers.items()}
    assert lrs == {"a": 0.05, "b": 0.05}  # a: loss rose at the 3rd; b: accuracy stalled at the 2nd
    with pytest.raises(ValueError, match="which metric to maximise"):
        ftrain.TrainState.create(
            model={"a": nn.Linear(10, 2), "b": nn.Linear(10, 2)},
            phases=[phase("a"), phase("b", mode="max")],
        )
