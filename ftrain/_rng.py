"""Deterministic randomness derived from the state's seed and counters.

ftrain never reads torch's global generator to decide anything. At the start of every
`forward_backward` it *reseeds* the default CPU generator (and the current CUDA device's generator
when the model is on CUDA) from ``(seed, stream, step, micro_step, rank, phase)``. That makes
dropout and any other ``torch.rand*`` call inside `loss_fn` a function of the state, at a cost of
about a microsecond per step. ftrain does not restore the previous generator state afterwards:
code outside the step that needs its own random stream should use its own ``torch.Generator``.
"""

from __future__ import annotations

import torch

_MASK = (1 << 64) - 1


def mix(*values: int) -> int:
    """Hash integers into one 63-bit seed (splitmix64 finaliser over a running sum)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


def seed_step(
    seed: int,
    step: int,
    micro_step: int,
    cuda: bool,
    rank: int = 0,
    stream: int = 0,
    site: int = 0,
) -> None:
    """Reseed torch's generators for one forward/backward pass.

    ``rank`` decorrelates processes, ``stream`` states that share a seed, and ``site`` the draw
    sites of one step (training phase ``i`` is site ``i``). With all three zero the seed is the
    one earlier versions derived from ``(seed, step, micro_step)``.
    """
    # One splitmix64 finaliser over a linear combination: the hot-path version of `mix`.
    h = (
        seed * 0x9E3779B97F4A7C15
        + step * 0xBF58476D1CE4E5B9
        + micro_step * 0x94D049BB133111EB
        + rank * 0xD6E8FEB86659FD93
        + stream * 0xA0761D6478BD642F
        + site * 0xE7037ED1A0B428DB
    ) & _MASK
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK
    s = (h ^ (h >> 31)) & 0x7FFFFFFFFFFFFFFF
    torch.default_generator.manual_seed(s)
    if cuda:
        torch.cuda.manual_seed(s)
