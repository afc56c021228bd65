from collections import namedtuple

import numpy as np
import pytest
import torch

import ftrain

Pair = namedtuple("Pair", "x y")


def test_move_handles_any_nesting_and_leaves_other_leaves_alone():
    batch = {"a": (torch.ones(2), [torch.zeros(3), "tag"]), "b": Pair(torch.ones(1), 4), "c": None}
    moved = ftrain.move(batch, torch.device("meta"))
    assert moved["a"][0].device.type == "meta" and moved["a"][1][0].device.type == "meta"
    assert moved["a"][1][1] == "tag" and moved["c"] is None
    assert isinstance(moved["b"], Pair) and moved["b"].x.is_meta and moved["b"].y == 4


def test_move_returns_tensors_already_there_untouched():
    x = torch.ones(2)
    assert ftrain.move((x,), torch.device("cpu"))[0] is x


def test_move_names_the_leaf_it_cannot_move():
    with pytest.raises(TypeError, match=r"batch\[1\]\['y'\] is a ndarray.*torch.as_tensor"):
        ftrain.move((torch.ones(1), {"y": np.ones(2)}), torch.device("cpu"))


def test_batch_size_is_the_leading_dimension_of_the_first_tensor():
    assert ftrain.batch_size({"x": torch.ones(5, 2), "y": torch.ones(3)}) == 5
    assert ftrain.batch_size(("text", torch.ones(7))) == 7
    with pytest.raises(ValueError, match="Report a count from loss_fn"):
        ftrain.batch_size(("text", 3))


def test_train_step_moves_the_batch_to_the_state_device(tiny_state):
    x, y = ftrain.testing.toy_batch()
    state, metrics = ftrain.train_step(tiny_state, (x, y))
    assert metrics["loss"].device == state.device
