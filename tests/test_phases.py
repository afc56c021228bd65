"""Several models and optimizers in one state: GANs against hand-written loops, isolation."""

import copy

import attrs
import pytest
import torch
from scripts import gan
from torch import nn

import ftrain


def _assert_same_weights(module, reference):
    for (name, a), (_, b) in zip(
        module.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_dcgan_matches_the_hand_written_loop_bit_for_bit():
    data = gan.batches(24)
    state = gan.make_dcgan()
    reference, ref_losses = gan.reference_dcgan(state, data)
    losses = []
    for real in data:
        state, metrics = ftrain.train_step(state, real)
        losses.append((metrics["d_loss"], metrics["g_loss"]))
    assert state.step == 24 and sorted(metrics) == ["d_loss", "g_loss"]
    for (d, g), (rd, rg) in zip(losses, ref_losses, strict=True):
        assert torch.equal(d, rd) and torch.equal(g, rg)
    _assert_same_weights(state.model, reference)


def test_a_wgan_gp_matches_the_hand_written_loop_bit_for_bit():
    data = gan.batches(25)
    state = gan.make_wgan()
    reference, ref_losses = gan.reference_wgan(state, data)
    for i, real in enumerate(data):
        state, metrics = ftrain.train_step(state, real)
        loss_c, loss_g = ref_losses[i]
        assert torch.equal(metrics["critic_loss"], loss_c), i
        assert ("g_loss" in metrics) == (loss_g is not None), i
        if loss_g is not None:
            assert torch.equal(metrics["g_loss"], loss_g), i
    _assert_same_weights(state.model, reference)


def test_fit_trains_a_gan_with_metrics_per_phase():
    data = gan.batches(6)
    state, history = ftrain.fit(gan.make_dcgan(), (data, data[:2]), max_epochs=2)
    assert state.step == 12 and state.epoch == 2
    assert {"train_d_loss", "train_g_loss", "val_d_loss", "val_g_loss"} <= set(history[-1])


def test_a_custom_loop_of_phase_functions_equals_train_step():
    data = gan.batches(4)
    a = gan.make_dcgan()
    b = ftrain.fork(a)
    for real in data:
        a, ma = ftrain.train_step(a, real)
        b, md = ftrain.forward_backward(b, real, phase="d")
        b = ftrain.apply_gradients(b, phase="d")
        b, mg = ftrain.forward_backward(b, real, phase="g")
        b = ftrain.apply_gradients(b, phase="g")
        b = ftrain.end_step(b)
        assert {**md, **mg}.keys() == ma.keys()
        assert all(torch.equal(ma[k], {**md, **mg}[k]) for k in ma)
    ftrain.testing.assert_states_equal(a, b)
    assert b.handoff == {}


def test_step_transforms_apply_per_phase():
    data = gan.batches(4)
    a, b = gan.make_dcgan(), gan.make_dcgan()
    step = ftrain.with_grad_clip(max_norm=0.01)
    for real in data:
        a, ma = step(a, real)
        b, _ = ftrain.train_step(b, real)
    assert {"d_grad_norm", "g_grad_norm", "d_loss", "g_loss"} == set(ma)
    assert any(
        not torch.equal(p, q)
        for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True)
    )


def test_accumulation_over_two_batches_updates_every_phase_once():
    data = gan.batches(4)
    state, _ = ftrain.train_epoch(gan.make_dcgan(), data, step_fn=ftrain.with_accumulation(every=2))
    assert state.step == 2 and state.micro_step == 0


def test_the_two_states_pattern_leaves_no_gradient_on_the_other_model():
    torch.manual_seed(0)
    net_g, net_d = gan.generator(), gan.discriminator()
    real = gan.batches(1)[0]

    def g_loss(model, batch):
        out = net_d(model(torch.randn(len(batch), gan.NZ, 1, 1)))
        return nn.functional.binary_cross_entropy(out, torch.ones_like(out))

    g_state = ftrain.TrainState.create(model=net_g, optimizer=gan.adam(), loss_fn=g_loss)
    g_state, _ = ftrain.train_step(g_state, real)
    assert all(p.grad is None for p in net_d.parameters())


def test_a_frozen_part_gets_no_gradients_and_is_not_updated():
    torch.manual_seed(0)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    before = copy.deepcopy(teacher.state_dict())

    def distill(model, batch):
        with torch.no_grad():
            target = model["teacher"](batch).softmax(-1)
        return nn.functional.cross_entropy(model["student"](batch), target)

    state = ftrain.TrainState.create(
        model={"teacher": teacher, "student": student},
        phases=[
            ftrain.Phase(
                "student",
                optimizes="student",
                optimizer=lambda p: torch.optim.SGD(p, 0.1),
                loss_fn=distill,
            )
        ],
    )
    assert not any(p.requires_grad for p in teacher.parameters())
    state, metrics = ftrain.train_step(state, torch.randn(8, 4))
    assert set(metrics) == {"student_loss"}
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"optimizer": gan.adam()}, ValueError, "were both given"),
        ({"phases": []}, TypeError, "non-empty list"),
        ({"phases": [ftrain.Phase("d", optimizes="nope", optimizer=gan.adam(),
                                  loss_fn=gan.d_loss)]}, ValueError, "not a part"),
        ({"phases": [ftrain.Phase("d", optimizes="discriminator", optimizer=gan.adam(),
                                  loss_fn=gan.d_loss)] * 2}, ValueError, "two phases named"),
    ],
)  # fmt: skip
def test_create_refuses_bad_phases(kwargs, error, match):
    args = {"model": {"generator": gan.generator(), "discriminator": gan.discriminator()}}
    if "phases" not in kwargs:
        args["phases"] = [
            ftrain.Phase("d", optimizes="discriminator", optimizer=gan.adam(), loss_fn=gan.d_loss)
        ]
    with pytest.raises(error, match=match):
        ftrain.TrainState.create(**args, **kwargs)


def test_single_optimizer_views_name_the_phases_on_a_gan():
    state = gan.make_dcgan()
    with pytest.raises(AttributeError, match=r"2 phases \['d', 'g'\]"):
        state.optimizer  # noqa: B018
    assert set(state.optimizers) == {"d", "g"} and state.schedulers == {"d": None, "g": None}
    with pytest.raises(ValueError, match="needs `phase=`"):
        ftrain.forward_backward(state, gan.batches(1)[0])


def test_a_gan_resumes_mid_epoch_bit_for_bit_with_checkpoint_and_early_stopping(tmp_path):
    data = gan.loader(5)

    def callbacks():
        return [
            ftrain.callbacks.EarlyStopping(monitor="val_g_loss", patience=100),
            ftrain.callbacks.Checkpoint(tmp_path / "run", every_n_steps=2),
        ]

    resumed = ftrain.testing.assert_resume_equivalent(
        gan.make_dcgan,
        (data, gan.batches(2)),
        max_steps=12,
        resume_at=7,
        path=tmp_path / "mid.ckpt",
        callbacks=callbacks,
        log_every_n_steps=2,
    )
    assert resumed.step == 12 and isinstance(resumed.extras["noise"], torch.Generator)
    contents = ftrain.read_checkpoint(tmp_path / "mid.ckpt")
    assert set(contents["optimizers"]) == {"d", "g"}
    assert contents["kinds"]["d"] == {"optimizer": "Adam", "scheduler": None}


def test_load_refuses_a_template_whose_optimizer_differs_in_kind(tmp_path):
    path = ftrain.save(gan.make_dcgan(), tmp_path / "a.ckpt")
    template = gan.make_dcgan()
    sgd = torch.optim.SGD(template.model["generator"].parameters(), lr=0.1)
    phases = (template.phases[0], attrs.evolve(template.phases[1], optimizer=sgd))
    with pytest.raises(ftrain.CheckpointError, match="phase 'g' has a SGD optimizer"):
        ftrain.load(template.replace(phases=phases), path)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains_a_gan_with_one_scaler_for_all_optimizers(precision):
    strategy = ftrain.SingleDevice("cpu", precision=precision)
    state = ftrain.place(gan.make_dcgan(), strategy)
    before = [p.clone() for p in state.model.parameters()]
    for real in gan.batches(3):
        state, metrics = ftrain.train_step(state, real)
    assert {"d_loss", "g_loss"} <= set(metrics)
    assert all(not torch.equal(a, b) for a, b in zip(before, state.model.parameters(), strict=True))
    if precision == "16-mixed":  # updated once per step, whatever the number of optimizers
        assert state.scaler._growth_tracker.item() == 3 and float(metrics["skipped"]) == 0.0


def test_skip_nonfinite_skips_only_the_phase_that_went_non_finite():
    state = gan.make_dcgan()
    real = gan.batches(1)[0]
    poisoned = attrs.evolve(
        state.phases[1], loss_fn=lambda m, b, ctx: gan.g_loss(m, b, ctx) * float("nan")
    )
    state = state.replace(phases=(state.phases[0], poisoned))
    g_before = [p.clone() for p in state.model["generator"].parameters()]
    d_before = [p.clone() for p in state.model["discriminator"].parameters()]
    state, metrics = ftrain.with_skip_nonfinite()(state, real)
    assert float(metrics["g_skipped"]) == 1.0 and float(metrics["d_skipped"]) == 0.0
    assert state.step == 1
    assert all(
        torch.equal(a, b)
        for a, b in zip(g_before, state.model["generator"].parameters(), strict=True)
    )
    assert not all(
        torch.equal(a, b)
        for a, b in zip(d_before, state.model["discriminator"].parameters(), strict=True)
    )


def test_the_testing_kit_works_on_a_gan():
    state, batch = gan.make_dcgan(), gan.batches(1)[0]
    assert ftrain.testing.find_unused_parameters(state, batch) == []
    ftrain.testing.assert_pure_step(state, batch)
