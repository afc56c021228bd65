"""What a loss function is given (`StepContext`) and may return (`Loss`): carry, extras, stream."""

import pytest
import torch
from torch import nn

import ftrain


def _state(loss_fn, **kwargs):
    torch.manual_seed(0)
    return ftrain.TrainState.create(
        model=nn.Linear(2, 1),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        loss_fn=loss_fn,
        **kwargs,
    )


def _batches(n):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 2, generator=g), torch.randn(4, 1, generator=g)) for _ in range(n)]


def test_a_three_argument_loss_gets_the_step_context():
    seen = []

    def loss_fn(model, batch, ctx):
        seen.append(ctx)
        x, y = batch
        return ((model(x) - y) ** 2).mean()

    state = _state(loss_fn, extras={"k": 3})
    state, _ = ftrain.train_step(state, _batches(1)[0])
    ftrain.eval_step(state, _batches(1)[0])
    train, evaluation = seen
    assert isinstance(train, ftrain.StepContext)
    assert (train.step, train.phase, train.training, dict(train.extras)) == (
        0,
        None,
        True,
        {"k": 3},
    )
    assert (evaluation.step, evaluation.training) == (1, False)


def test_the_carry_is_threaded_detached_and_made_anew_each_epoch_and_evaluation():
    inits, carries = [], []

    def carry_init(model, batch):
        inits.append(len(batch[0]))
        return torch.zeros(1)

    def loss_fn(model, batch, ctx):
        x, y = batch
        carries.append(ctx.carry.clone())
        loss = ((model(x) - y) ** 2).mean()
        return ftrain.Loss(loss, carry=ctx.carry + 1 + 0 * loss)  # the carry has a graph

    state = _state(loss_fn, carry_init=carry_init)
    batches = _batches(3)
    state, _ = ftrain.train_epoch(state, batches)
    assert [float(c) for c in carries] == [0, 1, 2] and not state.carry.requires_grad
    assert float(state.carry) == 3
    metrics = ftrain.eval_epoch(state, batches)
    assert [float(c) for c in carries[3:]] == [0, 1, 2] and float(state.carry) == 3
    assert "loss" in metrics
    state, _ = ftrain.train_epoch(state, batches)
    assert [float(c) for c in carries[6:]] == [0, 1, 2] and len(inits) == 3


def test_loss_records_report_metrics_and_refuse_a_metric_named_loss():
    def loss_fn(model, batch, ctx):
        x, y = batch
        total = ((model(x) - y) ** 2).sum()
        return ftrain.Loss(total, count=len(x), reduction="sum", metrics={"mae": total.detach()})

    state = _state(loss_fn)
    x, y = _batches(1)[0]
    expected = float(((state.model(x) - y) ** 2).sum().detach() / 4)
    state, metrics = ftrain.train_step(state, (x, y))
    assert float(metrics["loss"]) == pytest.approx(expected) and metrics["count"] == 4

    bad = _state(lambda m, b: (m(b[0]).sum(), {"loss": torch.tensor(0.0)}))
    with pytest.raises(ValueError, match="reserved"):
        ftrain.train_step(bad, (x, y))


def test_the_stream_changes_the_draws_and_nothing_else():
    def loss_fn(model, batch):
        x, y = batch
        return ((nn.functional.dropout(model(x), 0.5) - y) ** 2).mean()

    batch = _batches(1)[0]
    a, ma = ftrain.train_step(_state(loss_fn), batch)
    b, mb = ftrain.train_step(_state(loss_fn), batch)
    c, mc = ftrain.train_step(_state(loss_fn, stream=1), batch)
    assert torch.equal(ma["loss"], mb["loss"]) and not torch.equal(ma["loss"], mc["loss"])
    assert c.stream == 1 and c.replace(stream=2).stream == 2


def test_a_generator_in_extras_is_forked_with_the_state():
    def loss_fn(model, batch, ctx):
        x, y = batch
        noise = torch.randn(x.shape, generator=ctx.extras["noise"])
        return ((model(x + noise) - y) ** 2).mean()

    state = _state(loss_fn, extras={"noise": torch.Generator().manual_seed(5)})
    twin = ftrain.fork(state)
    batch = _batches(1)[0]
    _, ma = ftrain.train_step(state, batch)
    _, mb = ftrain.train_step(twin, batch)
    assert torch.equal(ma["loss"], mb["loss"])


def test_single_optimizer_views_on_a_state():
    state = _state(lambda m, b: m(b[0]).sum())
    assert state.optimizers == {"": state.optimizer} and state.schedulers == {"": None}
    other = torch.optim.SGD(state.model.parameters(), lr=0.5)
    assert state.replace(optimizer=other).optimizer is other


def _counting_state():
    def loss_fn(model, batch, ctx):
        x, y = batch
        loss = ((model(x) - y) ** 2).mean()
        return ftrain.Loss(loss, carry=ctx.carry + x.sum().detach())

    return _state(loss_fn, carry_init=lambda model, batch: torch.zeros(()))


def test_the_carry_survives_save_and_load_mid_epoch(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    x, y = (torch.cat(t) for t in zip(*_batches(4), strict=True))
    batches = DataLoader(TensorDataset(x, y), batch_size=4)
    state, _ = ftrain.train_epoch(_counting_state(), batches, max_steps=2)
    path = ftrain.save(state, tmp_path / "mid.ckpt")
    restored = ftrain.load(_counting_state(), path)
    assert torch.equal(restored.carry, state.carry) and restored.epoch_batch == 2
    straight, _ = ftrain.train_epoch(state, batches)
    resumed, _ = ftrain.train_epoch(restored, batches)
    assert torch.equal(straight.carry, resumed.carry)
    ftrain.testing.assert_states_equal(straight, resumed)


def test_a_carry_saved_by_another_number_of_processes_is_refused_or_reset():
    from ftrain._checkpoint._records import restore_carry
    from ftrain._outputs import UNSET

    saved = {"world_size": 2, "ranks": [[torch.ones(1)], [torch.zeros(1)]]}
    with pytest.raises(ftrain.CheckpointError, match="reset_carry=True"):
        restore_carry(saved, _counting_state(), "x.ckpt", reset=False)
    assert restore_carry(saved, _counting_state(), "x.ckpt", reset=True) is UNSET
