"""Exact weighting: micro-batches and processes count by their samples or tokens; sums and
counts in the logs; reserved metric names."""

import pytest
import torch
from scripts.dist_worker import (
    regression_data,
    regression_state,
    sum_state,
    token_data,
    token_state,
)
from torch import nn

import ftrain
from ftrain import Loss


def _params(state):
    return [p.detach().clone() for p in state.model.parameters()]


def _close(a, b, atol=1e-6):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)


def test_micro_batches_of_6_and_1_equal_the_batch_of_7():
    x, y = regression_data()
    whole, _ = ftrain.train_step(regression_state(), (x, y))
    state = regression_state()
    state, _ = ftrain.forward_backward(state, (x[:6], y[:6]))
    state, _ = ftrain.forward_backward(state, (x[6:], y[6:]))
    state = ftrain.apply_gradients(state)
    _close(_params(state), _params(whole))
    # the same through the transform, the short batch first
    step = ftrain.with_accumulation(every=2)
    state = regression_state()
    state, _ = step(state, (x[6:], y[6:]))
    assert state.step == 0
    state, _ = step(state, (x[:6], y[:6]))
    assert state.step == 1
    _close(_params(state), _params(whole))


def test_an_uneven_last_group_of_an_epoch_is_its_own_batch():
    # 7 samples in batches of 2, 2, 2, 1 and groups of 4 batches: one short group of 7 samples
    x, y = regression_data()
    whole, _ = ftrain.train_step(regression_state(), (x, y))
    batches = [(x[i : i + 2], y[i : i + 2]) for i in range(0, 7, 2)]
    state, _ = ftrain.train_epoch(
        regression_state(), batches, step_fn=ftrain.with_accumulation(every=5)
    )
    assert state.step == 1
    _close(_params(state), _params(whole))


def test_token_mean_losses_accumulate_by_their_token_counts():
    tokens, mask = token_data()
    whole, _ = ftrain.train_step(token_state(), (tokens, mask))
    state = token_state()
    for part in ((0, 1), (1, 3), (3, 4)):
        sl = slice(*part)
        state, _ = ftrain.forward_backward(state, (tokens[sl], mask[sl]))
    state = ftrain.apply_gradients(state)
    _close(_params(state), _params(whole))
    # equal weights per micro-batch (the old 1/k scaling) would differ clearly
    naive = token_state()
    for part in ((0, 1), (1, 3), (3, 4)):
        sl = slice(*part)
        naive, _ = ftrain.forward_backward(naive, (tokens[sl], mask[sl]), loss_scale=1 / 3)
    with pytest.raises(AssertionError):
        _close(_params(ftrain.apply_gradients(naive)), _params(whole), atol=1e-4)


def test_sum_losses_accumulate_as_sums_and_log_per_sample():
    x, y = regression_data()
    whole, metrics = ftrain.train_step(sum_state(), (x, y))
    with torch.no_grad():
        per_sample = ((sum_state().model(x) - y) ** 2).mean()
    torch.testing.assert_close(metrics["loss"], per_sample)
    state = sum_state()
    state, _ = ftrain.forward_backward(state, (x[:6], y[:6]))
    state, _ = ftrain.forward_backward(state, (x[6:], y[6:]))
    _close(_params(ftrain.apply_gradients(state)), _params(whole))
    # epoch means are per sample, weighted by the counts
    logs = ftrain.eval_epoch(sum_state(), [(x[:6], y[:6]), (x[6:], y[6:])])
    assert logs["loss"] == pytest.approx(float(per_sample), rel=1e-6)
    _, train_logs = ftrain.train_epoch(sum_state(), [(x, y)])
    assert train_logs["train_loss"] == pytest.approx(float(per_sample), rel=1e-6)


def test_mean_and_sum_losses_in_one_group_are_refused():
    x, y = regression_data()
    calls = []

    def flip(m, b):
        calls.append(1)
        loss = nn.functional.mse_loss(m(b[0]), b[1])
        return Loss(loss * len(b[0]), count=len(b[0]), reduction="sum") if len(calls) > 1 else loss

    state = regression_state().replace(loss_fn=flip)
    state, _ = ftrain.forward_backward(state, (x[:3], y[:3]))
    with pytest.raises(ValueError, match="cannot be accumulated together"):
        ftrain.forward_backward(state, (x[3:], y[3:]))


@pytest.mark.parametrize("where", ["train", "eval"])
def test_a_metric_named_loss_is_refused_in_the_epoch_functions(where):
    def sneaky(m, b):
        loss = nn.functional.mse_loss(m(b[0]), b[1])
        return loss, {"loss": loss.detach() * 0}

    state = regression_state().replace(loss_fn=sneaky)
    with pytest.raises(ValueError, match="reserved"):
        if where == "train":
            ftrain.train_epoch(state, [regression_data()])
        else:
            ftrain.eval_epoch(state, [regression_data()])


def test_epoch_means_weight_batches_by_the_count_the_loss_reports():
    def counted(m, b):
        loss = nn.functional.mse_loss(m(b[0]), b[1])
        return Loss(loss, metrics={"mark": torch.tensor(float(len(b[0])))}, count=10 * len(b[0]))

    state = regression_state().replace(loss_fn=counted)
    x, y = regression_data()
    logs = ftrain.eval_epoch(state, [(x[:6], y[:6]), (x[6:], y[6:])])
    assert logs["mark"] == pytest.approx((6 * 60 + 1 * 10) / 70)


def _two_phase_state():
    torch.manual_seed(0)

    def part_loss(name):
        return lambda model, b: nn.functional.mse_loss(model[name](b[0]), b[1])

    return ftrain.TrainState.create(
        model={"a": nn.Linear(5, 1), "b": nn.Linear(5, 1)},
        phases=[
            ftrain.Phase(
                name,
                optimizes=name,
                optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
                loss_fn=part_loss(name),
            )
            for name in ("a", "b")
        ],
    )


def test_each_phase_accumulates_exactly():
    x, y = regression_data()
    whole, _ = ftrain.train_step(_two_phase_state(), (x, y))
    step = ftrain.with_accumulation(every=2)
    state, _ = step(_two_phase_state(), (x[:6], y[:6]))
    state, _ = step(state, (x[6:], y[6:]))
    assert state.step == 1
    _close(_params(state), _params(whole))
