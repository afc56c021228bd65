import attrs
import pytest
import torch
from torch import nn

import ftrain
from ftrain import StaleStateError, TrainState


def _loss(model, batch):
    return model(batch[0]).sum()


def test_create_sets_counters_and_keeps_model_where_it_is():
    model = nn.Linear(2, 1)
    state = TrainState.create(
        model=model, optimizer=torch.optim.SGD(model.parameters(), 0.1), loss_fn=_loss, seed=7
    )
    assert (state.step, state.epoch, state.epoch_batch, state.micro_step) == (0, 0, 0, 0)
    assert state.seed == 7 and state.strategy == ftrain.Unplaced()
    assert state.device == torch.device("cpu") and state.model is model and state.is_live


def test_create_accepts_optimizer_and_scheduler_factories():
    state = TrainState.create(
        model=nn.Linear(2, 1),
        optimizer=lambda p: torch.optim.AdamW(p, lr=0.01),
        loss_fn=_loss,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 3),
    )
    assert isinstance(state.optimizer, torch.optim.AdamW)
    assert state.scheduler.optimizer is state.optimizer


def test_record_is_frozen_and_eq_is_identity(tiny_state):
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        tiny_state.step = 3
    assert tiny_state == tiny_state and tiny_state != tiny_state.replace()


def test_replace_validates_and_stays_live_with_its_source(tiny_state, batch):
    other = tiny_state.replace(seed=3)
    assert other.seed == 3 and other.model is tiny_state.model
    assert other.is_live and tiny_state.is_live
    with pytest.raises(TypeError, match="step"):
        tiny_state.replace(step="3")
    with pytest.raises(ValueError, match="step"):
        tiny_state.replace(step=-1)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        tiny_state.replace(not_a_field=1)
    # Both records share the weights: advancing one makes both stale at once.
    ftrain.train_step(other, batch)
    assert not tiny_state.is_live and not other.is_live


def test_stale_state_error_names_the_consumer_and_the_fix(tiny_state, batch):
    new, _ = ftrain.train_step(tiny_state, batch)
    with pytest.raises(StaleStateError, match=r"advanced by `train_step` at step 0.*ftrain\.fork"):
        ftrain.train_step(tiny_state, batch)
    for fn in (ftrain.eval_step, ftrain.forward_backward):
        with pytest.raises(StaleStateError, match=fn.__name__):
            fn(tiny_state, batch)
    with pytest.raises(StaleStateError):
        ftrain.fit(tiny_state, [batch], max_epochs=1)
    assert new.is_live and "stale" in repr(tiny_state)


def test_fork_is_independent(batch):
    state = ftrain.testing.toy_state(dropout=0.2)
    state, _ = ftrain.train_step(state, batch)
    copy = ftrain.fork(state)
    assert copy.model is not state.model and copy.optimizer is not state.optimizer
    for p, q in zip(copy.model.parameters(), state.model.parameters(), strict=True):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    a, ma = ftrain.train_step(state, batch)
    b, mb = ftrain.train_step(copy, batch)
    assert torch.equal(ma["loss"], mb["loss"])
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)
    # The fork's optimizer drives the fork's parameters only.
    assert all(
        any(p is q for q in b.model.parameters()) for p in b.optimizer.param_groups[0]["params"]
    )


def test_fork_keeps_the_scheduler_bound_to_the_new_optimizer():
    from helpers import make_classifier

    state = make_classifier()
    copy = ftrain.fork(state)
    assert copy.scheduler.optimizer is copy.optimizer is not state.optimizer


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"model": "net"}, TypeError, r"`model` must be a torch.nn.Module \(got str 'net'\)"),
        ({"optimizer": 3}, TypeError, r"`optimizer` must be a torch.optim.Optimizer or a factory"),
        ({"optimizer": lambda p: None}, TypeError, "factory must return"),
        ({"loss_fn": "mse"}, TypeError, r"`loss_fn` must be a callable"),
        ({"loss_fn": lambda batch: 0}, ftrain.CallbackSignatureError, "two positional"),
        ({"seed": 1.5}, TypeError, r"`seed` must be an int"),
        ({"scheduler": 5}, TypeError, r"`scheduler` must be an LR scheduler"),
        ({"scheduler_interval": "batch"}, ValueError, "scheduler_interval"),
    ],
)
def test_create_rejects_bad_arguments(kwargs, error, match):
    args = {
        "model": nn.Linear(2, 1),
        "optimizer": lambda p: torch.optim.SGD(p, lr=0.1),
        "loss_fn": _loss,
        **kwargs,
    }
    with pytest.raises(error, match=match):
        TrainState.create(**args)


def test_create_rejects_an_optimizer_over_other_parameters():
    model, other = nn.Linear(2, 1), nn.Linear(2, 1)
    with pytest.raises(ValueError, match=r"2 of its parameters are not the model's"):
        TrainState.create(
            model=model, optimizer=torch.optim.SGD(other.parameters(), 0.1), loss_fn=_loss
        )


def test_create_rejects_a_scheduler_over_another_optimizer():
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), 0.1)
    other = torch.optim.SGD(model.parameters(), 0.1)
    with pytest.raises(ValueError, match="another optimizer"):
        TrainState.create(
            model=model,
            optimizer=opt,
            loss_fn=_loss,
            scheduler=torch.optim.lr_scheduler.StepLR(other, 2),
        )


def test_a_step_result_passed_as_state_gets_a_helpful_error(tiny_state, batch):
    result = ftrain.train_step(tiny_state, batch)
    with pytest.raises(TypeError, match="unpack it"):
        ftrain.train_step(result, batch)
