import pytest
import torch
from helpers import params
from torch import nn

import ftrain


def test_train_step_advances_step_and_changes_params(tiny_state, batch):
    before = params(tiny_state)
    state, metrics = ftrain.train_step(tiny_state, batch)
    assert state.step == 1 and state.micro_step == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, params(state), strict=True))
    assert set(metrics) == {"loss"}
    assert metrics["loss"].ndim == 0 and not metrics["loss"].requires_grad
    assert all(p.grad is None for p in state.model.parameters())


def test_same_state_and_batch_give_identical_results_with_dropout(batch):
    state = ftrain.testing.toy_state(dropout=0.5)
    twin = ftrain.fork(state)
    torch.manual_seed(123)  # the global RNG must not matter
    a, ma = ftrain.train_step(state, batch)
    torch.manual_seed(999)
    b, mb = ftrain.train_step(twin, batch)
    assert torch.equal(ma["loss"], mb["loss"])
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_dropout_masks_differ_between_steps():
    model = nn.Dropout(0.5)
    seen = []

    def loss_fn(m, batch):
        out = m(batch)
        seen.append(out.detach().clone())
        return (out * w).sum()

    w = nn.Parameter(torch.ones(64))
    holder = nn.Module()
    holder.drop, holder.w = model, w
    state = ftrain.TrainState.create(
        model=holder,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.0),
        loss_fn=lambda m, b: loss_fn(m.drop, b),
    )
    x = torch.ones(64)
    state, _ = ftrain.train_step(state, x)
    state, _ = ftrain.train_step(state, x)
    assert not torch.equal(seen[0], seen[1])


def test_forward_backward_then_apply_gradients_equals_train_step(batch):
    a = ftrain.testing.toy_state()
    b = ftrain.fork(a)
    a, ma = ftrain.train_step(a, batch)
    b, mb = ftrain.forward_backward(b, batch)
    assert b.micro_step == 1 and b.step == 0
    b = ftrain.apply_gradients(b)
    assert b.step == 1 and torch.equal(ma["loss"], mb["loss"])
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_apply_gradients_without_gradients_is_an_error(tiny_state):
    with pytest.raises(ValueError, match="call `forward_backward"):
        ftrain.apply_gradients(tiny_state)


def test_scheduler_steps_per_optimizer_step(batch):
    state = ftrain.TrainState.create(
        model=nn.Linear(2, 3),
        optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
        loss_fn=ftrain.supervised(nn.MSELoss()),
        scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.1),
    )
    lrs = []
    for _ in range(4):
        state, _ = ftrain.train_step(state, batch)
        lrs.append(state.lr)
    assert lrs == pytest.approx([1.0, 0.1, 0.1, 0.01])


def test_eval_step_is_pure_and_restores_training_flags(batch):
    state = ftrain.testing.toy_state(dropout=0.5)
    state.model[0].eval()  # a user-frozen submodule must stay in eval mode
    before = params(state)
    m1 = ftrain.eval_step(state, batch)
    m2 = ftrain.eval_step(state, batch)
    assert torch.equal(m1["loss"], m2["loss"])
    assert state.is_live and state.step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, params(state), strict=True))
    assert state.model.training and not state.model[0].training


def test_metrics_stay_on_device_and_nothing_syncs(monkeypatch, batch):
    state = ftrain.testing.toy_state()
    calls = []
    for name in ("item", "tolist", "cpu", "__float__", "numpy"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(
            torch.Tensor,
            name,
            lambda self, *a, _n=name, _o=original, **k: (calls.append(_n), _o(self, *a, **k))[1],
        )
    for _ in range(3):
        state, metrics = ftrain.train_step(state, batch)
    metrics = ftrain.eval_step(state, batch)
    assert calls == []
    assert all(isinstance(v, torch.Tensor) for v in metrics.values())


def test_supervised_reports_accuracy_for_classification():
    model = nn.Linear(4, 3)
    loss_fn = ftrain.supervised(nn.CrossEntropyLoss())
    loss, metrics = loss_fn(model, (torch.randn(8, 4), torch.randint(0, 3, (8,))))
    assert loss.ndim == 0 and 0.0 <= float(metrics["acc"]) <= 1.0
    assert torch.is_tensor(
        ftrain.supervised(nn.MSELoss())(model, (torch.randn(2, 4), torch.randn(2, 3)))
    )
    with pytest.raises(TypeError, match=r"pair \(inputs, targets\)"):
        loss_fn(model, {"x": torch.randn(2, 4)})
    with pytest.raises(TypeError, match="`criterion` must be a callable"):
        ftrain.supervised("ce")


@pytest.mark.parametrize(
    ("loss_fn", "error", "match"),
    [
        (lambda m, b: m(b[0]), ValueError, r"scalar loss \(got a tensor of shape \(4, 3\)\)"),
        (lambda m, b: 1.0, TypeError, r"\(got float\)"),
        (lambda m, b: m(b[0]).sum().detach(), ValueError, "does not require grad"),
        (lambda m, b: (m(b[0]).sum(), 3), TypeError, "metrics a dict"),
    ],
)
def test_bad_loss_values_get_clear_errors(loss_fn, error, match, batch):
    state = ftrain.TrainState.create(
        model=nn.Linear(2, 3), optimizer=lambda p: torch.optim.SGD(p, 0.1), loss_fn=loss_fn
    )
    with pytest.raises(error, match=match):
        ftrain.train_step(state, batch)
    assert state.is_live  # the failed step consumed nothing
