"""Cached runs for the notebooks: a finetuned model or an evaluation is computed once per setting and
then loaded, so rebuilding the book does not retrain.

Keys hold everything that changes a result (``mmdlib.cache``): the base model by a hash of its weights,
the feature extractor by its config and weights, the resolved precision and device class, every
method setting, the results version and the smoke switch. An interrupted finetune resumes from its
checkpoint the next time the same setting is asked for.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from . import devices
from .cache import cache_dir, cached, config_key, full_key
from .compat import moved
from .config import EvalConfig, FinetuneConfig
from .data import data_options
from .evaluate import evaluate, reference_features, reference_key
from .features import FeatureExtractor, get_feature_extractor
from .finetune import Finetuner, real_dataset
from .generate import generate, grid_samples
from .metrics import METRICS, embed, fid_from_features
from .models import LoadedModel, load_model
from .notebook import check_parameters as _check_parameters
from .sampling import ddim_sample, noise, slerp, to_unit
from .schedules import timestep_subset
from .speed import resolve_speed
from .streams import stream_seeds


@dataclasses.dataclass
class Run:
    """A model, and for a cached finetune its folder and the settings it was trained with."""

    model: LoadedModel
    folder: Path | None = None  # the cached finetune: finetuned/ (a diffusers pipeline), log.csv, samples/
    config: FinetuneConfig | None = None  # None for a base model

    def log(self):
        """The finetune's per-iteration log (iteration, loss, grad_norm, seconds) as a DataFrame."""
        import pandas as pd

        return pd.read_csv(self.folder / "log.csv")

    def learnt(self) -> list | None:
        """The timesteps a finetune learnt (``learn_timesteps``), as its exported folder records them; else None."""
        return self.model.meta.get("timesteps") if self.config is not None and self.config.learn_timesteps else None


def base(name: str = "digits") -> Run:
    """The pretrained model ``name`` (for ``digits``, the weights shipped in the package)."""
    return Run(load_model(name))


def finetune_key(model: LoadedModel, extractor: FeatureExtractor, cfg: FinetuneConfig, device) -> dict:
    """Everything that determines a finetuned model's weights: the base model's weights (by hash, not by
    name or path), the extractor's identity, every method setting, the precision and compilation as they
    resolve on ``device``, and the device class."""
    speed = resolve_speed(cfg.precision, cfg.compile, device)
    method = {**cfg.run_identity(), "iterations": cfg.iterations}
    for name in ("model", "features", "precision"):  # replaced by what they resolve to
        method.pop(name)
    return {"model": model.identity(), "extractor": extractor.identity(), "finetune": method,
            "speed": {"bf16": speed.bf16, "compile": speed.compile}, "device": torch.device(device).type}


def _resolve(cfg: FinetuneConfig) -> tuple[LoadedModel, FeatureExtractor, torch.device, dict]:
    device = devices.pick_device(cfg.device)
    model, extractor = load_model(cfg.model), get_feature_extractor(cfg.features)
    return model, extractor, device, finetune_key(model, extractor, cfg.check(), device)


def _work_folder(key: dict) -> Path:
    """Where the finetune keyed ``key`` runs (and resumes after an interruption) before it enters the cache."""
    return cache_dir() / "runs" / config_key(full_key(key))


def finetuned(cfg: FinetuneConfig, progress: bool = True) -> Run:
    """``cfg.model`` finetuned with ``cfg`` (output knobs ignored), computed once and cached."""
    model, extractor, device, key = _resolve(cfg)
    work = _work_folder(key)

    def build(tmp: Path) -> None:
        c = dataclasses.replace(cfg, out=str(work))
        Finetuner(model, real_dataset(cfg, model), c, extractor=extractor, resume=True, progress=progress).run()
        for name in ("finetuned", "samples", "log.csv"):
            (shutil.copytree if (work / name).is_dir() else shutil.copy)(work / name, tmp / name)
        shutil.rmtree(work)

    folder = cached("finetuned", key, build)
    return Run(load_model(str(folder / "finetuned")), folder, cfg)


def seconds_per_iteration(cfg: FinetuneConfig, iterations: int = 3) -> float:
    """The mean wall time of ``iterations`` finetuning iterations of ``cfg`` (after one untimed), measured now in
    a temporary folder: costs compared in one process, under one thread setting, whatever computed the cache."""
    model, extractor, _, _ = _resolve(cfg)
    with tempfile.TemporaryDirectory() as out:
        ft = Finetuner(model, real_dataset(cfg, model), dataclasses.replace(cfg, out=out, iterations=iterations + 1),
                       extractor=extractor, progress=False)
        ft.step()
        t0 = time.perf_counter()
        for _ in range(iterations):
            ft.step()
        seconds = (time.perf_counter() - t0) / iterations
        ft.folder.unlock()
    return seconds


def training_minutes(runs) -> float:
    """The training time the finetunes' logs recorded, in minutes (on whatever machine filled the cache)."""
    return sum(run.log()["seconds"].sum() for run in runs) / 60


def scores(run: Run, config: EvalConfig | None = None, progress: bool = True, **settings) -> dict:
    """``evaluate(run.model, ...)`` (FID, KID, precision/recall, IS; mean and std over the evaluation
    seeds), each (budget, seed, space) computed once and cached (``evaluate.score_key``). A run that learnt
    its timesteps is sampled at them (its budget only)."""
    if run.learnt() is not None:
        settings.setdefault("timesteps", run.learnt())
    return evaluate(run.model, config, device=devices.pick_device(), progress=progress, cache=True, **settings)


def same_noise_samples(run: Run, budget: int, n: int = 64, seed: int = 0, timestep_spacing: str = "auto",
                       sampler: str = "ddim", eta: float = 0.0) -> torch.Tensor:
    """``generate.grid_samples`` of ``run``'s model on the default device (at its learnt timesteps, if it learnt
    them): call it on two runs to compare them."""
    return grid_samples(run.model, budget, n, seed, timestep_spacing, sampler, eta, device=devices.pick_device(),
                        timesteps=run.learnt())


@torch.no_grad()
def interpolation(run: Run, budget: int, pair: int = 0, points: int = 9, seed: int = 0) -> torch.Tensor:
    """Samples [points, C, H, W] in [0, 1] along the slerp path (eq. 8) between the two end points of
    ``pair`` in the "interpolation" stream, each sampled with ``budget`` DDIM steps."""
    m = run.model
    device = next(m.unet.parameters()).device  # sample where the model is
    x0, x1 = noise(stream_seeds("interpolation", seed, [2 * pair, 2 * pair + 1]), m.sample_shape)
    path = slerp(x0, x1, torch.linspace(0, 1, points)).to(device)
    return to_unit(ddim_sample(m.unet, path, timestep_subset(budget, m.T), m.alphas_cumprod)).cpu()


def data_floor(run: Run, budget: int, dataset: str = "digits", split: str = "all",
               spaces: tuple[str, ...] = ("digits-b",), draws: int = 3, sampler: str = "ddim",
               data_root: str | None = None, progress: bool = False) -> dict:
    """The FID a perfect model would still get, and this model's FID at the same sample sizes, per space.

    For draw d, the real images are split at random into halves A_d and B_d: ``floor`` is FID(A_d, B_d),
    ``model`` is FID(|A_d| samples of the model (evaluation seed d), B_d). Two samples of the same
    distribution this size have FID ``floor``, not 0; a model within a small factor of it is close to the
    data. Returns ``{space: {"floor": [...], "model": [...]}}`` (one value per draw), cached per space; the
    samples of a draw are generated once for every space."""
    data_kw = data_options(dataset, data_root, channels=run.model.sample_shape[0])
    device = devices.pick_device()
    m = run.model
    steps = timestep_subset(budget, m.T)
    samples: dict[int, torch.Tensor] = {}  # per draw, generated on first need only

    def floor(space: str) -> dict:
        extractor = get_feature_extractor(space).to(device)
        ref = reference_features(dataset, split, space, extractor, device=device, **data_kw)
        key = {"model": m.identity(), "budget": budget, "timesteps": steps, "sampler": sampler, "draws": draws,
               "stream": "eval", "device": device.type, "metrics": METRICS,  # as the scores' keys (issue 28)
               "reference": reference_key(dataset, split, extractor, **data_kw)}

        def build(tmp: Path) -> None:
            out: dict = {"floor": [], "model": []}
            half = len(ref) // 2
            for d in range(draws):
                perm = torch.randperm(len(ref), generator=torch.Generator().manual_seed(d))
                a, b = ref[perm[:half]], ref[perm[half:]]
                if d not in samples:
                    samples[d] = generate(m.unet.to(device), half, steps, m.alphas_cumprod, m.sample_shape,
                                          sampler=sampler, seed=d, device=device, progress=progress)
                out["floor"].append(fid_from_features(a, b))
                out["model"].append(fid_from_features(embed(extractor, samples[d], device=device), b))
            (tmp / "floor.json").write_text(json.dumps(out))

        return json.loads((cached("data-floor", key, build) / "floor.json").read_text())

    return {space: floor(space) for space in spaces}


__getattr__ = moved(__name__, {
    "config": (FinetuneConfig, "mmdlib.presets.settings(name, **overrides).finetune, or mmdlib.config.FinetuneConfig"),
    "check_parameters": (_check_parameters, "mmdlib.notebook.check_parameters")})
