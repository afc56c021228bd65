"""Every built-in callback keeps the callback contract: returns a TrainState, does not mutate
the state it was given, pickles, and its memory survives a checkpoint round-trip."""

import io
import pickle

import pytest
from helpers import make_classifier, make_loaders

import ftrain
from ftrain import callbacks as cbs


def _all(tmp_path):
    return [
        cbs.EarlyStopping(patience=10),
        cbs.ProgressBar(file=io.StringIO()),
        cbs.ModelSummary(),
        cbs.LearningRateMonitor(),
        cbs.CSVLogger(tmp_path / "csv"),
        cbs.TensorBoardLogger(tmp_path / "tb"),
        cbs.TerminateOnNaN(),
        cbs.Timer(max_time=3600),
        cbs.Checkpoint(tmp_path / "ckpt", every_n_steps=6),
    ]


@pytest.mark.parametrize("index", range(9))
def test_builtin_callback_contract(tmp_path, index):
    cb = _all(tmp_path)[index]
    pickle.loads(pickle.dumps(cb))  # at rest, a callback is plain data
    train, val = make_loaders()
    seen = []

    def spy(state, event):
        before = dict(state.callback_state)
        out = cb(state, event)
        assert type(out) is ftrain.TrainState
        assert dict(state.callback_state) == before  # the input record is not mutated
        seen.append(type(event).__name__)
        return out

    state, _ = ftrain.fit(make_classifier(), (train, val), [spy], max_epochs=2, log_every_n_steps=3)
    pickle.loads(pickle.dumps(cb))
    path = ftrain.save(state, tmp_path / "round.ckpt")
    loaded = ftrain.load(make_classifier(), path)
    assert set(loaded.callback_state) == set(state.callback_state)
    for key, memory in state.callback_state.items():
        assert loaded.callback_state[key] == memory
    assert "EvalEnd" in seen and "IntervalEnd" in seen
