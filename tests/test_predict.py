"""`predict` and `inference`: the model outside a step, under the state's placement and
precision."""

import pytest
import torch
from helpers import make_classifier
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ftrain


def _dataset(n=21):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 10, generator=g), torch.randint(0, 2, (n,), generator=g))


def test_predict_returns_outputs_in_dataset_order_in_eval_mode_without_grad():
    state = make_classifier(dropout=0.5)
    ds = _dataset()
    out = ftrain.predict(state, DataLoader(ds, batch_size=4, shuffle=True))
    state.model.eval()
    with torch.no_grad():
        want = state.model(ds.tensors[0])
    state.model.train()
    torch.testing.assert_close(out, want)
    assert not out.requires_grad and out.device.type == "cpu"
    assert state.model.training  # flags restored


def test_predict_per_batch_and_structured_outputs():
    state = make_classifier()
    ds = _dataset(10)
    loader = DataLoader(ds, batch_size=4)
    per_batch = ftrain.predict(state, loader, concat=False)
    assert [len(b) for b in per_batch] == [4, 4, 2]
    both = ftrain.predict(state, loader, forward=lambda m, b: {"logits": m(b[0]), "label": b[1]})
    assert torch.equal(both["label"], ds.tensors[1])
    torch.testing.assert_close(both["logits"], torch.cat(per_batch))


def test_predict_on_plain_iterables_and_bad_input():
    state = make_classifier()
    batches = [(torch.randn(3, 10), None), (torch.randn(2, 10), None)]
    assert ftrain.predict(state, batches).shape == (5, 2)
    with pytest.raises(ValueError, match="yielded no batches"):
        ftrain.predict(state, [])
    with pytest.raises(TypeError, match="pass forward="):
        ftrain.predict(state, [{"x": torch.randn(2, 10)}])
    with pytest.raises(ValueError, match="one output row per sample"):
        ftrain.predict(
            state, DataLoader(_dataset(), batch_size=4), forward=lambda m, b: m(b[0])[:1]
        )


def _bf16_state(precision):
    torch.manual_seed(0)
    state = ftrain.TrainState.create(
        model=nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        loss_fn=lambda m, b: m(b[0]).float().pow(2).mean(),
    )
    return ftrain.place(state, ftrain.SingleDevice("cpu", precision=precision))


def test_inference_under_bf16_true_casts_inputs_to_the_weights_dtype():
    state = _bf16_state("bf16-true")
    z = torch.randn(3, 4)  # float32, as user code makes it
    with ftrain.inference(state) as run:
        out = run(z)
        direct = run.model[0](run.move(z))  # a submodule of one's own, called directly
        noise = torch.randn(2, 4, generator=run.generator)
    assert out.dtype == torch.bfloat16 and direct.dtype == torch.bfloat16
    assert not out.requires_grad
    with ftrain.inference(state) as run:  # the same state draws the same noise
        assert torch.equal(noise, torch.randn(2, 4, generator=run.generator))
    assert ftrain.predict(state, [(z,)]).dtype == torch.bfloat16


def test_inference_under_bf16_mixed_autocasts():
    state = _bf16_state("bf16-mixed")
    with ftrain.inference(state) as run:
        out = run(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16  # computed under autocast, weights stay float32
    assert next(state.model.parameters()).dtype == torch.float32
