"""Random streams per draw site: every batch of an epoch draws its own numbers, replays are
exact, and a stream id separates two states with one seed."""

import math

import torch
from torch import nn

import ftrain


def _recording_state(draws, stream=0, bad_at=()):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)

    def loss_fn(m, batch):
        x, y = batch
        draws.append(torch.rand(4))
        loss = nn.functional.mse_loss(m(x), y)
        if len(draws) in bad_at:
            loss = loss * math.nan
        return loss

    return ftrain.TrainState.create(
        model=model,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
        loss_fn=loss_fn,
        seed=7,
    ).replace(stream=stream)


def _batches(n=6):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(2, 3, generator=g), torch.randn(2, 1, generator=g)) for _ in range(n)]


def _distinct(draws):
    return len({tuple(d.tolist()) for d in draws}) == len(draws)


def test_no_two_batches_of_one_evaluation_draw_the_same_numbers():
    draws = []
    state = _recording_state(draws)
    ftrain.eval_epoch(state, _batches())
    assert len(draws) == 6 and _distinct(draws)
    first = list(draws)
    draws.clear()
    ftrain.eval_epoch(state, _batches())  # the same state evaluates the same way
    assert all(torch.equal(a, b) for a, b in zip(first, draws, strict=True))


def test_no_two_batches_of_one_training_epoch_draw_the_same_numbers():
    draws = []
    ftrain.train_epoch(_recording_state(draws), _batches())
    assert len(draws) == 6 and _distinct(draws)
    draws.clear()
    ftrain.train_epoch(
        _recording_state(draws), _batches(), step_fn=ftrain.with_accumulation(every=3)
    )
    assert len(draws) == 6 and _distinct(draws)


def test_a_skipped_step_is_retried_with_fresh_numbers():
    draws = []
    state = _recording_state(draws, bad_at=(2, 3))
    state, _ = ftrain.train_epoch(state, _batches(), step_fn=ftrain.with_skip_nonfinite())
    assert state.step == 4 and state.skipped_steps == 2  # batches 2 and 3 were skipped
    assert len(draws) == 6 and _distinct(draws)


def test_training_evaluation_and_prediction_draw_from_different_streams():
    draws = []
    state = _recording_state(draws)
    batch = _batches(1)[0]
    ftrain.eval_step(state, batch)
    ftrain.predict(state, [batch], forward=lambda m, b: (draws.append(torch.rand(4)), m(b[0]))[1])
    ftrain.train_step(state, batch)
    assert len(draws) == 3 and _distinct(draws)


def test_two_states_with_one_seed_and_different_stream_ids_draw_differently():
    a, b, a2 = [], [], []
    ftrain.eval_epoch(_recording_state(a, stream=0), _batches(2))
    ftrain.eval_epoch(_recording_state(b, stream=1), _batches(2))
    ftrain.eval_epoch(_recording_state(a2, stream=0), _batches(2))
    assert _distinct(a + b)
    assert all(torch.equal(x, y) for x, y in zip(a, a2, strict=True))


def test_the_count_of_skipped_steps_survives_a_checkpoint(tmp_path):
    state = _recording_state([], bad_at=(1,))
    state, _ = ftrain.with_skip_nonfinite()(state, _batches(1)[0])
    assert state.skipped_steps == 1
    path = ftrain.save(state, tmp_path / "s.ckpt")
    assert ftrain.load(_recording_state([]), path).skipped_steps == 1
