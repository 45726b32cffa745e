"""The metrics, torch-fidelity's implementations on features held in memory: FID, KID, improved precision and
recall, the Inception Score (``score_features``: all of them with the settings in ``METRICS``), and ``embed``,
the features they are computed from.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .errors import MMDLibError
from .features import ADM_STATISTICS, FeatureExtractor
from .generate import autocast

# The metrics' own settings (part of every score's cache key): torch-fidelity's defaults (``torch_fidelity.defaults``;
# a test checks they agree), so that our KID, precision/recall and IS are ``torch_fidelity.calculate_metrics``'
# on the same images. Like torch-fidelity's, the features the metrics see are float32.
METRICS = {"kid_subsets": 100, "kid_subset_size": 1000, "kid_seed": 2020, "prc_neighbours": 3, "is_splits": 10,
           "is_seed": 2020, "features": "float32"}


@torch.no_grad()
def embed(extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 500, device=None,
          precision: str = "fp32") -> torch.Tensor:
    """Metric features [N, D] (float64 on the CPU) of 8-bit images [N, C, H, W] in [0, 1], in batches, through
    the extractor's metric path (``FeatureExtractor.metric_features``)."""
    device = device or next(extractor.parameters()).device
    with autocast(device, precision):
        return torch.cat([extractor.metric_features(b.to(device)).double().cpu() for b in images.split(batch_size)])


def _as_metric_input(f: torch.Tensor) -> torch.Tensor:
    """Features as torch-fidelity's metrics receive them: float32 on the CPU (METRICS["features"])."""
    return f.detach().to("cpu", torch.float32)


def statistics(f: torch.Tensor) -> dict[str, np.ndarray]:
    """FID's Gaussian statistics of a feature set: ``{"mu", "sigma"}`` (torch-fidelity's implementation)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(_as_metric_input(f))


def fid_from_statistics(s1: dict, s2: dict) -> float:
    """Frechet distance between two Gaussians ``{"mu", "sigma"}`` (torch-fidelity's implementation; in float64
    when their types differ, e.g. our float32 features' statistics against a reference file's float64 ones)."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    if s1["mu"].dtype != s2["mu"].dtype:
        s1, s2 = ({k: np.asarray(v, np.float64) for k, v in s.items()} for s in (s1, s2))
    return float(fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"])


def fid_from_features(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (torch-fidelity's implementation)."""
    return fid_from_statistics(statistics(f1), statistics(f2))


def kid_from_features(f1: torch.Tensor, f2: torch.Tensor, subsets: int = METRICS["kid_subsets"],
                      subset_size: int = METRICS["kid_subset_size"], seed: int = METRICS["kid_seed"]
                      ) -> tuple[float, float]:
    """KID mean and std over subsets (torch-fidelity's implementation and defaults, cubic kernel): with sets
    of at least ``subset_size`` features, ``torch_fidelity.calculate_metrics(kid=True)``'s value on the same
    images. Smaller sets use subsets of the smaller set's size (torch-fidelity refuses them)."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    size = min(subset_size, len(f1), len(f2))
    out = kid_features_to_metric(_as_metric_input(f1), _as_metric_input(f2), kid_subsets=subsets,
                                 kid_subset_size=size, kid_kernel="poly", kid_kernel_poly_degree=3,
                                 kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, rng_seed=seed, verbose=False)
    return float(out["kernel_inception_distance_mean"]), float(out["kernel_inception_distance_std"])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def precision_recall(f_gen: torch.Tensor, f_real: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019), torch-fidelity's implementation."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    out = prc_features_to_metric(_as_metric_input(f_gen), _as_metric_input(f_real), prc_neighborhood=k, prc_batch_size=10000,
                                 save_cpu_ram=True, verbose=False)
    return float(out["precision"]), float(out["recall"])


def inception_score(extractor: FeatureExtractor, f_gen: torch.Tensor) -> tuple[float, float]:
    """Inception Score (torch-fidelity's implementation) from features, through the extractor's classifier
    (``extractor.logits``): Inception's 1008 classes, or the 10 digits in the ``digits-*`` spaces."""
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = extractor.logits(f_gen.float().to(next(extractor.parameters()).device)).float().cpu()
    out = isc_features_to_metric(logits, splits=METRICS["is_splits"], shuffle=True,
                                 rng_seed=METRICS["is_seed"])
    return float(out["inception_score_mean"]), float(out["inception_score_std"])


def reference_statistics(path, dims: dict[str, int]) -> dict[str, dict[str, np.ndarray]]:
    """The FID statistics ``{space: {"mu", "sigma"}}`` of an ADM reference batch (keys ``ADM_STATISTICS``) for
    the spaces of ``dims`` (space: feature dimension) that it holds, checked (shapes, finite values)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            held = {k: npz[k] for k in npz.files if k in {k for pair in ADM_STATISTICS.values() for k in pair}}
            files = list(npz.files)
    except (OSError, ValueError) as e:
        raise MMDLibError(f"reference {str(path)!r} is not a NumPy .npz file of statistics ({e}).") from None
    out = {}
    for space, (m, s) in ADM_STATISTICS.items():
        if space not in dims or m not in held or s not in held:
            continue
        mu, sigma, d = held[m].astype(np.float64), held[s].astype(np.float64), dims[space]
        if mu.shape != (d,) or sigma.shape != (d, d) or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
            raise MMDLibError(f"reference {str(path)!r}: {m} and {s} must be finite, of shapes ({d},) and ({d}, {d}) "
                              f"for {space}; got {mu.shape} and {sigma.shape}.")
        out[space] = {"mu": mu, "sigma": sigma}
    if not out:
        raise MMDLibError(f"reference {str(path)!r} holds none of the statistics asked for ({', '.join(ADM_STATISTICS)}"
                          f": keys {', '.join(k for pair in ADM_STATISTICS.values() for k in pair)}); its keys: "
                          f"{', '.join(files) or 'none'}.")
    return out


def score_statistics(extractor: FeatureExtractor, f_gen: torch.Tensor, reference: dict) -> dict[str, float]:
    """FID of generated features against given statistics (an ADM reference batch), and the Inception Score
    where the space has a classifier: KID and precision/recall need the real features themselves."""
    return _with_inception_score({"fid": fid_from_statistics(statistics(f_gen), reference)}, extractor, f_gen)


def score_features(extractor: FeatureExtractor, f_gen: torch.Tensor, f_real: torch.Tensor) -> dict[str, float]:
    """FID, KID, precision and recall of generated features against real ones, and the Inception Score
    where the space has a classifier (torch-fidelity's implementations; settings in ``METRICS``)."""
    scores = {"fid": fid_from_features(f_gen, f_real),
              "kid": kid_from_features(f_gen, f_real)[0]}
    scores["precision"], scores["recall"] = precision_recall(f_gen, f_real, METRICS["prc_neighbours"])
    return _with_inception_score(scores, extractor, f_gen)


def _with_inception_score(scores: dict, extractor: FeatureExtractor, f_gen: torch.Tensor) -> dict:
    """``scores`` with the Inception Score added where the space has a classifier."""
    if getattr(extractor, "logits", None) is not None:
        scores["is"] = inception_score(extractor, f_gen)[0]
    return scores
