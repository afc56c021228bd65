"""ftrain.testing: the kit for users' own tests passes good code and catches the classic bugs."""

import pytest
import torch
from torch import nn

import ftrain
from ftrain import testing
from ftrain.testing import toy_batch, toy_state


def test_good_state_passes_every_check():
    state, batch = toy_state(dropout=0.3), toy_batch()
    testing.assert_step_changes_params(state, batch)
    first, last = testing.assert_overfits(state, batch, steps=60)
    assert last < first
    testing.assert_no_param_change(ftrain.eval_step, state, batch)
    testing.assert_pure_step(state, batch)
    assert testing.find_unused_parameters(state, batch) == []
    assert state.is_live and state.step == 0  # every check worked on forks


class _TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(2, 3), nn.Linear(2, 3)

    def forward(self, x):
        return self.used(x)


def _state(model, **kw):
    return ftrain.TrainState.create(
        model=model,
        optimizer=lambda p: torch.optim.SGD(p, lr=kw.get("lr", 0.1)),
        loss_fn=kw.get("loss_fn", ftrain.supervised(nn.MSELoss())),
    )


def test_unused_parameters_are_found_and_fail_the_change_check():
    state = _state(_TwoHeads())
    assert testing.find_unused_parameters(state, toy_batch()) == ["unused.weight", "unused.bias"]
    with pytest.raises(AssertionError, match="did not change.*unused.bias, unused.weight"):
        testing.assert_step_changes_params(state, toy_batch())
    testing.assert_step_changes_params(state, toy_batch(), allow=["unused.weight", "unused.bias"])


def test_a_model_that_cannot_learn_fails_overfit():
    with pytest.raises(AssertionError, match="did not fall below"):
        testing.assert_overfits(_state(nn.Linear(2, 3), lr=0.0), toy_batch(), steps=5)


def test_hidden_global_randomness_fails_the_purity_check():
    def noisy(model, batch):
        x, y = batch
        noise = torch.randn(1, generator=gen)  # a private generator the state does not control
        return nn.functional.mse_loss(model(x) + noise, y)

    gen = torch.Generator().manual_seed(0)
    with pytest.raises(AssertionError, match="different results"):
        testing.assert_pure_step(_state(nn.Linear(2, 3), loss_fn=noisy), toy_batch())


def test_a_function_that_changes_weights_fails_no_param_change():
    def sneaky(state, batch):
        with torch.no_grad():
            next(state.model.parameters()).add_(1.0)

    with pytest.raises(AssertionError, match="sneaky changed: weight"):
        testing.assert_no_param_change(sneaky, toy_state(), toy_batch())
