"""Loaders that keep their own position: saved in checkpoints, restored, never re-read."""

import pytest
import torch
from helpers import make_classifier
from torch.utils.data import DataLoader, IterableDataset

import ftrain
from ftrain._checkpoint._runstate import restore_runstate
from ftrain.callbacks import Checkpoint

N, BATCH = 48, 8  # 6 batches per epoch

g = torch.Generator().manual_seed(1234)
X = torch.randn(N, 10, generator=g)
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).long()


def order(seed, epoch):
    return torch.randperm(N, generator=torch.Generator().manual_seed(1000 * seed + epoch))


class Stream(IterableDataset):
    """Samples in an order of its own per epoch; says its position; counts what it reads."""

    def __init__(self, seed=7):
        self.seed, self.epoch, self.position, self.reads = seed, 0, 0, []

    def __iter__(self):
        indices = order(self.seed, self.epoch)
        while self.position < N:
            i = int(indices[self.position])
            self.position += 1
            self.reads.append(i)
            yield X[i], Y[i]
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.epoch, self.position = state["epoch"], state["position"]


class StatefulLoader:
    """A loader with the ``state_dict()`` protocol (as torchdata's StatefulDataLoader has)."""

    def __init__(self, seed=7):
        self.seed, self.epoch, self.batch, self.reads = seed, 0, 0, []

    def __len__(self):
        return N // BATCH

    def __iter__(self):
        indices = order(self.seed, self.epoch)
        while self.batch < len(self):
            chosen = indices[self.batch * BATCH : (self.batch + 1) * BATCH]
            self.batch += 1
            self.reads.extend(chosen.tolist())
            yield X[chosen], Y[chosen]
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self):
        return {"epoch": self.epoch, "batch": self.batch, "seen": torch.tensor(len(self.reads))}

    def load_state_dict(self, state):
        self.epoch, self.batch = state["epoch"], state["batch"]


def stream_loader():
    stream = Stream()
    return DataLoader(stream, batch_size=BATCH), stream


def stateful_loader():
    loader = StatefulLoader()
    return loader, loader


MAKERS = {"iterable dataset": stream_loader, "stateful loader": stateful_loader}


@pytest.mark.parametrize("resume_at", [4, 6, 9])  # mid-epoch, an epoch's end, the 2nd epoch
@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_resume_reads_no_consumed_sample_again_and_trains_on_the_same_batches(
    tmp_path, kind, resume_at
):
    make = MAKERS[kind]
    straight_loader, straight_source = make()
    straight, history = ftrain.fit(make_classifier(), straight_loader, max_epochs=3)

    first_loader, first_source = make()
    ckpt = Checkpoint(tmp_path, every_n_steps=resume_at, every_n_epochs=None)
    ftrain.fit(make_classifier(), first_loader, [ckpt], max_steps=resume_at, log_every_n_steps=1)
    # A new process: a fresh loader, positioned by the checkpoint.
    loader, source = make()
    resumed, resumed_history = ftrain.fit(
        make_classifier(), loader, max_epochs=3, resume=tmp_path, log_every_n_steps=1
    )
    ftrain.testing.assert_states_equal(straight, resumed)
    consumed = resume_at * BATCH
    assert first_source.reads[:consumed] == straight_source.reads[:consumed]
    assert source.reads == straight_source.reads[consumed:]  # nothing read twice
    assert len(resumed_history) == len(history) == 3


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_the_same_loader_continues_a_run_in_one_process(kind):
    make = MAKERS[kind]
    loader, _ = make()
    straight, _ = ftrain.fit(make_classifier(), loader, max_steps=16)
    loader, source = make()
    split, _ = ftrain.fit(make_classifier(), loader, max_steps=4)
    split, _ = ftrain.fit(split, loader, max_steps=16)
    ftrain.testing.assert_states_equal(straight, split)
    assert len(source.reads) == 16 * BATCH


def test_the_position_is_in_the_checkpoint(tmp_path):
    loader, _ = stateful_loader()
    state, _ = ftrain.fit(make_classifier(), loader, max_steps=4)
    path = ftrain.save(state, tmp_path / "a.ckpt")
    saved = ftrain.read_checkpoint(path)["loader"]
    assert saved[0]["epoch"] == 0 and saved[0]["batch"] == 4
    assert torch.equal(saved[0]["seen"], torch.tensor(32))
    assert ftrain.load(make_classifier(), path).loader_state["batch"] == 4


def test_which_loaders_keep_their_position():
    from ftrain._loader_state import position_keeper

    stream = Stream()
    assert position_keeper(DataLoader(stream, batch_size=4)) is stream
    # With worker processes the dataset's position lives in the workers.
    assert position_keeper(DataLoader(stream, batch_size=4, num_workers=2)) is None
    assert position_keeper([ftrain.testing.toy_batch()]) is None
    loader = StatefulLoader()
    assert position_keeper(loader) is loader


@pytest.mark.filterwarnings("ignore:Resuming mid-epoch on a loader")
def test_a_saved_position_with_a_loader_that_keeps_none_warns_and_skips(tmp_path):
    loader, _ = stateful_loader()
    state, _ = ftrain.fit(make_classifier(), loader, max_steps=4)
    path = ftrain.save(state, tmp_path / "a.ckpt")
    batches = [(X[i : i + BATCH], Y[i : i + BATCH]) for i in range(0, N, BATCH)]
    with pytest.warns(UserWarning, match="keeps none.*skipped forward by iterating"):
        resumed, _ = ftrain.fit(ftrain.load(make_classifier(), path), batches, max_steps=6)
    assert resumed.step == 6 and resumed.loader_state is None


def test_positions_saved_by_another_number_of_processes_are_refused():
    state = make_classifier()
    data = {"loader": [{"batch": 1}, {"batch": 2}]}
    with pytest.raises(ftrain.CheckpointError, match="positions of 2 process.*this run has 1"):
        restore_runstate(state, data, "x.ckpt")
