import os
import pickle
import signal

import attrs
import numpy as np
import pytest
import torch
from helpers import make_classifier, make_loaders
from torch import nn

import ftrain
from ftrain import CheckpointError
from ftrain.callbacks import Checkpoint, EarlyStopping
from ftrain.testing import assert_resume_equivalent, assert_states_equal


def test_round_trip_restores_everything(tmp_path):
    train, val = make_loaders()
    state, _ = ftrain.fit(make_classifier(), (train, val), [EarlyStopping(patience=5)], max_steps=9)
    path = ftrain.save(state, tmp_path / "a.ckpt")
    loaded = ftrain.load(make_classifier(seed=1), path)
    assert_states_equal(state, loaded)
    assert loaded.epoch_batch == 3 and loaded.epoch_totals == state.epoch_totals
    assert loaded.callback_state["early_stopping"] == state.callback_state["early_stopping"]
    assert state.is_live  # save does not consume


def test_load_consumes_the_template(tmp_path):
    path = ftrain.save(ftrain.testing.toy_state(), tmp_path / "a.ckpt")
    template = ftrain.testing.toy_state()
    ftrain.load(template, path)
    with pytest.raises(ftrain.StaleStateError, match="`load`"):
        ftrain.train_step(template, ftrain.testing.toy_batch())


@pytest.mark.parametrize("resume_at", [6, 9])  # an epoch boundary and mid-epoch (6 batches/epoch)
def test_resume_equals_the_uninterrupted_run_bit_for_bit(tmp_path, resume_at):
    train, val = make_loaders()  # shuffled loader; dropout, AdamW momentum, a StepLR schedule
    assert_resume_equivalent(
        make_classifier,
        (train, val),
        max_steps=16,
        resume_at=resume_at,
        path=tmp_path / "r.ckpt",
        callbacks=lambda: [EarlyStopping(patience=10)],
        log_every_n_steps=3,
    )


def test_fit_resume_from_a_directory_of_checkpoints(tmp_path):
    train, val = make_loaders()
    straight, _ = ftrain.fit(make_classifier(), (train, val), max_epochs=4)
    cb = Checkpoint(tmp_path, every_n_steps=4, every_n_epochs=1, keep_last=2)
    first, _ = ftrain.fit(make_classifier(), (train, val), [cb], max_steps=8, log_every_n_steps=2)
    names = sorted(p.name for p in tmp_path.glob("step-*.ckpt"))
    assert names == ["step-000000006.ckpt", "step-000000008.ckpt"]  # keep_last=2
    cb2 = Checkpoint(tmp_path, every_n_steps=4, keep_last=2)
    resumed, history = ftrain.fit(
        make_classifier(), (train, val), [cb2], max_epochs=4, log_every_n_steps=2, resume=tmp_path
    )
    assert_states_equal(straight, resumed)
    assert [r["epoch"] for r in history] == [0, 1, 2, 3]  # the whole run's, kept in the state


def test_resume_from_an_empty_directory_starts_fresh(tmp_path):
    train, _ = make_loaders()
    state, _ = ftrain.fit(make_classifier(), train, max_epochs=1, resume=tmp_path)
    assert state.epoch == 1


def test_best_k_retention_and_monitor(tmp_path):
    train, val = make_loaders()
    cb = Checkpoint(tmp_path, monitor="val_loss", save_top_k=2, keep_last=1)
    state, history = ftrain.fit(make_classifier(), (train, val), [cb], max_epochs=5)
    memory = state.callback_state["checkpoint"]
    best = sorted(history, key=lambda r: r["val_loss"])[:2]
    assert [v for v, _ in memory.best] == [r["val_loss"] for r in best]
    kept = {p.name for p in tmp_path.glob("step-*.ckpt")}
    assert kept == {f for _, f in memory.best} | {memory.last}


def test_every_n_steps_must_align_with_the_log_interval(tmp_path):
    train, _ = make_loaders()
    with pytest.raises(ValueError, match="multiple of fit's `log_every_n_steps`"):
        ftrain.fit(
            make_classifier(),
            train,
            [Checkpoint(tmp_path, every_n_steps=5)],
            max_epochs=1,
            log_every_n_steps=2,
        )


def test_leftover_temp_files_are_cleaned_at_start(tmp_path):
    (tmp_path / ".step-000000003.ckpt.abc.tmp").write_bytes(b"partial")
    train, _ = make_loaders()
    ftrain.fit(make_classifier(), train, [Checkpoint(tmp_path)], max_epochs=1)
    assert not list(tmp_path.glob("*.tmp")) and list(tmp_path.glob("step-*.ckpt"))


def test_exception_inside_fit_keeps_the_last_checkpoint_and_saves_at_the_failure(tmp_path):
    train, _ = make_loaders()
    boom = ftrain.on(
        ftrain.StepEnd,
        lambda s, e: (_ for _ in ()).throw(RuntimeError("boom")) if e.step == 9 else s,
    )
    with pytest.raises(RuntimeError, match="boom"):
        ftrain.fit(make_classifier(), train, [boom, Checkpoint(tmp_path)], max_epochs=3)
    names = sorted(p.name for p in tmp_path.glob("step-*.ckpt"))
    assert (
        names[-1] == "step-000000009.ckpt" and ftrain.latest_checkpoint(tmp_path).name == names[-1]
    )
    resumed = ftrain.load(make_classifier(), tmp_path / names[-1])
    assert resumed.step == 9 and resumed.epoch == 1 and resumed.epoch_batch == 3


def test_a_nonfinite_state_is_never_saved(tmp_path):
    state = ftrain.testing.toy_state()
    good = ftrain.save(state, tmp_path / "step-000000001.ckpt")
    with torch.no_grad():
        state.model.weight[0, 0] = float("nan")
    with pytest.raises(ftrain.NonFiniteError, match="weight"):
        ftrain.save(state, tmp_path / "step-000000002.ckpt")
    assert ftrain.latest_checkpoint(tmp_path) == good


def test_sigterm_saves_and_fit_returns_cleanly(tmp_path):
    train, _ = make_loaders()
    kill = ftrain.on(
        ftrain.StepEnd,
        lambda s, e: (os.kill(os.getpid(), signal.SIGTERM), s)[1] if e.step == 4 else s,
    )
    state, history = ftrain.fit(
        make_classifier(),
        train,
        [kill, Checkpoint(tmp_path)],
        max_epochs=3,
        stop_signals=(signal.SIGTERM,),
    )
    assert state.step == 4 and history == []  # stopped right after the batch that was running
    assert ftrain.load(make_classifier(), ftrain.latest_checkpoint(tmp_path)).step == 4
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "flip":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "header":
        path.write_bytes(bytes(data[:20]))


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("truncate", "truncated"),
        ("flip", "corrupt"),
        ("empty", "is empty"),
        ("header", "truncated"),
    ],
)
def test_damaged_files_get_the_typed_error_and_resume_falls_back(tmp_path, how, match):
    state = ftrain.testing.toy_state()
    ftrain.save(state, tmp_path / "step-000000001.ckpt")
    bad = ftrain.save(state, tmp_path / "step-000000002.ckpt")
    _corrupt(bad, how)
    with pytest.raises(CheckpointError, match=f"{bad.name}.*{match}"):
        ftrain.load(ftrain.testing.toy_state(), bad)
    with pytest.warns(UserWarning, match="Skipping a bad checkpoint"):
        assert ftrain.latest_checkpoint(tmp_path).name == "step-000000001.ckpt"


def test_a_removed_part_is_detected(tmp_path):
    import io
    import zipfile

    path = ftrain.save(ftrain.testing.toy_state(), tmp_path / "a.ckpt")
    raw = path.read_bytes()
    header, payload = raw[:52], raw[52:]
    src = zipfile.ZipFile(io.BytesIO(payload))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist()[:-2]:  # drop the last record of the archive
            dst.writestr(item, src.read(item))
    path.write_bytes(header + out.getvalue())
    with pytest.raises(CheckpointError, match="a.ckpt"):
        ftrain.load(ftrain.testing.toy_state(), path)


def test_files_from_elsewhere_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save(ftrain.testing.toy_state().model.state_dict(), plain)
    with pytest.raises(CheckpointError, match="not an ftrain checkpoint"):
        ftrain.load(ftrain.testing.toy_state(), plain)
    with pytest.raises(CheckpointError, match="Cannot read"):
        ftrain.load(ftrain.testing.toy_state(), tmp_path / "missing.ckpt")


def test_a_newer_format_version_is_refused(tmp_path):
    path = ftrain.save(ftrain.testing.toy_state(), tmp_path / "a.ckpt")
    raw = bytearray(path.read_bytes())
    raw[8:12] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="format version 99, newer"):
        ftrain.load(ftrain.testing.toy_state(), path)


def test_a_checkpoint_of_another_model_names_every_mismatch(tmp_path):
    path = ftrain.save(ftrain.testing.toy_state(), tmp_path / "a.ckpt")
    other = ftrain.TrainState.create(
        model=nn.Sequential(nn.Linear(2, 4)),
        optimizer=lambda p: torch.optim.SGD(p, 0.1),
        loss_fn=lambda m, b: m(b).sum(),
    )
    with pytest.raises(
        CheckpointError, match=r"missing keys \['0.bias', '0.weight'\].*unexpected keys"
    ):
        ftrain.load(other, path)
    wider = ftrain.testing.toy_state(out_features=4)
    with pytest.raises(CheckpointError, match=r"weight: checkpoint \(3, 2\) vs model \(4, 2\)"):
        ftrain.load(wider, path)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = ""


def test_a_crafted_pickle_runs_nothing(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    import hashlib
    import io
    import struct

    buf = io.BytesIO()
    torch.save({"format": "ftrain", "x": _Evil()}, buf)
    payload = buf.getvalue()
    header = struct.pack("<8sIQ32s", b"FTRAINCK", 1, len(payload), hashlib.sha256(payload).digest())
    crafted = tmp_path / "step-000000001.ckpt"
    crafted.write_bytes(header + payload)
    raw_pickle = tmp_path / "raw.ckpt"
    raw_pickle.write_bytes(pickle.dumps(_Evil()))
    for path in (crafted, raw_pickle):
        with pytest.raises(CheckpointError):
            ftrain.load(ftrain.testing.toy_state(), path)
    assert not os.path.exists(MARKER)


def test_loading_maps_to_the_template_device(tmp_path):
    state = ftrain.place(ftrain.testing.toy_state(), "cpu")
    path = ftrain.save(state, tmp_path / "a.ckpt")
    loaded = ftrain.load(ftrain.place(ftrain.testing.toy_state(), "cpu"), path)
    assert all(p.device.type == "cpu" for p in loaded.model.parameters())


@ftrain.checkpoint_record
@attrs.frozen
class Window:
    sizes: tuple[int, ...]
    weights: torch.Tensor


@ftrain.checkpoint_record
@attrs.frozen
class Carry:
    count: int
    window: Window
    history: list[tuple[int, float]] = attrs.field(factory=list)
    by_key: dict = attrs.field(factory=dict)
    _note: str = "private field, public argument"


@attrs.frozen
class Unregistered:
    value: float = 0.0


def _carry():
    return Carry(
        count=3,
        window=Window(sizes=(1, 2), weights=torch.arange(3.0)),
        history=[(1, 0.5), (2, 0.25)],
        by_key={1: "one", (2, "b"): [Window(sizes=(), weights=torch.ones(1))]},
        note="kept",
    )


def _same(a, b):
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif attrs.has(type(a)):
        for f in attrs.fields(type(a)):
            _same(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, dict):
        assert list(a) == list(b)  # the same keys, of the same types, in the same order
        for (ka, va), kb in zip(a.items(), b, strict=True):
            assert type(ka) is type(kb)
            _same(va, b[kb])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    else:
        assert a == b


def test_a_registered_user_record_comes_back_as_itself(tmp_path):
    memory = {
        "carry": _carry(),
        "counts": {0: 1, 7: 2, (3, "x"): (4, [5])},
        "plain": [None, True, 1.5, "s", torch.zeros(2)],
    }
    state = ftrain.testing.toy_state().replace(callback_state=memory)
    path = ftrain.save(state, tmp_path / "a.ckpt")
    loaded = ftrain.load(ftrain.testing.toy_state(), path)
    _same(dict(state.callback_state), dict(loaded.callback_state))
    _same(dict(state.callback_state), ftrain.read_checkpoint(path)["callback_state"])


@pytest.mark.parametrize(
    ("value", "where", "match"),
    [
        (object(), "['mine']", "plain data"),
        (Unregistered(), "['mine']", r"not registered.*@ftrain.checkpoint_record"),
        ({"a": [Unregistered()]}, "['mine']['a'][0]", "not registered"),
        (attrs.evolve(_carry(), count=np.int64(3)), "['mine'].count", "got int64"),
        ((1, np.float64(2.0)), "['mine'][1]", "got float64"),
        ({1.5: {"x"}}, "['mine'][1.5]", "got set"),
        ({object(): 1}, "['mine']", "has the key object"),
        ({"__ftrain_record__": 1}, "['mine']", "reserves"),
    ],
)
def test_run_state_that_would_not_come_back_as_it_is_is_refused_at_save(
    tmp_path, value, where, match
):
    state = ftrain.testing.toy_state().replace(callback_state={"mine": value})
    with pytest.raises(TypeError, match=match) as info:
        ftrain.save(state, tmp_path / "a.ckpt")
    assert f"`callback_state{where}`" in str(info.value)  # where it sits
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_record_this_process_cannot_rebuild_is_refused_at_load(tmp_path, monkeypatch):
    from ftrain._checkpoint import _records

    state = ftrain.testing.toy_state().replace(callback_state={"carry": _carry()})
    path = ftrain.save(state, tmp_path / "a.ckpt")
    name = f"{Carry.__module__}.Carry"
    with monkeypatch.context() as m:  # as in a process that never imported the class
        m.delitem(_records._RECORDS, name)
        template = ftrain.testing.toy_state()
        with pytest.raises(CheckpointError, match=rf"{name} record at `callback_state\['carry'\]`"):
            ftrain.load(template, path)
        assert template.is_live  # refused before anything was loaded
    with monkeypatch.context() as m:  # the class changed its fields since the save
        m.setitem(_records._RECORDS, name, Unregistered)
        with pytest.raises(
            CheckpointError, match=r"has the fields \[.*'count'.*\], but .* \['value'\]"
        ):
            ftrain.load(ftrain.testing.toy_state(), path)


def test_checkpoint_record_takes_attrs_classes_it_can_rebuild():
    class Plain:
        pass

    with pytest.raises(TypeError, match="above `@attrs.frozen`"):
        ftrain.checkpoint_record(Plain)

    @attrs.frozen
    class Derived:
        x: int
        y: int = attrs.field(init=False, default=0)

    with pytest.raises(TypeError, match=r"\['y'\] have init=False"):
        ftrain.checkpoint_record(Derived)


def test_paths_of_the_wrong_type_are_named(tmp_path):
    state = ftrain.testing.toy_state()
    with pytest.raises(TypeError, match=r"`path` must be a str or os.PathLike \(got int 5\)"):
        ftrain.save(state, 5)
    with pytest.raises(TypeError, match="`path` must be a str or os.PathLike"):
        ftrain.load(state, None)
    with pytest.raises(TypeError, match="`path` must be a str or os.PathLike"):
        ftrain.read_checkpoint(b"a.ckpt")
    with pytest.raises(TypeError, match="`directory` must be a str or os.PathLike"):
        ftrain.latest_checkpoint(3)
    assert state.is_live


def test_read_checkpoint_shows_what_a_file_holds_without_a_template(tmp_path):
    state, _ = _trained()
    path = ftrain.save(state, tmp_path / "a.ckpt")
    contents = ftrain.read_checkpoint(str(path))
    assert contents["meta"]["step"] == 3 and contents["meta"]["seed"] == state.seed
    assert set(contents["model"]) == set(state.model.state_dict())
    assert all(v.device.type == "cpu" for v in contents["model"].values())
    assert contents["optimizers"][""]["state"] and contents["schedulers"][""] is not None
    assert contents["scaler"] is None and contents["callback_state"] == {}


def test_mid_epoch_resume_never_loads_the_skipped_batches(tmp_path):
    from torch.utils.data import DataLoader, Dataset

    class Counting(Dataset):
        def __init__(self, inner):
            self.inner, self.fetched = inner, []

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            self.fetched.append(i)
            return self.inner[i]

    train, _ = make_loaders()  # 96 samples, batch 16: 6 batches per epoch
    first, _ = ftrain.fit(make_classifier(), train, max_steps=4)
    ftrain.save(first, tmp_path / "a.ckpt")
    counting = Counting(train.dataset)
    loader = DataLoader(counting, batch_size=16, shuffle=True)
    resumed = ftrain.load(make_classifier(), tmp_path / "a.ckpt")
    resumed, _ = ftrain.fit(resumed, loader, max_epochs=1)
    assert resumed.step == 6 and len(counting.fetched) == 32  # 2 batches, not 6


def test_saving_a_fresh_optimizer_does_not_change_training(tmp_path):
    # torch's get_optimizer_state_dict initialises a fresh Adam (step counter 1) when asked for
    # its state: a checkpoint at step 0 must not make the run differ from one without it.
    train, _ = make_loaders()
    plain, _ = ftrain.fit(make_classifier(), train, max_epochs=1)
    saved = make_classifier()
    ftrain.save(saved, tmp_path / "step0.ckpt")
    assert not saved.optimizer.state
    saved, _ = ftrain.fit(saved, train, max_epochs=1)
    assert_states_equal(plain, saved)
    restored = ftrain.load(make_classifier(), tmp_path / "step0.ckpt")
    assert not restored.optimizer.state


# Sharded checkpoint directories (what FSDP writes with several processes) written here by one
# process: torch.distributed.checkpoint writes the same layout without a process group.


def _sharded(state, path):
    from ftrain._checkpoint._records import state_record
    from ftrain._checkpoint._sharded import save_sharded

    return save_sharded(state, path, state_record(state))


def _trained(steps=3):
    state = make_classifier()
    train, _ = make_loaders()
    for batch, _ in zip(train, range(steps), strict=False):
        state, _ = ftrain.train_step(state, batch)
    return state, train


def test_a_sharded_directory_round_trips_and_continues_exactly(tmp_path):
    state, train = _trained()
    path = _sharded(state, tmp_path / "step-000000003.ckpt")
    assert path.is_dir()
    names = sorted(p.name for p in path.iterdir())
    assert names == [".metadata", "__0_0.distcp", "manifest.json", "state.ftrain"]
    assert ftrain.latest_checkpoint(tmp_path) == path
    restored = ftrain.load(make_classifier(), path)
    assert_states_equal(state, restored)
    batch = next(iter(train))
    a, _ = ftrain.train_step(state, batch)
    b, _ = ftrain.train_step(restored, batch)
    assert_states_equal(a, b)


def _rewrite_manifest(directory):
    from ftrain._checkpoint._sharded import write_manifest

    write_manifest(directory, world_size=1)


def test_a_sharded_metadata_pickle_runs_nothing(tmp_path):
    global MARKER
    MARKER = str(tmp_path / "pwned")
    state, _ = _trained()
    path = _sharded(state, tmp_path / "step-000000003.ckpt")
    (path / ".metadata").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(CheckpointError, match=r"damaged: \.metadata"):
        ftrain.load(make_classifier(), path)
    _rewrite_manifest(path)  # a crafted directory with a matching manifest
    with pytest.raises(CheckpointError, match="restricted unpickler"):
        ftrain.load(make_classifier(), path)
    assert not os.path.exists(MARKER)


def test_a_corrupt_or_missing_shard_is_named(tmp_path):
    state, _ = _trained()
    path = _sharded(state, tmp_path / "step-000000003.ckpt")
    shard = path / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"checksum of __0_0\.distcp"):
        ftrain.load(make_classifier(), path)
    shard.unlink()
    with pytest.raises(CheckpointError, match=r"missing __0_0\.distcp"):
        ftrain.load(make_classifier(), path)


def test_interrupted_sharded_saves_are_never_resumed_from(tmp_path):
    state, train = _trained()
    good = _sharded(state, tmp_path / "step-000000003.ckpt")
    # A newer save killed before its manifest: skipped with a warning; a temp dir: ignored.
    newer = _sharded(state, tmp_path / "step-000000006.ckpt")
    (newer / "manifest.json").unlink()
    (tmp_path / ".step-000000009.ckpt.tmp").mkdir()
    with pytest.warns(UserWarning, match="no manifest.json"):
        assert ftrain.latest_checkpoint(tmp_path) == good
    ckpt = Checkpoint(tmp_path, every_n_epochs=None)
    with pytest.warns(UserWarning, match="no manifest.json"):
        ftrain.fit(make_classifier(), train, [ckpt], max_steps=1, resume=tmp_path)
    assert not (tmp_path / ".step-000000009.ckpt.tmp").exists()  # removed when fit starts


def test_read_checkpoint_of_a_sharded_directory_returns_its_record(tmp_path):
    state, _ = _trained()
    state = state.replace(callback_state={"carry": _carry()})
    contents = ftrain.read_checkpoint(_sharded(state, tmp_path / "step-000000003.ckpt"))
    assert "model" not in contents and contents["sharded"]["world_size"] == 1
    assert contents["meta"]["step"] == 3
    _same(contents["callback_state"]["carry"], state.callback_state["carry"])


def test_a_sharded_checkpoint_of_another_model_names_the_mismatch(tmp_path):
    state, _ = _trained()
    path = _sharded(state, tmp_path / "step-000000003.ckpt")
    other = ftrain.TrainState.create(
        model=nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 2)),
        optimizer=lambda p: torch.optim.AdamW(p),
        loss_fn=ftrain.supervised(nn.CrossEntropyLoss()),
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=5),
    )
    with pytest.raises(CheckpointError, match=r"shape mismatches 0\.weight"):
        ftrain.load(other, path)
