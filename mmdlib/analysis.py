"""Analyses of generated samples that the chapters show: the paper's Fig. 4 check that finetuning does not
teach the model to copy its training images (distances to the nearest real image, against the real
images' own distances to each other)."""
from __future__ import annotations

import pandas as pd
import torch

from . import devices
from .evaluate import reference_features
from .features import get_feature_extractor
from .metrics import embed

REAL_ROW = "real (nearest other real image)"


def nearest_real(samples: torch.Tensor, dataset: str, split: str, space: str, k: int = 5,
                 **data_kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and indices [N, k] of each sample's k nearest real images (Euclidean distance in the
    feature space ``space``): the paper's Fig. 4 check that finetuning does not copy the training set."""
    device = devices.pick_device()
    ref = reference_features(dataset, split, space, device=device, **data_kw)
    d = torch.cdist(embed(get_feature_extractor(space).to(device), samples), ref)
    return d.topk(k, largest=False)


def real_nearest_distance(dataset: str, split: str, space: str, n: int = 500, seed: int = 0,
                          **data_kw) -> torch.Tensor:
    """For ``n`` random real images, the distance to their nearest *other* real image: the scale a copy
    of the training set would fall far below."""
    ref = reference_features(dataset, split, space, device=devices.pick_device(), **data_kw)
    idx = torch.randperm(len(ref), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.cdist(ref[idx], ref).topk(2, largest=False).values[:, 1]


def nearest_distance_table(distances: dict[str, torch.Tensor], real: torch.Tensor) -> pd.DataFrame:
    """One row per set of samples (``distances``: each sample's distance to its nearest real image) and one
    for the real images themselves (``real``, from ``real_nearest_distance``): the median, the 10th
    percentile, and the share of samples nearer to a real image than the real images' own 10th percentile
    (10% for the data itself; a model that copies its training set scores far more)."""
    low = real.quantile(0.1)
    rows = {**distances, REAL_ROW: real}
    return pd.DataFrame({name: {"median": d.median().item(), "10th percentile": d.quantile(0.1).item(),
                                "share below real's 10th percentile": (d < low).float().mean().item()}
                         for name, d in rows.items()}).T


def copying_verdict(close_share: float) -> str:
    """Fig. 4's reading in words, from the share of samples nearer to a real image than real images' own
    10th percentile (10% for the data itself): over 20% is a sign of copying."""
    if close_share <= 0.2:
        return "no closer to the training set than real images are to each other"
    return "closer to the training set than real images are to each other, a sign of copying"

