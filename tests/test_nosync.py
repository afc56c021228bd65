"""No hidden host syncs: steps never read the device; epochs sync once per log interval."""

import os
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import make_classifier, make_loaders

import ftrain

PACKAGE = os.path.dirname(os.path.abspath(ftrain.__file__)) + os.sep
SYNCING = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


@pytest.fixture
def sync_calls(monkeypatch):
    """Host reads of tensors by ftrain's own code. The DataLoader's CPU-side seeding and the
    sampler's CPU index permutation (ftrain/_data.py) never touch the device: not counted."""
    calls = []
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(PACKAGE) and not caller.endswith("_data.py"):
                calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def test_steps_and_transforms_never_sync(sync_calls):
    state = make_classifier()
    train, _ = make_loaders()
    step = ftrain.with_accumulation(ftrain.with_grad_clip(max_norm=1.0), every=2)
    for batch in train:
        state, _ = ftrain.train_step(state, batch)
        state, _ = step(state, batch)
    assert sync_calls == []


def test_train_epoch_syncs_once_per_log_interval(sync_calls):
    train, _ = make_loaders(n=192, batch_size=16)  # 12 batches
    ftrain.train_epoch(make_classifier(), train, [lambda s, e: s], log_every_n_steps=5)
    assert sync_calls == ["tolist"] * 3  # steps 5 and 10, then the epoch's end


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_steps_run_under_sync_debug_mode_error():
    state = ftrain.place(make_classifier(), "cuda")
    train, _ = make_loaders()
    loader = ftrain.prepare_loader(state, train)
    batches = [ftrain.move(b, state.device) for b in loader]
    torch.cuda.synchronize()
    with warnings.catch_warnings():  # torch warns that the mode is a prototype
        warnings.simplefilter("ignore", UserWarning)
        torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches:
            state, _ = ftrain.train_step(state, batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_import_adds_little_to_import_torch():
    code = (
        "import time; t=time.perf_counter(); import torch; a=time.perf_counter();"
        "import ftrain; b=time.perf_counter(); print(b - a)"
    )
    times = sorted(
        float(
            subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            ).stdout
        )
        for _ in range(3)
    )
    assert times[1] < 0.25, times  # median; measured about 0.03 s
