import attrs
import pytest
import torch

import ftrain
from ftrain import PlacementError, SingleDevice


def test_place_records_strategy_and_device(tiny_state, batch):
    state = ftrain.place(tiny_state, "cpu")
    assert state.strategy == SingleDevice(device=torch.device("cpu"))
    assert state.device == torch.device("cpu") and state.world_size == 1 and state.rank == 0
    state, _ = ftrain.train_step(state, batch)
    assert state.strategy == SingleDevice(device=torch.device("cpu"))


def test_auto_picks_an_available_device(tiny_state):
    state = ftrain.place(tiny_state, SingleDevice())
    expected = (
        "cuda"
        if torch.cuda.is_available()
        else "mps"
        if torch.backends.mps.is_available()
        else "cpu"
    )
    assert state.device.type == expected


def test_place_consumes_its_input(tiny_state):
    ftrain.place(tiny_state, "cpu")
    with pytest.raises(ftrain.StaleStateError, match="`place`"):
        ftrain.train_step(tiny_state, ftrain.testing.toy_batch())


def test_placing_twice_is_an_error_with_the_fix(tiny_state):
    state = ftrain.place(tiny_state, "cpu")
    with pytest.raises(PlacementError, match="already placed.*placed once"):
        ftrain.place(state, "cpu")


@pytest.mark.parametrize(
    ("strategy", "error", "match"),
    [
        ("gpu0", ValueError, r"`device` must be 'auto' or a torch device .*\(got 'gpu0'\)"),
        (42, TypeError, r"`strategy` must be a Strategy"),
    ],
)
def test_bad_strategies(tiny_state, strategy, error, match):
    with pytest.raises(error, match=match):
        ftrain.place(tiny_state, strategy)
    assert tiny_state.is_live


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_cuda_is_a_placement_error(tiny_state):
    with pytest.raises(PlacementError, match="CUDA is not available"):
        ftrain.place(tiny_state, "cuda")


def test_bad_precision():
    with pytest.raises(ValueError, match=r"`precision` must be one of .*\(got 'fp8'\)"):
        SingleDevice("cpu", precision="fp8")


def test_bf16_mixed_autocasts_the_forward_on_cpu(batch):
    seen = []
    state = ftrain.TrainState.create(
        model=torch.nn.Linear(2, 3),
        optimizer=lambda p: torch.optim.SGD(p, 0.1),
        loss_fn=lambda m, b: (seen.append(m(b[0]).dtype), m(b[0]).float().pow(2).mean())[1],
    )
    state = ftrain.place(state, SingleDevice("cpu", precision="bf16-mixed"))
    state, _ = ftrain.train_step(state, batch)
    assert seen == [torch.bfloat16]
    assert next(state.model.parameters()).dtype == torch.float32


def test_unplaced_state_trains_where_the_model_is(tiny_state, batch):
    state, metrics = ftrain.train_step(tiny_state, batch)
    assert state.strategy == ftrain.Unplaced() and metrics["loss"].device.type == "cpu"


def test_a_new_state_is_unplaced_and_unplaced_keeps_the_contract(tiny_state):
    strategy = tiny_state.strategy
    assert strategy == ftrain.Unplaced() and ftrain.strategies.Unplaced is ftrain.Unplaced
    assert isinstance(strategy, ftrain.Strategy)
    assert (
        (strategy.world_size, strategy.rank) == (tiny_state.world_size, tiny_state.rank) == (1, 0)
    )
    assert not strategy.lockstep_eval and not strategy.sharded_checkpoint
    assert strategy.rewrap(tiny_state.model) is None
    assert strategy.eval_module(tiny_state) is tiny_state.model
    total = torch.tensor(3.0)
    assert strategy.reduce_sum(total) is total
    assert "strategy=Unplaced()" in repr(tiny_state)


def test_unplaced_and_single_device_leave_gradients_alone(tiny_state, batch):
    state, _ = ftrain.forward_backward(tiny_state, batch)
    grads = [p.grad.clone() for p in state.model.parameters()]
    for strategy in (ftrain.Unplaced(), SingleDevice("cpu")):
        strategy.sync_gradients(state.model.parameters())
        for p, g in zip(state.model.parameters(), grads, strict=True):
            assert torch.equal(p.grad, g)


def test_distributed_strategies_take_rank_and_world_size_from_placement():
    for cls in (ftrain.DDP, ftrain.FSDP):
        assert (cls().rank, cls().world_size) == (0, 1)
        with pytest.raises(TypeError, match="rank"):
            cls(rank=1)
    assert not ftrain.FSDP().sharded_checkpoint  # one process: a checkpoint is one file


class _Counting(torch.nn.Module):
    """A transparent wrapper that counts its forward calls."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


@attrs.frozen
class _Wrapping:
    """A third-party strategy written against `ftrain.Strategy` alone: it wraps the model."""

    world_size: int = 1
    rank: int = 0
    lockstep_eval: bool = False
    backward_inputs: bool = True
    sharded_checkpoint: bool = False

    def setup(self, state):
        return state.replace(strategy=self, wrapped=self.rewrap(state.model))

    def reduce_sum(self, tensor):
        return tensor

    def sync_gradients(self, parameters):
        pass

    def rewrap(self, model):
        return _Counting(model)

    def eval_module(self, state):
        return state.model  # evaluation bypasses the wrapper


def test_a_strategy_of_your_own_works_with_place_fork_and_fit():
    data = [ftrain.testing.toy_batch(seed=i) for i in range(4)]
    reference, ref_history = ftrain.fit(ftrain.testing.toy_state(), (data, data), max_epochs=2)
    state = ftrain.place(ftrain.testing.toy_state(), _Wrapping())
    assert isinstance(state.strategy, ftrain.Strategy) and isinstance(state.wrapped, _Counting)
    copy = ftrain.fork(state)
    assert isinstance(copy.wrapped, _Counting) and copy.wrapped.model is copy.model
    state, history = ftrain.fit(state, (data, data), max_epochs=2)
    assert state.wrapped.calls == 8  # every training step, and no evaluation, went through it
    ftrain.testing.assert_states_equal(state, reference)
    assert [row["val_loss"] for row in history] == [row["val_loss"] for row in ref_history]
    with pytest.raises(PlacementError, match="already placed"):
        ftrain.place(state, _Wrapping())
