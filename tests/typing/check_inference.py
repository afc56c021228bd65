"""How users' code type-checks against ftrain (checked by mypy in CI, never run by pytest)."""

from typing import Any

import torch
from torch import nn
from typing_extensions import assert_type

import ftrain

state = ftrain.TrainState.create(
    model=nn.Linear(2, 1),
    optimizer=lambda params: torch.optim.SGD(params, lr=0.1),
    loss_fn=ftrain.supervised(nn.MSELoss()),
)
batch = (torch.ones(4, 2), torch.zeros(4, 1))

state, metrics = ftrain.train_step(state, batch)
assert_type(state, ftrain.TrainState)
assert_type(metrics["loss"], torch.Tensor)

state, metrics = ftrain.forward_backward(state, batch)
state = ftrain.apply_gradients(state)
assert_type(ftrain.eval_step(state, batch), dict[str, torch.Tensor])

state, logs = ftrain.train_epoch(state, [batch])
assert_type(logs, dict[str, float])
assert_type(ftrain.eval_epoch(state, [batch]), dict[str, float])

state, history = ftrain.fit(state, [batch], max_epochs=1)
assert_type(history, list[dict[str, Any]])

placed = ftrain.place(state, ftrain.SingleDevice("cpu"))
assert_type(placed, ftrain.TrainState)
assert_type(ftrain.fork(placed), ftrain.TrainState)

step = ftrain.with_accumulation(ftrain.with_grad_clip(max_norm=1.0), every=2)
assert_type(step, ftrain.Step)
placed, metrics = step(placed, batch)
assert_type(placed, ftrain.TrainState)


def stop_early(state: ftrain.TrainState, event: object) -> ftrain.TrainState:
    return state.replace(should_stop=True)


callback: ftrain.Callback = stop_early
