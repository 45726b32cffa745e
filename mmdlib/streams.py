"""Where every random draw comes from: one stream per purpose, per-sample seeds disjoint by construction.

A seed is the bit field ``purpose | run seed | index`` in 32 bits, because torch's CPU generator (MT19937)
keeps only the low 32 bits of what ``manual_seed`` gets: ``manual_seed(1)`` and ``manual_seed(1 + 2**32)``
draw the same numbers. Two draws with different (purpose, seed, index) therefore never share a
generator state, whatever the settings: evaluation never feeds a model an x_T it was trained on, and
a sample grid is never a training batch. Per-sample seeds keep every result independent of batch size
and process count. A sampler's in-chain noise continues the same sample's generator after its x_T
(diffusers' pipelines draw the same way), so it is never x_T again.
"""
from __future__ import annotations

from typing import Iterable

from .errors import MMDLibError

# The position is the purpose's code: append new purposes, never reorder (that would change every result).
PURPOSES = (
    "train",          # x_T (and then the in-chain noise) of each generated training sample: index it * batch + i
    "real-batch",     # which real images an iteration draws: index = iteration
    "eval",           # x_T of evaluation samples: seed = evaluation seed, index = sample
    "grid",           # sample grids shown in the book and written during finetuning
    "interpolation",  # end points of latent interpolations (eq. 8)
    "toy",            # the theory chapter's 2-D toy (data, training, sampling)
    "memory-plan",    # the stand-in batch that measures activation memory before a run (no result depends on it)
    "dropout",        # torch's global generator before each finetuning step with dropout on: index = iteration
)
PURPOSE_BITS, SEED_BITS, INDEX_BITS = 3, 8, 21
MAX_SEED, MAX_INDEX = 2**SEED_BITS - 1, 2**INDEX_BITS - 1


def stream_seed(purpose: str, seed: int, index: int) -> int:
    """The 32-bit generator seed of draw ``index`` in the stream (``purpose``, ``seed``)."""
    if purpose not in PURPOSES:
        raise MMDLibError(f"unknown random stream {purpose!r}; known: {', '.join(PURPOSES)}.")
    if isinstance(seed, bool) or int(seed) != seed or not 0 <= seed <= MAX_SEED:
        raise MMDLibError(f"seed must be an integer in 0..{MAX_SEED}, got {seed!r} (each purpose has "
                          f"{MAX_SEED + 1} seeds of {MAX_INDEX + 1:,} draws, disjoint by construction).")
    if not 0 <= index <= MAX_INDEX:
        raise MMDLibError(f"the {purpose!r} stream has draws 0..{MAX_INDEX:,}, asked for draw {index:,}; use fewer "
                          f"samples (or, when finetuning, fewer iterations x batch size) per seed.")
    return (PURPOSES.index(purpose) << (SEED_BITS + INDEX_BITS)) | (int(seed) << INDEX_BITS) | int(index)


def stream_seeds(purpose: str, seed: int, indices: Iterable[int]) -> list[int]:
    """Per-sample seeds of draws ``indices`` in the stream (``purpose``, ``seed``)."""
    indices = list(indices)
    if indices:  # one check of the extremes is enough: the layout is monotone in the index
        stream_seed(purpose, seed, min(indices))
        stream_seed(purpose, seed, max(indices))
    base = stream_seed(purpose, seed, 0)
    return [base + int(i) for i in indices]
