"""The MMD-DDM objective (paper Sec. III, Fig. 2, eq. 7) as one pure function, in the manner of EDM's
``training/loss.py``: what it needs comes in as arguments, a differentiable scalar goes out.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch

from .features import FeatureExtractor
from .mmd import mmd2_unbiased
from .sampling import sample_seeded, to_unit


def mmd_ddm_loss(net: Callable, extractor: FeatureExtractor, real_features: torch.Tensor, seeds: Sequence[int], *,
                 shape: Sequence[int], timesteps: Sequence[int], alphas_cumprod: torch.Tensor, sampler: str = "ddim",
                 kernel: str = "cubic", checkpoint: bool | int = False, device=None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None, **sampler_kw) -> torch.Tensor:
    """Unbiased MMD^2 (eq. 7, kernel sums in float64) between ``real_features`` [M, D] and the features of
    samples drawn with gradients through the short chain ``timesteps``: sample i's generator is seeded by
    ``seeds[i]`` and draws its x_T and then its in-chain noise (``sample_seeded``).

    ``autocast()`` opens the context the networks run in (e.g. bf16; the MMD is computed outside it, in
    fp32 and up). ``gather``, when several processes each generate a share of the batch, returns every
    process's generated features with their gradient (``torch.distributed.nn.functional.all_gather``),
    so each process computes the estimate one process with the whole batch would."""
    with autocast():
        x0 = sample_seeded(net, seeds, shape, timesteps, alphas_cumprod, sampler, device=device, checkpoint=checkpoint,
                           **sampler_kw)
        f_gen = extractor(to_unit(x0.float())).float()
    return mmd2_unbiased(gather(f_gen) if gather else f_gen, real_features, kernel)
