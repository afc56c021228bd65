import math

import pytest
import torch
from helpers import make_classifier, make_loaders, params
from torch import nn

import ftrain
from ftrain import EpochEnd, EpochStart, EvalEnd, FitEnd, FitStart, IntervalEnd, StepEnd


def _strip_timing(rows):
    return [
        {k: v for k, v in r.items() if k not in ("epoch_time", "samples_per_sec")} for r in rows
    ]


def test_fit_equals_a_hand_written_loop_of_public_functions():
    train, val = make_loaders()
    fitted, history = ftrain.fit(make_classifier(), (train, val), max_epochs=3)

    state = make_classifier()
    rows = []
    while state.epoch < 3:
        epoch = state.epoch
        state, logs = ftrain.train_epoch(state, train)
        rows.append(
            {
                "epoch": epoch,
                "step": state.step,
                **logs,
                **ftrain.eval_epoch(state, val, prefix="val_"),
            }
        )
    ftrain.testing.assert_states_equal(fitted, state)
    assert fitted.step == 18
    assert _strip_timing(history) == _strip_timing(rows)


def test_step_level_loop_matches_train_epoch():
    train, _ = make_loaders()
    by_epoch, logs = ftrain.train_epoch(make_classifier(), train)

    state = make_classifier()
    loader = ftrain.prepare_loader(state, train)
    loader.sampler.set_epoch(0)
    losses, counts = [], []
    for batch in loader:
        state, metrics = ftrain.train_step(state, batch)
        losses.append(metrics["loss"])
        counts.append(len(batch[0]))
    assert all(torch.equal(p, q) for p, q in zip(params(by_epoch), params(state), strict=True))
    mean = sum(float(l) * n for l, n in zip(losses, counts, strict=True)) / sum(counts)
    assert logs["train_loss"] == pytest.approx(mean, rel=1e-12)


def test_fit_can_be_called_again_to_continue_the_run():
    train, val = make_loaders()
    once, _ = ftrain.fit(make_classifier(), (train, val), max_epochs=4)
    twice, _ = ftrain.fit(make_classifier(), (train, val), max_epochs=2)
    twice, history = ftrain.fit(twice, (train, val), max_epochs=4)
    ftrain.testing.assert_states_equal(once, twice)
    assert twice.epoch == 4
    assert [r["epoch"] for r in history] == [0, 1, 2, 3]  # the whole run's history
    again, history = ftrain.fit(twice, (train, val), max_epochs=4)  # same limits: nothing to do
    assert len(history) == 4 and again.step == twice.step


def test_max_steps_stops_mid_epoch_and_the_next_call_finishes_the_epoch():
    train, _ = make_loaders()  # 6 batches per epoch
    straight, _ = ftrain.fit(make_classifier(), train, max_steps=10)
    assert straight.step == 10 and straight.epoch == 1 and straight.epoch_batch == 4
    split, _ = ftrain.fit(make_classifier(), train, max_steps=4)
    split, _ = ftrain.fit(split, train, max_steps=10)
    ftrain.testing.assert_states_equal(straight, split)
    done, history = ftrain.fit(split, train, max_epochs=2)
    assert done.epoch == 2 and done.step == 12 and [r["epoch"] for r in history] == [0, 1]


def test_limits_and_validation_every_n_steps():
    train, val = make_loaders()
    seen = []
    record = lambda state, event: (seen.append(event), state)[1]
    state, history = ftrain.fit(
        make_classifier(),
        (train, val),
        [record],
        max_epochs=2,
        limit_train_batches=4,
        limit_val_batches=1,
        val_every_n_steps=3,
    )
    assert state.step == 8 and state.epoch == 2
    evals = [e for e in seen if isinstance(e, EvalEnd)]
    assert [e.step for e in evals] == [3, 4, 6, 8]
    assert [(r["epoch"], r["step"]) for r in history] == [(0, 3), (0, 4), (1, 6), (1, 8)]


def test_val_every_n_epochs():
    train, val = make_loaders()
    _, history = ftrain.fit(make_classifier(), (train, val), max_epochs=4, val_every_n_epochs=2)
    assert ["val_loss" in r for r in history] == [False, True, False, True]


def test_event_order_for_one_run():
    train, val = make_loaders(n=32, batch_size=16)
    seen = []
    record = lambda state, event: (seen.append(type(event).__name__), state)[1]
    ftrain.fit(make_classifier(), (train, val), [record], max_epochs=2, log_every_n_steps=2)
    epoch = ["EpochStart", "StepEnd", "StepEnd", "IntervalEnd", "EpochEnd", "EvalEnd"]
    assert seen == ["FitStart", *epoch, *epoch, "FitEnd"]


def test_interval_end_carries_host_floats_averaged_over_the_interval():
    train, _ = make_loaders()
    events = []
    grab = ftrain.on(IntervalEnd, lambda s, e: (events.append(e), s)[1])
    ftrain.fit(make_classifier(), train, [grab], max_epochs=1, log_every_n_steps=3)
    assert [e.step for e in events] == [3, 6]
    assert all(isinstance(v, float) for e in events for v in e.metrics.values())
    assert set(events[0].metrics) == {"train_loss", "train_acc", "lr"}


def test_early_stopping_stops_fit_and_keeps_its_memory_in_the_state():
    train, val = make_loaders()

    def worsening(state, event):  # feed EarlyStopping a val_loss that never improves
        if isinstance(event, EvalEnd):
            event = EvalEnd(
                step=event.step, epoch=event.epoch, metrics={"val_loss": float(event.epoch)}
            )
            return stopper(state, event)
        return state

    stopper = ftrain.callbacks.EarlyStopping(monitor="val_loss", patience=2)
    state, history = ftrain.fit(make_classifier(), (train, val), [worsening], max_epochs=10)
    assert len(history) == 3 and state.epoch == 3
    memory = state.callback_state["early_stopping"]
    assert memory.best == 0.0 and memory.wait == 2 and memory.stopped_at_epoch == 2


def test_early_stopping_lists_available_metrics():
    train, val = make_loaders()
    stop = ftrain.callbacks.EarlyStopping(monitor="val_los")
    with pytest.raises(ValueError, match="available: val_acc, val_loss"):
        ftrain.fit(make_classifier(), (train, val), [stop], max_epochs=1)


def test_callback_can_stop_mid_epoch():
    train, _ = make_loaders()
    stop = ftrain.on(StepEnd, lambda s, e: s.replace(should_stop=e.step >= 2))
    state, history = ftrain.fit(make_classifier(), train, [stop], max_epochs=3)
    assert state.step == 2 and state.epoch == 0 and state.epoch_batch == 2 and history == []


def test_epoch_interval_scheduler_and_plateau_scheduler():
    train, val = make_loaders()
    state = ftrain.TrainState.create(
        model=nn.Linear(10, 2),
        optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5),
        scheduler_interval="epoch",
    )
    state, history = ftrain.fit(state, train, max_epochs=3)
    assert [r["lr"] for r in history] == [1.0, 0.5, 0.25] and state.lr == 0.125

    plateau = ftrain.TrainState.create(
        model=nn.Linear(10, 2),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
        scheduler=lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0),
        scheduler_interval="epoch",
    )
    plateau, _ = ftrain.fit(plateau, (train, val), max_epochs=3)
    assert plateau.scheduler.last_epoch == 3  # stepped once per epoch, on val_loss


def test_loaders_may_be_a_dict_a_pair_or_one_loader():
    train, val = make_loaders()
    _, h1 = ftrain.fit(make_classifier(), {"train": train, "val": val}, max_epochs=1)
    _, h2 = ftrain.fit(make_classifier(), (train, val), max_epochs=1)
    _, h3 = ftrain.fit(make_classifier(), train, max_epochs=1)
    assert _strip_timing(h1) == _strip_timing(h2)
    assert "val_loss" not in h3[0] and h3[0]["train_loss"] == h1[0]["train_loss"]


def test_plain_iterables_work_as_loaders(tiny_state, batch):
    state, history = ftrain.fit(tiny_state, [batch, batch, batch], max_epochs=2)
    assert state.step == 6 and history[1]["train_loss"] < history[0]["train_loss"]


def test_nonfinite_loss_stops_training_with_the_batch():
    state = ftrain.testing.toy_state()
    x, y = ftrain.testing.toy_batch()
    bad = (x, torch.full_like(y, math.inf))
    with pytest.raises(ftrain.NonFiniteError, match=r"became (nan|inf).*3rd batch after step 0"):
        ftrain.fit(state, [(x, y), (x, y), bad, (x, y)], max_epochs=1, log_every_n_steps=10)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "needs `max_epochs` or `max_steps`"),
        (
            {"max_epochs": -1},
            ValueError,
            r"`max_epochs` must be an int >= 0 or None \(got -1\)",
        ),
        (
            {"max_epochs": 1.5},
            TypeError,
            r"`max_epochs` must be an int >= 0 or None \(got float 1.5\)",
        ),
        ({"max_epochs": 1, "max_steps": "10"}, TypeError, "max_steps"),
        ({"max_steps": -3}, ValueError, "max_steps"),
        ({"max_epochs": 1, "val_every_n_epochs": 0}, ValueError, "val_every_n_epochs"),
        ({"max_epochs": 1, "log_every_n_steps": 0}, ValueError, "log_every_n_steps"),
        ({"max_epochs": 1, "callbacks": [print]}, ftrain.CallbackSignatureError, "callback"),
        (
            {"max_epochs": 1, "callbacks": [lambda s: s]},
            ftrain.CallbackSignatureError,
            r"\(state, event\)",
        ),
    ],
)
def test_fit_rejects_bad_arguments(kwargs, error, match, tiny_state, batch):
    callbacks = kwargs.pop("callbacks", ())
    with pytest.raises(error, match=match):
        ftrain.fit(tiny_state, [batch], callbacks, **kwargs)
    assert tiny_state.is_live


def test_fit_rejects_bad_loaders(tiny_state):
    with pytest.raises(ValueError, match="yielded no batches"):
        ftrain.fit(tiny_state, [], max_epochs=1)
    with pytest.raises(ValueError, match="'train' key"):
        ftrain.fit(tiny_state, {"training": []}, max_epochs=1)
    with pytest.raises(TypeError, match="iterable train loader"):
        ftrain.fit(tiny_state, 42, max_epochs=1)
    with pytest.raises(ValueError, match="yielded no batches"):
        ftrain.eval_epoch(tiny_state, [])


def test_callback_must_return_a_state(tiny_state, batch):
    with pytest.raises(ftrain.CallbackSignatureError, match="must return a TrainState"):
        ftrain.fit(tiny_state, [batch], [lambda s, e: None], max_epochs=1)


def test_eval_epoch_weights_batches_by_sample_count(tiny_state):
    x, y = ftrain.testing.toy_batch(n=6)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    whole = ftrain.eval_epoch(tiny_state, [(x, y)])
    split = ftrain.eval_epoch(tiny_state, batches)
    assert split["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    counted = tiny_state.replace(
        loss_fn=lambda m, b: (ftrain.testing.toy_state().loss_fn(m, b), {"count": torch.tensor(1)})
    )
    assert ftrain.eval_epoch(counted, batches)["loss"] != pytest.approx(whole["loss"], rel=1e-6)


def test_callbacks_see_events_with_consistent_counters():
    train, val = make_loaders(n=48, batch_size=16)
    seen = []
    ftrain.fit(
        make_classifier(),
        (train, val),
        [lambda s, e: (seen.append((e, s.step, s.epoch)), s)[1]],
        max_epochs=2,
    )
    for event, step, epoch in seen:
        if isinstance(event, StepEnd):
            assert event.step == step and event.epoch == epoch
        if isinstance(event, EpochEnd):
            assert event.epoch == epoch - 1
        if isinstance(event, EpochStart):
            assert event.epoch == epoch and event.num_batches == 3
    kinds = {type(e) for e, _, _ in seen}
    assert {FitStart, FitEnd, EvalEnd} <= kinds


def test_an_exception_folds_the_open_interval_into_the_state_callbacks_see():
    batches = [ftrain.testing.toy_batch(n=4, seed=i) for i in range(6)]
    seen = {}

    def fail_at_step_5(state, event):
        if isinstance(event, StepEnd) and event.step == 5:
            raise RuntimeError("boom")
        if isinstance(event, ftrain.Interrupted):
            seen["state"], seen["event"] = state, event
        return state

    with pytest.raises(RuntimeError, match="boom"):
        ftrain.fit(ftrain.testing.toy_state(), batches, [fail_at_step_5], max_epochs=1,
                   log_every_n_steps=2)  # fmt: skip
    state, event = seen["state"], seen["event"]
    assert event.reason == "exception" and str(event.error) == "boom"
    # Intervals closed at steps 2 and 4; batch 5 was still open: folded in, 5 batches of 4.
    assert state.epoch_batch == 5 and state.epoch_totals["loss"][1] == 20.0

    straight = ftrain.testing.toy_state()
    losses = []
    for b in batches[:5]:
        straight, metrics = ftrain.train_step(straight, b)
        losses.append(float(metrics["loss"]))
    assert state.epoch_totals["loss"][0] == pytest.approx(4 * sum(losses), rel=1e-12)


def test_an_interval_that_cannot_be_summed_on_an_exception_warns(tiny_state, batch):
    def bad_metrics(state, b):
        state, _ = ftrain.train_step(state, b)
        return state, {"loss": torch.ones(2)}  # not a scalar: cannot be summed

    def fail(state, event):
        if isinstance(event, StepEnd):
            raise RuntimeError("boom")
        return state

    with pytest.warns(UserWarning, match="could not be summed"), pytest.raises(RuntimeError):
        ftrain.fit(tiny_state, [batch], [fail], max_epochs=1, step_fn=bad_metrics)


def test_two_callbacks_with_one_memory_name_are_refused_before_training(tiny_state, batch):
    loss = ftrain.callbacks.EarlyStopping(monitor="val_loss")
    acc = ftrain.callbacks.EarlyStopping(monitor="val_acc")
    with pytest.raises(ValueError, match=r"callback_state\['early_stopping'\].*`name=`") as info:
        ftrain.fit(tiny_state, [batch], [loss, ftrain.every(2, acc)], max_epochs=1)
    assert "val_loss" in str(info.value) and "val_acc" in str(info.value)
    assert tiny_state.is_live and tiny_state.step == 0
    named = ftrain.callbacks.EarlyStopping(monitor="val_loss", patience=1, name="stop_fast")
    with pytest.raises(ValueError, match="two Checkpoint callbacks"):
        ftrain.chain(ftrain.callbacks.Checkpoint("a"), ftrain.callbacks.Checkpoint("b"))
    state, _ = ftrain.fit(tiny_state, ([batch], [batch]), [loss, named], max_epochs=1)
    assert {"early_stopping", "stop_fast"} <= set(state.callback_state)


def test_a_callback_and_user_state_claiming_one_name_are_refused(tiny_state, batch):
    state = tiny_state.replace(callback_state={"timer": {"started": "yesterday"}})
    with pytest.raises(ValueError, match=r"TimerState in `state.callback_state\['timer'\]`.*dict"):
        ftrain.fit(state, [batch], [ftrain.callbacks.Timer(max_time=60)], max_epochs=1)
    renamed = ftrain.callbacks.Timer(max_time=60, name="wall_clock")
    state, _ = ftrain.fit(state, [batch], [renamed], max_epochs=1)
    assert state.callback_state["timer"] == {"started": "yesterday"}
