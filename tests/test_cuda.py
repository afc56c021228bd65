"""The CUDA paths: precision, compile, pinned non-blocking copies, no host syncs, checkpoints.

Skipped on machines without CUDA (CI runs on CPU); run them on a GPU machine with
``pytest tests/test_cuda.py tests/test_nosync.py``.
"""

import contextlib
import warnings

import pytest
import torch
from helpers import make_loaders
from torch import nn

import ftrain
from ftrain import SingleDevice

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    # inductor suggests TF32 for float32 matmuls: advice, not a failure
    pytest.mark.filterwarnings("ignore:TensorFloat32 tensor cores:UserWarning"),
]


@pytest.fixture(autouse=True)
def _nondeterministic_kernels_allowed():
    # Some CUDA kernels (and inductor's) are not flagged deterministic; conftest turns the flag on.
    torch.use_deterministic_algorithms(False)
    yield
    torch.use_deterministic_algorithms(True)


@contextlib.contextmanager
def sync_debug_error():
    """Every synchronizing CUDA call inside raises (torch warns that the mode is a prototype)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _state(seed=0, dropout=0.0, optimizer=None):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(10, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, 64), nn.ReLU(),
        nn.Linear(64, 2),
    )  # fmt: skip
    return ftrain.TrainState.create(
        model=model,
        optimizer=optimizer or (lambda p: torch.optim.AdamW(p, lr=1e-2)),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
        seed=seed,
    )


def _batches(n=8):
    train, _ = make_loaders(n=16 * n, batch_size=16)
    return list(train)


def _losses(state, batches):
    out = []
    for batch in batches:
        state, m = ftrain.train_step(state, batch)
        out.append(m["loss"])
    return state, torch.stack(out).float().tolist()


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true", "16-true"])
def test_reduced_precision_on_cuda_trains_close_to_fp32(precision):
    # Adam's eps (1e-8) underflows to zero in float16, so pure fp16 is tested with SGD.
    sgd = (lambda p: torch.optim.SGD(p, lr=0.1)) if precision == "16-true" else None
    batches = _batches()
    _, ref = _losses(ftrain.place(_state(optimizer=sgd), "cuda"), batches)
    placed = ftrain.place(_state(optimizer=sgd), SingleDevice("cuda", precision=precision))
    state, got = _losses(placed, batches)
    assert got[-1] < got[0]
    assert got == pytest.approx(ref, rel=0.05, abs=0.03)
    dtype = next(state.model.parameters()).dtype
    expected = {"bf16-true": torch.bfloat16, "16-true": torch.float16}.get(precision, torch.float32)
    assert dtype == expected


def test_bf16_mixed_runs_the_forward_in_bf16_on_cuda():
    seen = []

    def loss_fn(model, batch):
        out = model(batch[0])
        seen.append(out.dtype)
        return nn.functional.cross_entropy(out.float(), batch[1])

    state = ftrain.TrainState.create(
        model=nn.Linear(10, 2), optimizer=lambda p: torch.optim.SGD(p, lr=0.1), loss_fn=loss_fn
    )
    state = ftrain.place(state, SingleDevice("cuda", precision="bf16-mixed"))
    ftrain.train_step(state, _batches(1)[0])
    assert seen == [torch.bfloat16]
    assert next(state.model.parameters()).dtype == torch.float32


def test_16_mixed_on_cuda_reports_skipped_steps_and_recovers(tmp_path):
    state = ftrain.place(_state(), SingleDevice("cuda", precision="16-mixed"))
    state.scaler._init_scale = 2.0**40  # certain fp16 overflow at first
    state, m = ftrain.train_step(state, _batches(1)[0])
    assert float(m["skipped"]) == 1.0
    for batch in _batches(40):
        state, m = ftrain.train_step(state, batch)
    assert float(m["skipped"]) == 0.0
    path = ftrain.save(state, tmp_path / "s.ckpt")
    loaded = ftrain.load(ftrain.place(_state(), SingleDevice("cuda", precision="16-mixed")), path)
    assert loaded.scaler.get_scale() == state.scaler.get_scale()


@pytest.mark.timeout(600)
def test_compiled_step_on_cuda_trains_like_eager_without_prefix(tmp_path):
    batches = _batches()
    _, eager = _losses(ftrain.place(_state(), "cuda"), batches)
    state, compiled = _losses(ftrain.place(_state(), SingleDevice("cuda", compile=True)), batches)
    assert compiled == pytest.approx(eager, rel=1e-3, abs=1e-4)
    path = ftrain.save(state, tmp_path / "c.ckpt")
    assert not any("_orig_mod" in k for k in ftrain.read_checkpoint(path)["model"])


@pytest.mark.timeout(600)
@pytest.mark.parametrize("compile", [False, True])
def test_bf16_steps_on_cuda_never_sync(compile):
    state = ftrain.place(_state(dropout=0.1), SingleDevice("cuda", "bf16-mixed", compile=compile))
    batches = [ftrain.move(b, state.device) for b in _batches(6)]
    state, _ = ftrain.train_step(state, batches[0])  # compiles, when compiling
    step = ftrain.with_grad_clip(max_norm=1.0)
    with sync_debug_error():
        for batch in batches[1:]:
            state, _ = ftrain.train_step(state, batch)
            state, _ = step(state, batch)
            ftrain.eval_step(state, batch)


def test_loaders_are_pinned_and_prefetched_to_cuda():
    state = ftrain.place(_state(), "cuda")
    train, _ = make_loaders(n=64, batch_size=16)
    loader = ftrain.prepare_loader(state, train, prefetch=True)
    assert loader.pin_memory
    batches = list(loader)
    assert len(batches) == 4
    assert all(t.device.type == "cuda" for b in batches for t in b)
    # The same batches, in the same order, as without prefetching.
    plain = list(ftrain.prepare_loader(state, train))
    for a, b in zip(batches, plain, strict=True):
        assert torch.equal(a[0].cpu(), b[0])


def test_fit_on_cuda_with_prefetch_matches_plain_and_loads_on_cpu(tmp_path):
    train, val = make_loaders()
    a, _ = ftrain.fit(ftrain.place(_state(dropout=0.1), "cuda"), (train, val), max_epochs=2)
    b_state = ftrain.place(_state(dropout=0.1), "cuda")
    prefetched = ftrain.prepare_loader(b_state, train, prefetch=True)
    b, _ = ftrain.fit(b_state, (prefetched, val), max_epochs=2)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    path = ftrain.save(b, tmp_path / "g.ckpt")
    on_cpu = ftrain.load(ftrain.place(_state(), "cpu"), path)
    assert on_cpu.step == b.step
    for p, q in zip(b.model.parameters(), on_cpu.model.parameters(), strict=True):
        torch.testing.assert_close(p.cpu(), q)
