"""Built-in callbacks. Each is a callable ``(state, event) -> state``.

Observers (progress bars, summaries, loggers) return the state unchanged and do I/O on rank 0
only; callbacks with memory keep it in ``state.callback_state[name]``, so it is checkpointed.
"""

from ._checkpoint import Checkpoint as Checkpoint
from ._checkpoint import CheckpointState as CheckpointState
from ._early_stopping import EarlyStopping as EarlyStopping
from ._early_stopping import EarlyStoppingState as EarlyStoppingState
from ._loggers import CSVLogger as CSVLogger
from ._loggers import TensorBoardLogger as TensorBoardLogger
from ._monitors import LearningRateMonitor as LearningRateMonitor
from ._monitors import TerminateOnNaN as TerminateOnNaN
from ._monitors import Timer as Timer
from ._monitors import TimerState as TimerState
from ._progress import ProgressBar as ProgressBar
from ._rich_progress import RichProgressBar as RichProgressBar
from ._summary import ModelSummary as ModelSummary
from ._summary import RichModelSummary as RichModelSummary
from ._summary import summarize as summarize

__all__ = (
    "CSVLogger",
    "Checkpoint",
    "CheckpointState",
    "EarlyStopping",
    "EarlyStoppingState",
    "LearningRateMonitor",
    "ModelSummary",
    "ProgressBar",
    "RichModelSummary",
    "RichProgressBar",
    "TensorBoardLogger",
    "TerminateOnNaN",
    "Timer",
    "TimerState",
    "summarize",
)
