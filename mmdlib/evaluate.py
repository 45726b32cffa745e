"""Scoring a model: samples generated in memory (``generate``), their features against the real images' (each
space's, computed once per dataset and cached: ``reference_features``), every metric (``metrics``), mean and
spread over evaluation seeds, each (budget, seed, space) cached under ``score_key`` when asked. Evaluation
latents come from their own random stream (``mmdlib.streams``), disjoint from the training noise, so a
finetuned model is never scored on an x_T it was trained on.
"""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Sequence

import torch

from . import config as _config
from . import generate as _generate
from . import metrics as _metrics
from .cache import cached, file_hash
from .compat import moved
from .config import EvalConfig
from .data import data_options, dataset_images, get_dataset
from .errors import MMDLibError
from .features import ADM_STATISTICS, FEATURES, FeatureExtractor, get_feature_extractor, get_feature_extractors
from .generate import generate
from .metrics import METRICS, embed, mean_std, reference_statistics, score_features, score_statistics
from .models import LoadedModel
from .outputs import check_output_folder
from .sampling import get_sampler
from .schedules import as_timesteps, timestep_subset


def reference_key(dataset_name: str, split: str, extractor: FeatureExtractor, n: int | None = None,
                  **data_kw) -> dict:
    """What real-image features depend on: the data, the count, the extractor (config and weights hash)."""
    data = {k: str(v) for k, v in data_kw.items() if k != "download"}  # where the data is, not how it came
    return {"dataset": dataset_name, "split": split, "n": n, "data": data,
            "extractor": extractor.identity(), "precision": "fp32"}


def reference_features(dataset_name: str, split: str, space: str, extractor: FeatureExtractor | None = None,
                       n: int | None = None, device=None, **data_kw) -> torch.Tensor:
    """Metric features of real images (always fp32), cached under $MMDLIB_CACHE by ``reference_key``."""
    f = extractor or get_feature_extractor(space)
    if f.name != space:
        raise MMDLibError(f"the extractor given is {f.name!r}, not the space {space!r} it should embed.")

    def build(tmp):
        ds = get_dataset(dataset_name, split=split, **data_kw)
        torch.save(embed(f.to(device or "cpu"), dataset_images(ds, n), device=device).float(), tmp / "features.pt")

    folder = cached("reference-features", reference_key(dataset_name, split, f, n, **data_kw), build)
    return torch.load(folder / "features.pt", weights_only=True).double()


def score_key(model_identity: dict, cfg: EvalConfig, budget: int, seed: int, timesteps: Sequence[int],
              reference: dict, device) -> dict:
    """Everything one seed's scores in one space depend on: the model's weights, the sampling (sampler, eta,
    timesteps, precision, device class), the samples' stream and count, the reference features' key (data
    and extractor identity) and the metrics' settings."""
    return {"model": model_identity, "budget": budget, "timesteps": list(timesteps), "seed": seed, "n": cfg.n,
            "sampler": cfg.sampler, "eta": cfg.eta, "precision": cfg.precision, "stream": "eval",
            "device": torch.device(device).type, "reference": reference, "metrics": METRICS}


def _renamed(settings: dict, inception_weights: str | None, weights_path: str | None) -> str | None:
    """0.1.0's names, deprecated: ``spaces=`` (now ``features=``) and ``weights_path=`` (``inception_weights=``)."""
    if "spaces" in settings:
        warnings.warn("evaluate(spaces=...) is deprecated and goes in 0.3: use features=", DeprecationWarning,
                      stacklevel=3)
        settings["features"] = settings.pop("spaces")
    if weights_path is not None:
        warnings.warn("evaluate(weights_path=...) is deprecated and goes in 0.3: use inception_weights=",
                      DeprecationWarning, stacklevel=3)
    return inception_weights or weights_path


def _summary(per_seed: dict[str, list[float]]) -> dict:
    """One space's scores over the seeds: each metric's mean and std, and FID per seed."""
    row = {}
    for k, vals in per_seed.items():
        row[k], row[f"{k}_std"] = mean_std(vals)
    row["fid_per_seed"] = per_seed["fid"]
    return row


def evaluate(model: LoadedModel, config: EvalConfig | None = None, *, inception_weights: str | None = None,
             dinov2_weights: str | None = None, device=None, progress: bool = True, cache: bool = False,
             download: bool = False, weights_path: str | None = None, **settings) -> dict:
    """Score a model across budgets in each feature space: FID, KID and precision/recall (mean and std
    over evaluation seeds; all torch-fidelity's implementations), plus the Inception Score where the space
    has a classifier (``inception``; the ``digits-*`` spaces score with their digit classifier). FID in
    ``inception`` is the standard FID; in ``clip`` it is FID_CLIP; in ``inception-spatial`` it is sFID; in
    ``dinov2`` it is FD_DINOv2. ``reference`` (an ADM reference batch, .npz with ``mu``, ``sigma``, ``mu_s``,
    ``sigma_s``) scores FID and sFID against its statistics, as published ImageNet and LSUN tables are: those
    spaces then report FID (and IS), not KID or precision/recall, which need real images.
    ``settings`` override ``config``'s fields (``EvalConfig``). Returns a plain dict
    ``{budget: {space: {"fid": mean, "fid_std": ..., "kid": ..., "precision": ..., "fid_per_seed": [...]}}}``.
    ``precision="bf16"`` samples and embeds under bf16 autocast (faster on GPUs, not exact: keep "fp32" for
    numbers compared with the paper's; the reference features are always computed in fp32).
    ``inception_weights``: a local torch-fidelity Inception weights file, for the Inception spaces offline;
    ``dinov2_weights`` a local DINOv2 ViT-L/14 weights file, for ``dinov2``.
    ``cache=True`` keeps each (budget, seed, space)'s scores under $MMDLIB_CACHE (``score_key``), so a
    later call, with any other budgets, seeds or spaces, only computes what is new. ``download=True`` lets
    torchvision fetch a missing dataset."""
    inception_weights = _renamed(settings, inception_weights, weights_path)
    cfg = dataclasses.replace(config or EvalConfig(), **settings).check()
    data_kw = data_options(cfg.dataset, cfg.data_root, download, model.sample_shape[0])
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    steps = {b: timestep_subset(b, model.T, cfg.spacing) if cfg.timesteps is None else list(cfg.timesteps)
             for b in cfg.budgets}  # refuses a bad budget first
    stats = reference_statistics(cfg.reference, {s: FEATURES[s].dim for s in cfg.features if s in ADM_STATISTICS}) \
        if cfg.reference else {}  # a bad file is refused before any network loads
    extractors = get_feature_extractors(cfg.features, device, inception_weights, dinov2_weights)
    refs = {s: stats[s] if s in stats else
            reference_features(cfg.dataset, cfg.split, s, extractors[s], device=device, **data_kw) for s in cfg.features}
    identity = model.identity() if cache else None
    stats_hash = file_hash(cfg.reference) if cache and stats else None  # read once, whatever the spaces
    ref_keys = {s: {"statistics": stats_hash, "extractor": extractors[s].identity()} if s in stats else
                reference_key(cfg.dataset, cfg.split, extractors[s], **data_kw) for s in cfg.features} if cache else {}
    options = get_sampler(cfg.sampler).options(cfg.eta)
    results: dict = {}
    for b in cfg.budgets:
        per: dict = {s: {} for s in cfg.features}
        for seed in cfg.seeds:
            samples: list[torch.Tensor] = []  # generated on first need only: cached spaces need none

            def images() -> torch.Tensor:
                if not samples:
                    samples.append(generate(model.unet, cfg.n, as_timesteps(steps[b]), model.alphas_cumprod,
                                            model.sample_shape, sampler=cfg.sampler, seed=seed, device=device,
                                            progress=progress, precision=cfg.precision, **options))
                return samples[0]

            for s in cfg.features:
                def compute(s=s) -> dict:
                    f = embed(extractors[s], images(), device=device, precision=cfg.precision)
                    score = score_statistics if s in stats else score_features
                    return score(extractors[s], f, refs[s])

                if cache:
                    key = score_key(identity, cfg, b, seed, steps[b], ref_keys[s], device)
                    folder = cached("scores", key, lambda tmp: (tmp / "scores.json").write_text(json.dumps(compute())))
                    scores = json.loads((folder / "scores.json").read_text())
                else:
                    scores = compute()
                for k, v in scores.items():
                    per[s].setdefault(k, []).append(v)
        results[b] = {s: _summary(per[s]) for s in cfg.features}
    return results


def results_file(path: str) -> Path:
    """``evaluate --out``, checked before any work: a file (not a folder, a link, or a path through a file) in a
    place that can be written, that is new or holds an earlier evaluation's results (anything else is a user's
    file, never replaced)."""
    out = Path(path)
    if out.is_symlink() or out.is_dir() or (out.parent.exists() and not out.parent.is_dir()):
        raise MMDLibError(f"--out {path!r} must name a file (the results' JSON), not a folder, a symbolic link or a "
                          f"path through a file; nothing was computed.")
    if out.exists() and not is_results(out):
        raise MMDLibError(f"--out {path!r} exists and is not an evaluation's results, so it is not replaced; "
                          f"choose another --out. Nothing was computed.")
    check_output_folder(out.parent)  # a place where files can be created, probed now, not after the evaluation
    return out


def is_results(path: Path) -> bool:
    """Whether ``path`` holds what ``evaluate --out`` writes: {budget: {space: {"fid": ...}}}."""
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(res, dict) and bool(res) and all(
        k.isdigit() and isinstance(v, dict) and v and all(isinstance(m, dict) and "fid" in m for m in v.values())
        for k, v in res.items())


def results_json(results: dict) -> tuple[str, list[str]]:
    """(``evaluate``'s results as the JSON ``evaluate --out`` writes, where a score was NaN or infinite): such
    a score is written as null, since JSON has no NaN and a reader must not take one for a score."""
    undefined = []

    def clean(x, where):
        if isinstance(x, dict):
            return {k: clean(v, f"{where}/{k}") for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(x)]
        if isinstance(x, float) and not math.isfinite(x):
            undefined.append(where.lstrip("/"))
            return None
        return x

    text = json.dumps(clean({str(k): v for k, v in results.items()}, ""), indent=1, allow_nan=False)
    return text, undefined


__getattr__ = moved(__name__, {
    **{n: (getattr(_generate, n), f"mmdlib.generate.{n}") for n in ("grid_samples", "quantize")},
    **{n: (getattr(_metrics, n), f"mmdlib.metrics.{n}") for n in (
        "fid_from_features", "kid_from_features", "precision_recall", "inception_score")},
    "EVAL_PRECISIONS": (_config.EVAL_PRECISIONS, "mmdlib.config.EVAL_PRECISIONS"),
    "extractors_for": (get_feature_extractors, "mmdlib.features.get_feature_extractors"),
})

