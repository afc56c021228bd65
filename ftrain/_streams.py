"""Random streams of the draw sites outside training: evaluation, prediction and inference.

Every draw site has its own stream, keyed by the state's ``seed`` and ``stream`` id, the site,
the counters that say where in the run it is (``step``, the batch's index) and the process's rank.
Training draws are keyed in the step itself (`seed_step`); the sites here reseed torch's default
generators the same way before each batch, so every batch of one evaluation draws its own numbers
(MC dropout, a VAE's sampling noise), and evaluating the same state twice draws the same ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ._rng import mix

if TYPE_CHECKING:
    from ._state import TrainState

__all__ = ["EVAL", "INFERENCE", "PREDICT", "seed_site", "site_generator", "site_seed"]

EVAL = 0x5EED_E7A1
"""The site of `eval_step` and `eval_epoch` batches."""
PREDICT = 0x5EED_97ED
"""The site of `predict` batches."""
INFERENCE = 0x5EED_1AFE
"""The site of `inference` blocks."""


def site_seed(state: TrainState, site: int, index: int = 0) -> int:
    """The 63-bit seed of draw ``index`` at ``site`` for ``state`` (on this process)."""
    return mix(state.seed, state.stream, site, state.step, index, state.rank)


def seed_site(state: TrainState, site: int, index: int = 0) -> None:
    """Reseed torch's default generator (and the current CUDA device's) for one draw."""
    seed = site_seed(state, site, index)
    torch.default_generator.manual_seed(seed)
    if state.device.type == "cuda":
        torch.cuda.manual_seed(seed)


def site_generator(state: TrainState, site: int, index: int = 0) -> torch.Generator:
    """A fresh CPU `torch.Generator` seeded for draw ``index`` at ``site``."""
    return torch.Generator().manual_seed(site_seed(state, site, index))
