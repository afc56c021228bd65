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
