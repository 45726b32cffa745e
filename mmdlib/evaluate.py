"""Evaluation: generate samples in memory and score them in any feature space (FID, KID via torch-fidelity)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import MMDLibError
from .features import FeatureExtractor, to_unit
from .sampling import ddim_sample, ddpm_sample, generators, noise
from .speed import Speed

SAMPLERS: dict[str, Callable] = {"ddim": ddim_sample, "ddpm": ddpm_sample}


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to 8-bit levels, as saving them to PNG would."""
    return torch.round(images.clamp(0, 1) * 255) / 255


def _autocast(device, precision: str):
    """The network under bf16 autocast for ``precision="bf16"``; "fp32" (the default) is exact."""
    if precision not in ("fp32", "bf16"):
        raise MMDLibError(f"unknown evaluation precision {precision!r}; known: fp32, bf16.")
    return Speed(bf16=precision == "bf16").autocast(torch.device(device or "cpu"))


@torch.no_grad()
def generate(model: Callable, n: int, timesteps: Sequence[int], alphas_cumprod: torch.Tensor, shape: Sequence[int],
             sampler: str = "ddim", seed: int = 0, batch_size: int = 500, device=None, progress: bool = False,
             precision: str = "fp32", **kw) -> torch.Tensor:
    """``n`` samples as float [n, C, H, W] in [0, 1] (8-bit levels); sample i uses seed ``seed * 10**6 + i``.
    ``precision="bf16"`` runs the network under bf16 autocast (the chain's state stays fp32)."""
    out = []
    for start in tqdm(range(0, n, batch_size), desc=f"sampling {len(timesteps)} steps", disable=not progress):
        seeds = [seed * 10**6 + i for i in range(start, min(n, start + batch_size))]
        with _autocast(device, precision):
            x = SAMPLERS[sampler](model, noise(seeds, shape, device=device), timesteps, alphas_cumprod,
                                  generator=generators(seeds), **kw)
        out.append(quantize(to_unit(x.float())).cpu())
    return torch.cat(out)


@torch.no_grad()
def embed(extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 500, device=None,
          precision: str = "fp32") -> torch.Tensor:
    """Features [N, D] (float64 on the CPU) of images [N, C, H, W] in [0, 1], in batches."""
    device = device or next(extractor.parameters()).device
    with _autocast(device, precision):
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


def dataset_images(dataset, n: int | None = None, seed: int = 0) -> torch.Tensor:
    """All (or ``n`` seeded random) images of a dataset as one float tensor [N, C, H, W]."""
    from .data import TensorImages

    idx = list(range(len(dataset))) if n is None or n >= len(dataset) else \
        torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    if isinstance(dataset, TensorImages):  # in memory: one indexing, no per-item loop
        return dataset.float_images(idx)
    return torch.stack([dataset[i][0] for i in idx])


def reference_features(dataset_name: str, split: str, space: str, extractor: FeatureExtractor | None = None,
                       n: int | None = None, device=None, **data_kw) -> torch.Tensor:
    """Features of real images, cached under $MMDLIB_CACHE keyed by dataset, split, feature space and count."""
    from .cache import cached
    from .data import get_dataset
    from .features import get_feature_extractor

    key = {"dataset": dataset_name, "split": split, "space": space, "n": n,
           **{k: str(v) for k, v in data_kw.items()}}

    def build(tmp):
        ds = get_dataset(dataset_name, split=split, **data_kw)
        f = extractor or get_feature_extractor(space)
        torch.save(embed(f.to(device or "cpu"), dataset_images(ds, n), device=device).float(), tmp / "features.pt")

    return torch.load(cached("reference-features", key, build) / "features.pt").double()


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
    out = isc_features_to_metric(logits, splits=10, shuffle=True, rng_seed=2020)
    return float(out["inception_score_mean"]), float(out["inception_score_std"])


def evaluate(model, dataset: str = "digits", split: str = "all", budgets: Sequence[int] = (5, 10, 20),
             spaces: Sequence[str] = ("digits-a", "digits-b"), n: int = 5000, seeds: Sequence[int] = (0,),
             sampler: str = "ddim", schedule: str = "linear", weights_path: str | None = None, device=None,
             progress: bool = True, precision: str = "fp32", **data_kw) -> dict:
    """Score a model across budgets in each feature space: FID, KID and precision/recall (mean and std
    over seeds; all torch-fidelity's implementations), plus the Inception Score where the space has a
    classifier (``inception``; the ``digits-*`` spaces score with their digit classifier). FID in
    ``inception`` is the standard FID; in ``clip`` it is FID_CLIP. Returns a plain dict
    ``{budget: {space: {"fid": mean, "fid_std": ..., "kid": ..., "precision": ..., "fid_per_seed": [...]}}}``.
    ``precision="bf16"`` samples and embeds under bf16 autocast (faster on GPUs, not exact: keep "fp32" for
    numbers compared with the paper's; the reference features are always computed in fp32)."""
    from .features import get_feature_extractor
    from .schedules import timestep_subset

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    extractors = {s: get_feature_extractor(s, **({"weights_path": weights_path} if s == "inception" and weights_path
                                                 else {})).to(device) for s in spaces}
    refs = {s: reference_features(dataset, split, s, extractors[s], device=device, **data_kw) for s in spaces}
    results: dict = {}
    for b in budgets:
        steps = timestep_subset(b, model.T, schedule)
        per: dict = {s: {} for s in spaces}
        for seed in seeds:
            x = generate(model.unet, n, steps, model.alphas_cumprod, model.sample_shape, sampler=sampler, seed=seed,
                         device=device, progress=progress, precision=precision)
            for s in spaces:
                f = embed(extractors[s], x, device=device, precision=precision)
                scores = {"fid": fid_from_features(f, refs[s]), "kid": kid_from_features(f, refs[s], subsets=50)[0]}
                scores["precision"], scores["recall"] = precision_recall(f, refs[s])
                if hasattr(extractors[s], "logits"):
                    scores["is"] = inception_score(extractors[s], f)[0]
                for k, v in scores.items():
                    per[s].setdefault(k, []).append(v)
        results[b] = {}
        for s in spaces:
            row = {}
            for k, vals in per[s].items():
                row[k], row[f"{k}_std"] = mean_std(vals)
            row["fid_per_seed"] = per[s]["fid"]
            results[b][s] = row
    return results


def table(results: dict[str, dict], space: str, metric: str = "fid"):
    """The paper's table layout: rows are methods (the keys of ``results``), columns are budgets."""
    import pandas as pd

    rows = {name: {f"|T|={b}": r[b][space][metric] for b in r} for name, r in results.items()}
    return pd.DataFrame.from_dict(rows, orient="index")
