import torch

import ftrain
from conftest import make_classifier, make_loaders


def test_fit_trains_and_returns_history():
    train, val = make_loaders()
    state, history = ftrain.fit(make_classifier(), (train, val), max_epochs=3)
    assert state.epoch == 3 and state.step == 18
    assert [row["epoch"] for row in history] == [0, 1, 2]
    assert history[-1]["val_acc"] > 0.7
    assert all(torch.isfinite(p).all() for p in state.model.parameters())
