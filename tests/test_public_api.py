"""The public surface, snapshotted: a change here is a deliberate API change (update CHANGELOG)."""

import ftrain

TOP_LEVEL = [
    "Callback", "CallbackSignatureError", "CallbackWithMemory", "CheckpointError", "DDP",
    "DevicePrefetcher", "EpochAwareStep", "EpochEnd", "EpochSampler", "EpochStart", "EvalEnd",
    "Event", "FSDP", "FitEnd", "FitStart", "FtrainError", "Inference", "Interrupted",
    "IntervalEnd", "Loss", "LossFn", "NonFiniteError", "Phase", "PlacementError", "SingleDevice",
    "StaleStateError", "Step", "StepContext", "StepEnd", "StepFn", "Strategy", "TrainState",
    "Unplaced", "WeightAverage", "__version__", "apply_gradients", "as_step", "batch_size",
    "callbacks", "chain", "checkpoint_record", "end_step", "eval_epoch", "eval_step", "every",
    "fit", "fork", "forward_backward", "inference", "latest_checkpoint", "load", "move", "on",
    "place", "plot_history", "predict", "prepare_loader", "read_checkpoint", "save",
    "step_scheduler", "strategies", "supervised", "testing", "train_epoch", "train_step",
    "update_bn", "using_weights", "when", "with_accumulation", "with_ema", "with_grad_clip",
    "with_skip_nonfinite", "with_swa",
]  # fmt: skip

CALLBACKS = [
    "CSVLogger", "Checkpoint", "CheckpointState", "EarlyStopping", "EarlyStoppingState",
    "LearningRateMonitor", "ModelSummary", "ProgressBar", "RichModelSummary", "RichProgressBar",
    "TensorBoardLogger", "TerminateOnNaN", "Timer", "TimerState", "summarize",
]  # fmt: skip

TESTING = [
    "assert_no_param_change", "assert_overfits", "assert_pure_step", "assert_resume_equivalent",
    "assert_states_equal", "assert_step_changes_params", "find_unused_parameters", "toy_batch",
    "toy_state",
]  # fmt: skip


def test_public_names_are_exactly_these():
    assert sorted(ftrain.__all__) == TOP_LEVEL
    assert sorted(ftrain.callbacks.__all__) == CALLBACKS
    assert sorted(ftrain.testing.__all__) == TESTING
    assert sorted(ftrain.strategies.__all__) == [
        "DDP", "FSDP", "SingleDevice", "Unplaced", "resolve_device",
    ]  # fmt: skip


def test_every_public_name_resolves_and_is_documented():
    for module, names in ((ftrain, TOP_LEVEL), (ftrain.callbacks, CALLBACKS),
                          (ftrain.testing, TESTING)):  # fmt: skip
        for name in names:
            obj = getattr(module, name)
            if callable(obj) and not name.startswith("_"):
                assert obj.__doc__, f"{module.__name__}.{name} has no docstring"
