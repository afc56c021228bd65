"""ftrain: a functional training toolkit for PyTorch.

A training run is data (`TrainState`) flowing through plain functions (`train_step`,
`eval_epoch`, `fit`, ...). The documentation lives in the `docs/` folder of the source tree.
"""

from importlib.metadata import PackageNotFoundError, version

from . import callbacks as callbacks
from . import strategies as strategies
from . import testing as testing
from ._averaging import WeightAverage as WeightAverage
from ._averaging import using_weights as using_weights
from ._averaging import with_ema as with_ema
from ._averaging import with_swa as with_swa
from ._batch import batch_size as batch_size
from ._batch import move as move
from ._callback import chain as chain
from ._callback import every as every
from ._callback import on as on
from ._callback import when as when
from ._checkpoint import checkpoint_record as checkpoint_record
from ._checkpoint import latest_checkpoint as latest_checkpoint
from ._checkpoint import load as load
from ._checkpoint import read_checkpoint as read_checkpoint
from ._checkpoint import save as save
from ._data import EpochSampler as EpochSampler
from ._data import prepare_loader as prepare_loader
from ._epoch import eval_epoch as eval_epoch
from ._epoch import train_epoch as train_epoch
from ._errors import CallbackSignatureError as CallbackSignatureError
from ._errors import CheckpointError as CheckpointError
from ._errors import FtrainError as FtrainError
from ._errors import NonFiniteError as NonFiniteError
from ._errors import PlacementError as PlacementError
from ._errors import StaleStateError as StaleStateError
from ._events import EpochEnd as EpochEnd
from ._events import EpochStart as EpochStart
from ._events import EvalEnd as EvalEnd
from ._events import Event as Event
from ._events import FitEnd as FitEnd
from ._events import FitStart as FitStart
from ._events import Interrupted as Interrupted
from ._events import IntervalEnd as IntervalEnd
from ._events import StepEnd as StepEnd
from ._fit import fit as fit
from ._fork import fork as fork
from ._inference import Inference as Inference
from ._inference import inference as inference
from ._loss import supervised as supervised
from ._outputs import Loss as Loss
from ._outputs import StepContext as StepContext
from ._phases import Phase as Phase
from ._place import place as place
from ._plot import plot_history as plot_history
from ._predict import predict as predict
from ._prefetch import DevicePrefetcher as DevicePrefetcher
from ._schedulers import step_scheduler as step_scheduler
from ._state import TrainState as TrainState
from ._step import apply_gradients as apply_gradients
from ._step import end_step as end_step
from ._step import eval_step as eval_step
from ._step import forward_backward as forward_backward
from ._step import train_step as train_step
from ._transforms import Step as Step
from ._transforms import as_step as as_step
from ._transforms import with_accumulation as with_accumulation
from ._transforms import with_grad_clip as with_grad_clip
from ._transforms import with_skip_nonfinite as with_skip_nonfinite
from ._typing import Callback as Callback
from ._typing import CallbackWithMemory as CallbackWithMemory
from ._typing import EpochAwareStep as EpochAwareStep
from ._typing import LossFn as LossFn
from ._typing import StepFn as StepFn
from ._typing import Strategy as Strategy
from ._update_bn import update_bn as update_bn
from .strategies import DDP as DDP
from .strategies import FSDP as FSDP
from .strategies import SingleDevice as SingleDevice
from .strategies import Unplaced as Unplaced

try:
    __version__ = version("torch-ftrain")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = (
    "DDP",
    "FSDP",
    "Callback",
    "CallbackSignatureError",
    "CallbackWithMemory",
    "CheckpointError",
    "DevicePrefetcher",
    "EpochAwareStep",
    "EpochEnd",
    "EpochSampler",
    "EpochStart",
    "EvalEnd",
    "Event",
    "FitEnd",
    "FitStart",
    "FtrainError",
    "Inference",
    "Interrupted",
    "IntervalEnd",
    "Loss",
    "LossFn",
    "NonFiniteError",
    "Phase",
    "PlacementError",
    "SingleDevice",
    "StaleStateError",
    "Step",
    "StepContext",
    "StepEnd",
    "StepFn",
    "Strategy",
    "TrainState",
    "Unplaced",
    "WeightAverage",
    "__version__",
    "apply_gradients",
    "as_step",
    "batch_size",
    "callbacks",
    "chain",
    "checkpoint_record",
    "end_step",
    "eval_epoch",
    "eval_step",
    "every",
    "fit",
    "fork",
    "forward_backward",
    "inference",
    "latest_checkpoint",
    "load",
    "move",
    "on",
    "place",
    "plot_history",
    "predict",
    "prepare_loader",
    "read_checkpoint",
    "save",
    "step_scheduler",
    "strategies",
    "supervised",
    "testing",
    "train_epoch",
    "train_step",
    "update_bn",
    "using_weights",
    "when",
    "with_accumulation",
    "with_ema",
    "with_grad_clip",
    "with_skip_nonfinite",
    "with_swa",
)
