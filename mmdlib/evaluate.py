"""Evaluation: generate samples in memory and score them in any feature space (FID, KID via torch-fidelity)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .features import FeatureExtractor, to_unit
from .sampling import ddim_sample, ddpm_sample, generators, noise

SAMPLERS: dict[str, Callable] = {"ddim": ddim_sample, "ddpm": ddpm_sample}


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to 8-bit levels, as saving them to PNG would."""
    return torch.round(images.clamp(0, 1) * 255) / 255


@torch.no_grad()
def generate(model: Callable, n: int, timesteps: Sequence[int], alphas_cumprod: torch.Tensor, shape: Sequence[int],
             sampler: str = "ddim", seed: int = 0, batch_size: int = 500, device=None, progress: bool = False,
             **kw) -> torch.Tensor:
    """``n`` samples as float [n, C, H, W] in [0, 1] (8-bit levels); sample i uses seed ``seed * 10**6 + i``."""
    out = []
    for start in tqdm(range(0, n, batch_size), desc=f"sampling {len(timesteps)} steps", disable=not progress):
        seeds = [seed * 10**6 + i for i in range(start, min(n, start + batch_size))]
        x = SAMPLERS[sampler](model, noise(seeds, shape, device=device), timesteps, alphas_cumprod,
                              generator=generators(seeds), **kw)
        out.append(quantize(to_unit(x.float())).cpu())
    return torch.cat(out)


@torch.no_grad()
def embed(extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 500, device=None) -> torch.Tensor:
    """Features [N, D] (float64 on the CPU) of images [N, C, H, W] in [0, 1], in batches."""
    device = device or next(extractor.parameters()).device
    return torch.cat([extractor(b.to(device)).double().cpu() for b in images.split(batch_size)])


def fid_from_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (torch-fidelity's implementation)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    s1, s2 = fid_features_to_statistics(f1.double().cpu()), fid_features_to_statistics(f2.double().cpu())
    return float(fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"])


def kid_from_features(f1: torch.Tensor, f2: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """KID mean and std over subsets (torch-fidelity's implementation, cubic kernel)."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    size = min(subset_size, len(f1), len(f2))
    out = kid_features_to_metric(f1.double().cpu(), f2.double().cpu(), kid_subsets=subsets, kid_subset_size=size,
                                 kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                 kid_kernel_poly_coef0=1, rng_seed=seed, verbose=False)
    return float(out["kernel_inception_distance_mean"]), float(out["kernel_inception_distance_std"])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
