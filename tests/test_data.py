import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import ftrain
from ftrain import EpochSampler

DS = TensorDataset(torch.arange(10).float())


def test_order_is_a_function_of_seed_and_epoch():
    a = EpochSampler(DS, shuffle=True, seed=1)
    b = EpochSampler(DS, shuffle=True, seed=1)
    torch.manual_seed(5)
    first = list(a)
    torch.manual_seed(6)
    assert list(b) == first and sorted(first) == list(range(10))
    a.set_epoch(1)
    assert list(a) != first
    assert list(EpochSampler(DS, shuffle=True, seed=2)) != first
    assert list(EpochSampler(DS, shuffle=False, seed=1)) == list(range(10))


def test_start_skips_at_the_index_level():
    s = EpochSampler(DS, shuffle=True, seed=3)
    full = list(s)
    s.set_start(4)
    assert list(s) == full[4:] and len(s) == 6


def test_rank_split_pads_for_training_and_not_for_evaluation():
    train = [
        list(EpochSampler(DS, shuffle=False, seed=0, num_replicas=3, rank=r)) for r in range(3)
    ]
    assert [len(t) for t in train] == [4, 4, 4]
    evals = [
        list(EpochSampler(DS, shuffle=False, seed=0, num_replicas=3, rank=r, pad=False))
        for r in range(3)
    ]
    assert sorted(i for e in evals for i in e) == list(range(10))


def test_prepare_loader_keeps_settings_and_shuffle(tiny_state):
    collate = lambda items: torch.stack([i[0] for i in items])
    loader = DataLoader(DS, batch_size=4, shuffle=True, drop_last=True, collate_fn=collate)
    prepared = ftrain.prepare_loader(tiny_state, loader)
    assert isinstance(prepared.sampler, EpochSampler) and prepared.sampler.shuffle
    assert prepared.batch_size == 4 and prepared.drop_last and prepared.collate_fn is collate
    assert ftrain.prepare_loader(tiny_state, prepared) is prepared
    sequential = ftrain.prepare_loader(tiny_state, DataLoader(DS, batch_size=4))
    assert not sequential.sampler.shuffle
    plain = [(torch.ones(1),)]
    assert ftrain.prepare_loader(tiny_state, plain) is plain


def test_custom_samplers_are_kept_and_resume_skips_with_a_warning(tiny_state):
    weighted = DataLoader(
        DS, batch_size=2, sampler=torch.utils.data.WeightedRandomSampler([1.0] * 10, 10)
    )
    assert ftrain.prepare_loader(tiny_state, weighted) is weighted
    batches = [ftrain.testing.toy_batch(seed=i) for i in range(4)]
    with pytest.warns(UserWarning, match="skipping 2 batches"):
        state, _ = ftrain.train_epoch(tiny_state.replace(epoch_batch=2), batches)
    assert state.step == 2 and state.epoch == 1


def test_prefetching_loader_trains_exactly_like_the_plain_one():
    from helpers import make_classifier, make_loaders

    train, _ = make_loaders()
    plain, h1 = ftrain.fit(make_classifier(), train, max_epochs=2)
    state = make_classifier()
    prefetched = ftrain.prepare_loader(state, train, prefetch=True)
    assert isinstance(prefetched, ftrain.DevicePrefetcher) and len(prefetched) == 6
    fetched, h2 = ftrain.fit(state, prefetched, max_epochs=2)
    for p, q in zip(plain.model.parameters(), fetched.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert [r["train_loss"] for r in h1] == [r["train_loss"] for r in h2]
