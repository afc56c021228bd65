"""Built-in callbacks. Each is a callable ``(state, event) -> state``."""

from ._early_stopping import EarlyStopping as EarlyStopping
from ._early_stopping import EarlyStoppingState as EarlyStoppingState
from ._progress import ProgressBar as ProgressBar

__all__ = ("EarlyStopping", "EarlyStoppingState", "ProgressBar")
