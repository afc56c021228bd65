"""EMA and SWA: averaged weights in the state, checkpointed, evaluated on by choice."""

import math

import pytest
import torch
from helpers import make_classifier, make_loaders
from torch import nn

import ftrain
from ftrain.callbacks import Checkpoint


def make_bn_state(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    return ftrain.TrainState.create(
        model=model,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
        seed=seed,
    )


def snapshots(state, step_fn, batches):
    """Train over ``batches``; the model's state dict after every step."""
    seen = []
    for batch in batches:
        state, _ = step_fn(state, batch)
        seen.append({k: v.detach().clone() for k, v in state.model.state_dict().items()})
    return state, seen


def test_ema_after_n_steps_equals_the_hand_computed_average():
    train, _ = make_loaders()
    batches = list(train)[:5]
    decay = 0.8
    state, seen = snapshots(make_bn_state(), ftrain.with_ema(decay=decay), batches)
    ema = dict(seen[0])  # the first update copies the weights
    for weights in seen[1:]:
        ema = {
            k: decay * ema[k] + (1 - decay) * w if w.is_floating_point() else w
            for k, w in weights.items()
        }
    average = state.averages["ema"]
    assert average.kind == "ema" and average.count == 5
    assert set(average.tensors) == set(ema)  # parameters and BatchNorm buffers
    for k, want in ema.items():
        torch.testing.assert_close(average.tensors[k], want, rtol=0, atol=1e-6)
    # The model itself trained on untouched.
    for k, v in state.model.state_dict().items():
        assert torch.equal(v, seen[-1][k])


def test_ema_every_n_steps_and_accumulation_average_optimizer_steps_only():
    train, _ = make_loaders()
    batches = list(train)[:6]
    step = ftrain.with_ema(ftrain.with_accumulation(every=2), decay=0.5, every=2)
    state = make_classifier(dropout=0.0)
    weights = []
    for batch in batches:
        state, _ = step(state, batch)
        if state.micro_step == 0:
            weights.append([p.detach().clone() for p in state.model.parameters()])
    assert state.step == 3 and state.averages["ema"].count == 1  # optimizer step 2 only
    for got, want in zip(state.averages["ema"].tensors.values(), weights[1], strict=False):
        assert torch.equal(got, want)


def test_swa_is_the_equal_average_from_start_every_n_steps():
    train, _ = make_loaders()
    batches = list(train)[:6]
    state, seen = snapshots(make_bn_state(), ftrain.with_swa(start=2, every=2), batches)
    averaged = [seen[1], seen[3], seen[5]]  # after steps 2, 4 and 6
    average = state.averages["swa"]
    assert average.kind == "swa" and average.count == 3
    for k, v in average.tensors.items():
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(v, seen[5][k])  # buffers: copied (update_bn recomputes them)
        else:
            want = sum(w[k] for w in averaged) / 3
            torch.testing.assert_close(v, want, rtol=0, atol=1e-6)


def test_a_skipped_step_is_not_averaged_in():
    x, y = ftrain.testing.toy_batch()
    step = ftrain.with_skip_nonfinite(ftrain.with_ema(decay=0.5))
    state, _ = step(ftrain.testing.toy_state(), (x, y))
    state, metrics = step(state, (x, torch.full_like(y, math.nan)))
    assert float(metrics["skipped"]) == 1.0 and state.averages["ema"].count == 1


def test_averages_survive_save_and_load_exactly(tmp_path):
    train, _ = make_loaders()
    state, _ = snapshots(make_bn_state(), ftrain.with_ema(decay=0.9), list(train)[:3])
    path = ftrain.save(state, tmp_path / "a.ckpt")
    restored = ftrain.load(make_bn_state(), path)
    ftrain.testing.assert_states_equal(state, restored)
    got = restored.averages["ema"]
    assert got.kind == "ema" and got.count == 3
    assert ftrain.read_checkpoint(path)["averages"]["ema"]["count"] == 3


@pytest.mark.parametrize("resume_at", [4, 8])  # mid-epoch (6 batches per epoch) and later
@pytest.mark.parametrize("transform", ["ema", "swa"])
def test_resume_with_averages_equals_the_uninterrupted_run(tmp_path, resume_at, transform):
    train, val = make_loaders()
    step = ftrain.with_ema(decay=0.9) if transform == "ema" else ftrain.with_swa(start=3, every=2)
    resumed = ftrain.testing.assert_resume_equivalent(
        make_classifier,
        (train, val),
        max_steps=14,
        resume_at=resume_at,
        path=tmp_path / "c.ckpt",
        step_fn=step,
        val_weights=("model", transform),
        log_every_n_steps=2,
    )
    assert resumed.averages[transform].count > 1


def test_evaluation_on_the_average_equals_a_model_holding_it_and_changes_nothing():
    train, val = make_loaders()
    state, _ = ftrain.fit(make_bn_state(), train, max_epochs=2, step_fn=ftrain.with_ema(decay=0.9))
    before = {k: v.clone() for k, v in state.model.state_dict().items()}
    ema_before = {k: v.clone() for k, v in state.averages["ema"].tensors.items()}
    got = ftrain.eval_epoch(state, val, weights="ema")
    holder = make_bn_state()
    holder.model.load_state_dict(ema_before)
    assert got == ftrain.eval_epoch(holder, val)
    assert got != ftrain.eval_epoch(state, val)
    for k, v in state.model.state_dict().items():
        assert torch.equal(v, before[k])
    for k, v in state.averages["ema"].tensors.items():
        assert torch.equal(v, ema_before[k])


def test_using_weights_swaps_back_after_an_exception():
    state, _ = ftrain.with_ema(decay=0.5)(ftrain.testing.toy_state(), ftrain.testing.toy_batch())
    before = [p.clone() for p in state.model.parameters()]
    with pytest.raises(RuntimeError, match="boom"), ftrain.using_weights(state, "ema"):
        raise RuntimeError("boom")
    assert all(torch.equal(a, b) for a, b in zip(before, state.model.parameters(), strict=True))


def test_fit_validates_on_the_model_and_the_average_and_checkpoints_by_either(tmp_path):
    train, val = make_loaders()
    ckpt = Checkpoint(tmp_path, monitor="val_ema_loss")
    state, history = ftrain.fit(
        make_classifier(),
        (train, val),
        [ckpt],
        max_epochs=2,
        step_fn=ftrain.with_ema(decay=0.9),
        val_weights=("model", "ema"),
    )
    assert {"val_loss", "val_ema_loss"} <= set(history[-1])
    assert history[-1]["val_loss"] != history[-1]["val_ema_loss"]
    assert ckpt.best_path(state) is not None


def test_swa_before_its_start_is_not_validated():
    train, val = make_loaders()
    _, history = ftrain.fit(
        make_classifier(),
        (train, val),
        max_epochs=2,
        step_fn=ftrain.with_swa(start=7),  # 6 steps per epoch
        val_weights=("model", "swa"),
    )
    assert "val_swa_loss" not in history[0] and "val_swa_loss" in history[1]


def test_update_bn_matches_torch_and_leaves_the_model_alone():
    train, _ = make_loaders()
    batches = list(train)
    state, _ = ftrain.fit(make_bn_state(), batches, max_epochs=1, step_fn=ftrain.with_swa(start=2))
    model_before = {k: v.clone() for k, v in state.model.state_dict().items()}
    ftrain.update_bn(state, batches)
    reference = make_bn_state().model
    reference.load_state_dict(
        {k: v for k, v in state.averages["swa"].tensors.items() if "running" not in k},
        strict=False,
    )
    torch.optim.swa_utils.update_bn([x for x, _ in batches], reference)
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(state.averages["swa"].tensors[k], v, rtol=1e-5, atol=1e-6)
    for k, v in state.model.state_dict().items():
        assert torch.equal(v, model_before[k])
    assert state.model[1].momentum == 0.1


def test_fork_copies_the_averages():
    step = ftrain.with_ema(decay=0.5)
    state, _ = step(ftrain.testing.toy_state(), ftrain.testing.toy_batch())
    copy = ftrain.fork(state)
    state, _ = step(state, ftrain.testing.toy_batch(seed=1))
    assert copy.averages["ema"].count == 1 and state.averages["ema"].count == 2
    a, b = copy.averages["ema"].tensors["weight"], state.averages["ema"].tensors["weight"]
    assert not torch.equal(a, b)


def test_clear_errors():
    state = ftrain.testing.toy_state()
    with pytest.raises(KeyError, match="no such average.*none yet"):
        ftrain.eval_epoch(state, [ftrain.testing.toy_batch()], weights="ema")
    with pytest.raises(ValueError, match=r"`decay` must be in \[0, 1\)"):
        ftrain.with_ema(decay=1.0)
    with pytest.raises(ValueError, match="`start` must be an int >= 1"):
        ftrain.with_swa(start=0)
    state, _ = ftrain.with_ema(name="avg")(state, ftrain.testing.toy_batch())
    with pytest.raises(ValueError, match="of kind 'ema', not 'swa'"):
        swa = ftrain.with_swa(start=1, name="avg")
        for seed in range(2):
            state, _ = swa(state, ftrain.testing.toy_batch(seed=seed))
    with pytest.raises(TypeError, match="`val_weights` must be"):
        ftrain.fit(
            ftrain.testing.toy_state(), [ftrain.testing.toy_batch()], max_epochs=1, val_weights=[1]
        )


def test_place_refuses_a_state_holding_averages():
    state, _ = ftrain.with_ema()(ftrain.testing.toy_state(), ftrain.testing.toy_batch())
    with pytest.raises(ftrain.PlacementError, match=r"averaged weights \(ema\).*Place the state"):
        ftrain.place(state, "cpu")
