"""The MMD-DDM objective (paper Sec. III, Fig. 2, eq. 7) as an object, in the manner of EDM's
``training/loss.py``: the settings go to ``__init__``, the network and the batch to ``__call__``, a
differentiable scalar comes out.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Sequence

import torch

from .features import FeatureExtractor
from .mmd import mmd2_unbiased
from .sampling import get_sampler, sample_seeded, to_unit


class MMDDDMLoss:
    """Unbiased MMD^2 (eq. 7, kernel sums in float64) between real features and the features of samples drawn
    with gradients through the short chain ``timesteps`` of ``sampler`` (``sampler_kw``: its options, e.g.
    DDIM's eta).

    ``checkpoint``: the sampler steps (the first ones, from x_T) recomputed in backward; it may be changed
    between calls (the finetuner does when memory runs out). ``autocast()`` opens the context the networks
    run in (e.g. bf16; the MMD is computed outside it, in fp32 and up). ``gather``, when several processes
    each generate a share of the batch, returns every process's generated features with their gradient
    (``torch.distributed.nn.functional.all_gather``), so each process computes the estimate one process with
    the whole batch would."""

    def __init__(self, extractor: FeatureExtractor, *, shape: Sequence[int], timesteps: Sequence[int],
                 alphas_cumprod: torch.Tensor, sampler: str = "ddim", kernel: str = "cubic",
                 checkpoint: bool | int = False, device=None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 gather: Callable[[torch.Tensor], torch.Tensor] | None = None, **sampler_kw):
        get_sampler(sampler).options(sampler_kw.get("eta"))  # a known sampler, and options it takes
        self.extractor, self.shape, self.timesteps, self.alphas_cumprod = extractor, shape, timesteps, alphas_cumprod
        self.sampler, self.kernel, self.checkpoint, self.device = sampler, kernel, checkpoint, device
        self.autocast, self.gather, self.sampler_kw = autocast, gather, sampler_kw

    def __call__(self, net: Callable, real_features: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
        """The loss of ``net`` on one batch: sample i's generator is seeded by ``seeds[i]`` and draws its x_T and
        then its in-chain noise (``sample_seeded``); ``real_features`` [M, D] carry no gradient."""
        with self.autocast():
            x0 = sample_seeded(net, seeds, self.shape, self.timesteps, self.alphas_cumprod, self.sampler,
                               device=self.device, checkpoint=self.checkpoint, **self.sampler_kw)
            f_gen = self.extractor(to_unit(x0.float())).float()
        return mmd2_unbiased(self.gather(f_gen) if self.gather else f_gen, real_features, self.kernel)


def mmd_ddm_loss(net: Callable, extractor: FeatureExtractor, real_features: torch.Tensor, seeds: Sequence[int],
                 **settings) -> torch.Tensor:
    """``MMDDDMLoss(extractor, **settings)(net, real_features, seeds)``: 0.1.0's function, deprecated."""
    warnings.warn("mmd_ddm_loss is deprecated and goes in 0.3: use MMDDDMLoss(extractor, **settings)(net, "
                  "real_features, seeds)", DeprecationWarning, stacklevel=2)
    return MMDDDMLoss(extractor, **settings)(net, real_features, seeds)
