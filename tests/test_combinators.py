import pytest

import ftrain
from ftrain import EpochEnd, StepEnd


def _mark(tag, log):
    def cb(state, event):
        log.append(tag)
        return state

    return cb


def _step(n):
    return StepEnd(step=n, epoch=0, batch=n - 1, metrics={}, batch_size=1)


def test_chain_applies_in_order_and_threads_the_state(tiny_state):
    log = []
    stop = lambda s, e: s.replace(should_stop=True)
    seen_stop = []
    check = lambda s, e: (seen_stop.append(s.should_stop), s)[1]
    cb = ftrain.chain(_mark("a", log), ftrain.chain(_mark("b", log), stop), check)
    out = cb(tiny_state, _step(1))
    assert log == ["a", "b"] and seen_stop == [True] and out.should_stop
    assert not tiny_state.should_stop  # the input record is unchanged


def test_every_counts_steps_and_epochs(tiny_state):
    log = []
    cb = ftrain.every(3, _mark("x", log))
    for n in range(1, 10):
        cb(tiny_state, _step(n))
    assert len(log) == 3
    epochs = ftrain.every(2, _mark("e", log), event_type=EpochEnd)
    for e in range(4):
        epochs(tiny_state, EpochEnd(step=0, epoch=e, metrics={}))
    assert log.count("e") == 2


def test_on_and_when_filter(tiny_state):
    log = []
    cb = ftrain.on((EpochEnd,), _mark("epoch", log))
    cb(tiny_state, _step(1))
    cb(tiny_state, EpochEnd(step=0, epoch=0, metrics={}))
    late = ftrain.when(lambda s, e: e.step > 5, _mark("late", log))
    late(tiny_state, _step(3))
    late(tiny_state, _step(6))
    assert log == ["epoch", "late"]


def test_combinators_check_signatures_at_registration():
    with pytest.raises(ftrain.CallbackSignatureError, match=r"must accept \(state, event\)"):
        ftrain.chain(lambda state: state)
    with pytest.raises(ValueError, match=r"`n` must be an int >= 1 \(got 0\)"):
        ftrain.every(0, lambda s, e: s)
    with pytest.raises(ValueError, match="event_type"):
        ftrain.every(2, lambda s, e: s, event_type=int)
    with pytest.raises(TypeError, match="event class"):
        ftrain.on("StepEnd", lambda s, e: s)
    with pytest.raises(ftrain.CallbackSignatureError, match="predicate"):
        ftrain.when(lambda s: True, lambda s, e: s)
