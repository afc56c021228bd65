"""Every built-in callback keeps the callback contract: returns a TrainState, does not mutate
the state it was given, pickles, and its memory survives a checkpoint round-trip."""

import io
import pickle

import pytest
from helpers import make_classifier, make_loaders

import ftrain
from ftrain import callbacks as cbs

BUILDERS = {
    "EarlyStopping": lambda tmp: cbs.EarlyStopping(patience=10),
    "ProgressBar": lambda tmp: cbs.ProgressBar(file=io.StringIO()),
    "RichProgressBar": lambda tmp: cbs.RichProgressBar(refresh_rate=0),
    "ModelSummary": lambda tmp: cbs.ModelSummary(),
    "RichModelSummary": lambda tmp: cbs.RichModelSummary(),
    "LearningRateMonitor": lambda tmp: cbs.LearningRateMonitor(),
    "CSVLogger": lambda tmp: cbs.CSVLogger(tmp / "csv"),
    "TensorBoardLogger": lambda tmp: cbs.TensorBoardLogger(tmp / "tb"),
    "TerminateOnNaN": lambda tmp: cbs.TerminateOnNaN(),
    "Timer": lambda tmp: cbs.Timer(max_time=3600),
    "Checkpoint": lambda tmp: cbs.Checkpoint(tmp / "ckpt", every_n_steps=6),
}


def _is_callback_class(obj):
    return isinstance(obj, type) and any("__call__" in vars(k) for k in obj.__mro__[:-1])


def test_every_builtin_callback_is_covered():
    assert {n for n in cbs.__all__ if _is_callback_class(getattr(cbs, n))} == set(BUILDERS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builtin_callback_contract(tmp_path, name):
    cb = BUILDERS[name](tmp_path)
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
        assert type(loaded.callback_state[key]) is type(memory)  # records come back as records
        assert loaded.callback_state[key] == memory
    assert "EvalEnd" in seen and "IntervalEnd" in seen
