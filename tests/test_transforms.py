import attrs
import pytest
import torch
from helpers import params

import ftrain
from ftrain.testing import toy_batch, toy_state


def test_default_step_equals_train_step():
    a, b = toy_state(), toy_state()
    a, ma = ftrain.train_step(a, toy_batch())
    b, mb = ftrain.Step()(b, toy_batch())
    assert b.step == 1 and torch.equal(ma["loss"], mb["loss"])
    assert all(torch.equal(p, q) for p, q in zip(params(a), params(b), strict=True))


def test_grad_clip_by_norm_reports_the_norm_and_bounds_the_update():
    state = toy_state(lr=1.0)
    before = params(state)
    step = ftrain.with_grad_clip(max_norm=1e-3)
    state, metrics = step(state, toy_batch())
    assert metrics["grad_norm"] > 1e-3  # reported before clipping, as a device tensor
    delta = torch.cat([(a - b).flatten() for a, b in zip(params(state), before, strict=True)])
    assert delta.norm() == pytest.approx(1e-3, rel=1e-4)  # SGD lr=1: update norm == clipped norm


def test_grad_clip_by_value():
    state = toy_state(lr=1.0)
    before = params(state)
    state, metrics = ftrain.with_grad_clip(max_value=1e-4)(state, toy_batch())
    assert "grad_norm" not in metrics
    for a, b in zip(params(state), before, strict=True):
        assert (a - b).abs().max() <= 1e-4 * 1.01  # float32 rounding of the subtraction


def test_accumulation_of_k_half_batches_equals_one_full_batch():
    x, y = toy_batch(n=8)
    full = toy_state()
    full, _ = ftrain.train_step(full, (x, y))
    acc = toy_state()
    step = ftrain.with_accumulation(every=2)
    acc, m1 = step(acc, (x[:4], y[:4]))
    assert acc.step == 0 and acc.micro_step == 1
    acc, m2 = step(acc, (x[4:], y[4:]))
    assert acc.step == 1 and acc.micro_step == 0
    for p, q in zip(params(full), params(acc), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_short_last_group_uses_the_mean_of_its_batches():
    batches = [toy_batch(seed=i) for i in range(3)]  # groups of 2 and 1
    state, _ = ftrain.train_epoch(toy_state(), batches, step_fn=ftrain.with_accumulation(every=2))
    assert state.step == 2 and state.micro_step == 0 and state.epoch == 1
    ref = toy_state()
    ref, _ = ftrain.with_accumulation(every=2)(ref, batches[0])
    ref, _ = ftrain.with_accumulation(every=2)(ref, batches[1])
    ref, _ = ftrain.train_step(ref, batches[2])  # a lone batch at full weight
    for p, q in zip(params(state), params(ref), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_transforms_compose_in_any_order_and_with_a_users_own():
    seen = []

    def tagging(step):
        inner = step.apply_gradients

        def apply(state, metrics):
            seen.append(state.micro_step)
            return inner(state, metrics)

        return attrs.evolve(step, apply_gradients=apply)

    a = ftrain.with_accumulation(ftrain.with_grad_clip(max_norm=1.0), every=2)
    b = ftrain.with_grad_clip(ftrain.with_accumulation(every=2), max_norm=1.0)
    c = tagging(a)
    sa, sb, sc = toy_state(), toy_state(), toy_state()
    for i in range(4):
        sa, ma = a(sa, toy_batch(seed=i))
        sb, mb = b(sb, toy_batch(seed=i))
        sc, mc = c(sc, toy_batch(seed=i))
    assert sa.step == sb.step == sc.step == 2 and seen == [2, 2]
    assert set(ma) == set(mb) == {"loss", "grad_norm"}
    for p, q in zip(params(sa), params(sb), strict=True):
        assert torch.equal(p, q)


def test_fit_counts_optimizer_steps_under_accumulation():
    batches = [toy_batch(seed=i) for i in range(6)]
    events = []
    grab = ftrain.on(ftrain.IntervalEnd, lambda s, e: (events.append(e.step), s)[1])
    state, history = ftrain.fit(
        toy_state(),
        batches,
        [grab],
        max_epochs=2,
        step_fn=ftrain.with_accumulation(every=3),
        log_every_n_steps=1,
    )
    assert state.step == 4 and history[-1]["step"] == 4 and events == [1, 2, 3, 4]


def test_transform_errors():
    with pytest.raises(ValueError, match="needs `max_norm` or `max_value`"):
        ftrain.with_grad_clip()
    with pytest.raises(ValueError, match=r"`max_norm` must be a finite number > 0 \(got -1\)"):
        ftrain.with_grad_clip(max_norm=-1)
    with pytest.raises(TypeError, match=r"`max_value` must be a number > 0 \(got str '1'\)"):
        ftrain.with_grad_clip(max_value="1")
    with pytest.raises(ValueError, match=r"`every` must be an int >= 1 \(got 0\)"):
        ftrain.with_accumulation(every=0)
    with pytest.raises(TypeError, match=r"`every` must be an int >= 1 \(got float 2.0\)"):
        ftrain.with_accumulation(every=2.0)
    with pytest.raises(TypeError, match="must be a ftrain.Step"):
        ftrain.with_grad_clip(lambda s, b: (s, {}), max_norm=1.0)


def test_skip_nonfinite_leaves_params_and_optimizer_untouched():
    import math

    state = ftrain.testing.toy_state()
    step = ftrain.with_skip_nonfinite()
    x, y = toy_batch()
    state, m = step(state, (x, y))
    before, opt = params(state), [dict(v) for v in state.optimizer.state.values()]
    state, m = step(state, (x, torch.full_like(y, math.nan)))
    assert state.step == 1 and float(m["skipped"]) == 1.0 and m["count"] == 0
    assert all(torch.equal(a, b) for a, b in zip(before, params(state), strict=True))
    assert [dict(v) for v in state.optimizer.state.values()] == opt
    bad = [(x, y), (x, torch.full_like(y, math.nan)), (x, y)]
    state, history = ftrain.fit(toy_state(), bad, step_fn=step, max_epochs=1, log_every_n_steps=1)
    assert state.step == 2 and math.isfinite(history[0]["train_loss"])
    assert history[0]["train_skipped"] == 0.0  # skipped batches are left out of the averages


def test_train_epoch_calls_finish_epoch_of_an_epoch_aware_step():
    assert isinstance(ftrain.with_accumulation(every=2), ftrain.EpochAwareStep)
    assert not isinstance(ftrain.train_step, ftrain.EpochAwareStep)
    finished = []

    class Counting:
        def __call__(self, state, batch):
            return ftrain.train_step(state, batch)

        def finish_epoch(self, state):
            finished.append(state.step)
            return state

    batches = [ftrain.testing.toy_batch(seed=i) for i in range(3)]
    state, _ = ftrain.fit(toy_state(), batches, step_fn=Counting(), max_epochs=2)
    assert finished == [3, 6] and state.step == 6
    ftrain.train_epoch(state, batches, step_fn=Counting(), max_steps=7)  # stopped mid-epoch
    assert finished == [3, 6]
