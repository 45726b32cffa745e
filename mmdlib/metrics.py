"""The metrics, torch-fidelity's implementations on features held in memory: FID, KID, improved precision and
recall, the Inception Score (``score_features``: all of them with the settings in ``METRICS``), and ``embed``,
the features they are computed from.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .features import FeatureExtractor
from .generate import autocast

# the metrics' own settings (part of every score's cache key)
METRICS = {"kid_subsets": 50, "kid_subset_size": 1000, "prc_neighbours": 3, "is_splits": 10}


@torch.no_grad()
def embed(extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 500, device=None,
          precision: str = "fp32") -> torch.Tensor:
    """Metric features [N, D] (float64 on the CPU) of 8-bit images [N, C, H, W] in [0, 1], in batches, through
    the extractor's metric path (``FeatureExtractor.metric_features``)."""
    device = device or next(extractor.parameters()).device
    with autocast(device, precision):
        return torch.cat([extractor.metric_features(b.to(device)).double().cpu() for b in images.split(batch_size)])


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


def precision_recall(f_gen: torch.Tensor, f_real: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019), torch-fidelity's implementation."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    out = prc_features_to_metric(f_gen.float(), f_real.float(), prc_neighborhood=k, prc_batch_size=10000,
                                 save_cpu_ram=True, verbose=False)
    return float(out["precision"]), float(out["recall"])


def inception_score(extractor: FeatureExtractor, f_gen: torch.Tensor) -> tuple[float, float]:
    """Inception Score (torch-fidelity's implementation) from features, through the extractor's classifier
    (``extractor.logits``): Inception's 1008 classes, or the 10 digits in the ``digits-*`` spaces."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = extractor.logits(f_gen.float().to(next(extractor.parameters()).device)).float().cpu()
    out = isc_features_to_metric(logits, splits=METRICS["is_splits"], shuffle=True, rng_seed=2020)
    return float(out["inception_score_mean"]), float(out["inception_score_std"])


def score_features(extractor: FeatureExtractor, f_gen: torch.Tensor, f_real: torch.Tensor) -> dict[str, float]:
    """FID, KID, precision and recall of generated features against real ones, and the Inception Score
    where the space has a classifier (torch-fidelity's implementations; settings in ``METRICS``)."""
    scores = {"fid": fid_from_features(f_gen, f_real),
              "kid": kid_from_features(f_gen, f_real, METRICS["kid_subsets"], METRICS["kid_subset_size"])[0]}
    scores["precision"], scores["recall"] = precision_recall(f_gen, f_real, METRICS["prc_neighbours"])
    if getattr(extractor, "logits", None) is not None:  # a space with a classifier
        scores["is"] = inception_score(extractor, f_gen)[0]
    return scores
