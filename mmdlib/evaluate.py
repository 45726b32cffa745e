"""Evaluation: generate samples in memory and score them in any feature space (FID, KID via torch-fidelity).

``EvalConfig`` holds every evaluation setting and its default (the CLI, ``experiments``, the demo and the
notebooks' presets read it). Evaluation latents come from their own random stream (``mmdlib.streams``),
disjoint from the training noise, so a finetuned model is never scored on an x_T it was trained on.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import MMDLibError
from .features import FeatureExtractor
from .sampling import resolve_spacing, sample_seeded, sampler_kwargs, to_unit
from .schedules import timestep_subset
from .speed import Speed
from .streams import stream_seeds

EVAL_PRECISIONS = ("fp32", "bf16")
# the metrics' own settings (part of every score's cache key)
METRICS = {"kid_subsets": 50, "kid_subset_size": 1000, "prc_neighbours": 3, "is_splits": 10}


@dataclasses.dataclass
class EvalConfig:
    """Every evaluation setting, with the digits defaults: FID/KID/precision/recall (and IS where the space
    has a classifier) of ``n`` samples per budget and evaluation seed, against ``dataset``/``split``."""

    dataset: str = "digits"
    split: str = "all"
    data_root: str | None = None
    budgets: tuple[int, ...] = (5, 10, 20)
    spaces: tuple[str, ...] = ("digits-a", "digits-b")
    n: int = 5000  # generated samples per budget and seed
    seeds: tuple[int, ...] = (0, 1, 2)  # evaluation seeds (an int k means 0..k-1); mean and std over them
    sampler: str = "ddim"
    eta: float = 0.0
    timestep_spacing: str = "auto"  # which |tau| timesteps a budget visits: the sampler's own, or TIMESTEP_SPACINGS
    precision: str = "fp32"  # "bf16": sample and embed under bf16 autocast (faster on GPUs, not exact)

    def __post_init__(self):
        if isinstance(self.seeds, int) and not isinstance(self.seeds, bool):
            if self.seeds < 1:
                raise MMDLibError(f"seeds must be >= 1 (the number of evaluation seeds), got {self.seeds}.")
            self.seeds = tuple(range(self.seeds))
        self.seeds, self.budgets = tuple(int(s) for s in self.seeds), tuple(int(b) for b in self.budgets)
        self.spaces = (self.spaces,) if isinstance(self.spaces, str) else tuple(self.spaces)

    @property
    def spacing(self) -> str:
        """The timestep spacing in force: ``timestep_spacing``, with "auto" resolved to the sampler's own."""
        return resolve_spacing(self.sampler, self.timestep_spacing)

    def check(self) -> "EvalConfig":
        """Refuse bad values with a message naming the value and what is allowed, before any work."""
        from .features import FEATURES

        if self.n < 2:
            raise MMDLibError(f"n must be >= 2 generated samples per budget and seed, got {self.n}.")
        if not self.seeds or not self.budgets or not self.spaces:
            raise MMDLibError("seeds, budgets and spaces must each name at least one value.")
        if min(self.budgets) < 1:
            raise MMDLibError(f"budgets must be sampling step counts >= 1, got {list(self.budgets)}.")
        for s in self.spaces:
            if s not in FEATURES:
                raise MMDLibError(f"unknown feature space {s!r}; known: {', '.join(FEATURES)}.")
        if self.precision not in EVAL_PRECISIONS:
            raise MMDLibError(f"unknown evaluation precision {self.precision!r}; known: {', '.join(EVAL_PRECISIONS)}.")
        sampler_kwargs(self.sampler, self.eta)
        resolve_spacing(self.sampler, self.timestep_spacing)  # a known spacing
        for seed in self.seeds:
            stream_seeds("eval", seed, [0, self.n - 1])
        return self


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to 8-bit levels, as saving them to PNG would."""
    return torch.round(images.clamp(0, 1) * 255) / 255


def _autocast(device, precision: str):
    """The network under bf16 autocast for ``precision="bf16"``; "fp32" (the default) is exact."""
    if precision not in EVAL_PRECISIONS:
        raise MMDLibError(f"unknown evaluation precision {precision!r}; known: {', '.join(EVAL_PRECISIONS)}.")
    return Speed(bf16=precision == "bf16").autocast(torch.device(device or "cpu"))


@torch.no_grad()
def generate(model: Callable, n: int, timesteps: Sequence[int], alphas_cumprod: torch.Tensor, shape: Sequence[int],
             sampler: str = "ddim", seed: int = 0, batch_size: int = 500, device=None, progress: bool = False,
             precision: str = "fp32", purpose: str = "eval", **kw) -> torch.Tensor:
    """``n`` samples as float [n, C, H, W] in [0, 1] (8-bit levels); sample i comes from draw i of the random
    stream (``purpose``, ``seed``): "eval" for metrics, "grid" for figures. ``precision="bf16"`` runs the
    network under bf16 autocast (the chain's state stays fp32)."""
    seeds = stream_seeds(purpose, seed, range(n))
    out = []
    for start in tqdm(range(0, n, batch_size), desc=f"sampling {len(timesteps)} steps", disable=not progress):
        with _autocast(device, precision):
            x = sample_seeded(model, seeds[start:start + batch_size], shape, timesteps, alphas_cumprod, sampler,
                              device=device, **kw)
        out.append(quantize(to_unit(x.float())).cpu())
    return torch.cat(out)


def grid_samples(model, budget: int, n: int = 64, seed: int = 0, timestep_spacing: str = "auto", sampler: str = "ddim",
                 eta: float = 0.0, device=None) -> torch.Tensor:
    """``n`` samples [n, C, H, W] in [0, 1] of a ``LoadedModel`` from the fixed noise of the "grid" stream,
    sampled where the model is (or on ``device``): the same noise at every call, so two models (or one model
    during finetuning) can be compared side by side; never a training or an evaluation latent."""
    device = device or next(model.unet.parameters()).device
    steps = timestep_subset(budget, model.T, resolve_spacing(sampler, timestep_spacing))
    return generate(model.unet.to(device), n, steps, model.alphas_cumprod, model.sample_shape, sampler=sampler,
                    seed=seed, device=device, purpose="grid", **sampler_kwargs(sampler, eta))


@torch.no_grad()
def embed(extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 500, device=None,
          precision: str = "fp32") -> torch.Tensor:
    """Metric features [N, D] (float64 on the CPU) of 8-bit images [N, C, H, W] in [0, 1], in batches, through
    the extractor's metric path (``FeatureExtractor.metric_features``)."""
    device = device or next(extractor.parameters()).device
    with _autocast(device, precision):
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


def dataset_images(dataset, n: int | None = None, seed: int = 0) -> torch.Tensor:
    """All (or ``n`` seeded random) images of a dataset as one float tensor [N, C, H, W]."""
    from .data import TensorImages

    idx = list(range(len(dataset))) if n is None or n >= len(dataset) else \
        torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    if isinstance(dataset, TensorImages):  # in memory: one indexing, no per-item loop
        return dataset.float_images(idx)
    return torch.stack([dataset[i][0] for i in idx])


def reference_key(dataset_name: str, split: str, extractor: FeatureExtractor, n: int | None = None,
                  **data_kw) -> dict:
    """What real-image features depend on: the data, the count, the extractor (config and weights hash)."""
    data = {k: str(v) for k, v in data_kw.items() if k != "download"}  # where the data is, not how it came
    return {"dataset": dataset_name, "split": split, "n": n, "data": data,
            "extractor": extractor.identity(), "precision": "fp32"}


def reference_features(dataset_name: str, split: str, space: str, extractor: FeatureExtractor | None = None,
                       n: int | None = None, device=None, **data_kw) -> torch.Tensor:
    """Metric features of real images (always fp32), cached under $MMDLIB_CACHE by ``reference_key``."""
    from .cache import cached
    from .data import get_dataset
    from .features import get_feature_extractor

    f = extractor or get_feature_extractor(space)
    if f.name != space:
        raise MMDLibError(f"the extractor given is {f.name!r}, not the space {space!r} it should embed.")

    def build(tmp):
        ds = get_dataset(dataset_name, split=split, **data_kw)
        torch.save(embed(f.to(device or "cpu"), dataset_images(ds, n), device=device).float(), tmp / "features.pt")

    folder = cached("reference-features", reference_key(dataset_name, split, f, n, **data_kw), build)
    return torch.load(folder / "features.pt", weights_only=True).double()


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


def extractors_for(spaces: Sequence[str], device=None, weights_path: str | None = None) -> dict[str, FeatureExtractor]:
    """The feature extractor of each space, on ``device`` (``weights_path``: a local Inception weights file)."""
    from .features import get_feature_extractor

    local = {"weights_path": weights_path} if weights_path else {}
    return {s: get_feature_extractor(s, **(local if s.startswith("inception") else {})).to(device or "cpu")
            for s in spaces}


def score_features(extractor: FeatureExtractor, f_gen: torch.Tensor, f_real: torch.Tensor) -> dict[str, float]:
    """FID, KID, precision and recall of generated features against real ones, and the Inception Score
    where the space has a classifier (torch-fidelity's implementations; settings in ``METRICS``)."""
    scores = {"fid": fid_from_features(f_gen, f_real),
              "kid": kid_from_features(f_gen, f_real, METRICS["kid_subsets"], METRICS["kid_subset_size"])[0]}
    scores["precision"], scores["recall"] = precision_recall(f_gen, f_real, METRICS["prc_neighbours"])
    if getattr(extractor, "logits", None) is not None:  # a space with a classifier
        scores["is"] = inception_score(extractor, f_gen)[0]
    return scores


def score_key(model_identity: dict, cfg: EvalConfig, budget: int, seed: int, timesteps: Sequence[int],
              reference: dict, device) -> dict:
    """Everything one seed's scores in one space depend on: the model's weights, the sampling (sampler, eta,
    timesteps, precision, device class), the samples' stream and count, the reference features' key (data
    and extractor identity) and the metrics' settings."""
    return {"model": model_identity, "budget": budget, "timesteps": list(timesteps), "seed": seed, "n": cfg.n,
            "sampler": cfg.sampler, "eta": cfg.eta, "precision": cfg.precision, "stream": "eval",
            "device": torch.device(device).type, "reference": reference, "metrics": METRICS}


def evaluate(model, config: EvalConfig | None = None, *, weights_path: str | None = None, device=None,
             progress: bool = True, cache: bool = False, download: bool = False, **settings) -> dict:
    """Score a model across budgets in each feature space: FID, KID and precision/recall (mean and std
    over evaluation seeds; all torch-fidelity's implementations), plus the Inception Score where the space
    has a classifier (``inception``; the ``digits-*`` spaces score with their digit classifier). FID in
    ``inception`` is the standard FID; in ``clip`` it is FID_CLIP. ``settings`` override ``config``'s
    fields (``EvalConfig``). Returns a plain dict
    ``{budget: {space: {"fid": mean, "fid_std": ..., "kid": ..., "precision": ..., "fid_per_seed": [...]}}}``.
    ``precision="bf16"`` samples and embeds under bf16 autocast (faster on GPUs, not exact: keep "fp32" for
    numbers compared with the paper's; the reference features are always computed in fp32).
    ``cache=True`` keeps each (budget, seed, space)'s scores under $MMDLIB_CACHE (``score_key``), so a
    later call, with any other budgets, seeds or spaces, only computes what is new. ``download=True`` lets
    torchvision fetch a missing dataset."""
    from .cache import cached
    from .schedules import timestep_subset

    cfg = dataclasses.replace(config or EvalConfig(), **settings).check()
    data_kw = {**({"root": cfg.data_root} if cfg.data_root else {}), **({"download": True} if download else {})}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    steps = {b: timestep_subset(b, model.T, cfg.spacing) for b in cfg.budgets}  # refuses a bad budget first
    extractors = extractors_for(cfg.spaces, device, weights_path)
    refs = {s: reference_features(cfg.dataset, cfg.split, s, extractors[s], device=device, **data_kw)
            for s in cfg.spaces}
    identity = model.identity() if cache else None
    ref_keys = {s: reference_key(cfg.dataset, cfg.split, extractors[s], **data_kw) for s in cfg.spaces} if cache else {}
    results: dict = {}
    for b in cfg.budgets:
        per: dict = {s: {} for s in cfg.spaces}
        for seed in cfg.seeds:
            samples: list[torch.Tensor] = []  # generated on first need only: cached spaces need none

            def images() -> torch.Tensor:
                if not samples:
                    samples.append(generate(model.unet, cfg.n, steps[b], model.alphas_cumprod, model.sample_shape,
                                            sampler=cfg.sampler, seed=seed, device=device, progress=progress,
                                            precision=cfg.precision, **sampler_kwargs(cfg.sampler, cfg.eta)))
                return samples[0]

            for s in cfg.spaces:
                def compute(s=s) -> dict:
                    f = embed(extractors[s], images(), device=device, precision=cfg.precision)
                    return score_features(extractors[s], f, refs[s])

                if cache:
                    key = score_key(identity, cfg, b, seed, steps[b], ref_keys[s], device)
                    folder = cached("scores", key, lambda tmp: (tmp / "scores.json").write_text(json.dumps(compute())))
                    scores = json.loads((folder / "scores.json").read_text())
                else:
                    scores = compute()
                for k, v in scores.items():
                    per[s].setdefault(k, []).append(v)
        results[b] = {}
        for s in cfg.spaces:
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
