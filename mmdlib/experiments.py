"""Cached runs for the notebooks: a finetuned model or an evaluation is computed once per setting and
then loaded, so rebuilding the book does not retrain (the keys hold everything that changes a result).

An interrupted finetune resumes from its checkpoint the next time the same setting is asked for.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Sequence

import torch

from .cache import cache_dir, cached, config_key
from .data import get_dataset
from .evaluate import embed, evaluate, generate
from .finetune import FinetuneConfig, Finetuner, pick_device
from .models import HUB_MODELS, LoadedModel, load_model
from .schedules import timestep_subset


@dataclasses.dataclass
class Run:
    """A model with what identifies it: a base model (``folder`` is None) or a cached finetune."""

    model: LoadedModel
    identity: dict
    folder: Path | None = None  # the cached finetune: finetuned/ (a DDIMPipeline), log.csv, samples/

    def log(self):
        """The finetune's per-iteration log (iteration, loss, grad_norm, seconds) as a DataFrame."""
        import pandas as pd

        return pd.read_csv(self.folder / "log.csv")


def _model_identity(name: str) -> dict:
    """What determines the base model's weights: the embedded recipe, a hub id, or a folder's path."""
    if name == "digits":
        from .pretrain import default_config

        return {"digits": dataclasses.asdict(default_config())}
    if name in HUB_MODELS or (name.count("/") == 1 and not Path(name).exists()):
        return {"hub": HUB_MODELS.get(name, name)}
    return {"folder": str(Path(name).resolve())}


def base(name: str = "digits") -> Run:
    """The pretrained model ``name`` (the digits base model is trained on first use)."""
    return Run(load_model(name), {"model": _model_identity(name)})


config = FinetuneConfig  # the notebooks' name for it: the paper's settings, checkpointing chosen by memory


def finetune_identity(cfg: FinetuneConfig) -> dict:
    """Everything that determines a finetuned model's weights."""
    return {"model": _model_identity(cfg.model), "finetune": {**cfg.run_identity(), "iterations": cfg.iterations}}


def run_folder(cfg: FinetuneConfig) -> Path:
    """Where the finetune for ``cfg`` runs (and resumes after an interruption) before it enters the cache."""
    return cache_dir() / "runs" / config_key(finetune_identity(cfg))


def finetuned(cfg: FinetuneConfig, progress: bool = True) -> Run:
    """``cfg.model`` finetuned with ``cfg`` (output knobs ignored), computed once and cached."""
    data_kw = {"root": cfg.data_root} if cfg.data_root else {}
    identity, work = finetune_identity(cfg), run_folder(cfg)

    def build(tmp: Path) -> None:
        c = dataclasses.replace(cfg, out=str(work))
        Finetuner(load_model(cfg.model), get_dataset(cfg.dataset, cfg.split, **data_kw), c, resume=True,
                  progress=progress).run()
        for name in ("finetuned", "samples", "log.csv"):
            (shutil.copytree if (work / name).is_dir() else shutil.copy)(work / name, tmp / name)
        shutil.rmtree(work)

    folder = cached("finetuned", identity, build)
    return Run(load_model(str(folder / "finetuned")), identity, folder)


def scores(run: Run, dataset: str = "digits", split: str = "all", budgets: Sequence[int] = (5, 10, 20),
           spaces: Sequence[str] = ("digits-a", "digits-b"), n: int = 5000, seeds: int = 1, sampler: str = "ddim",
           schedule: str = "linear", progress: bool = True, **data_kw) -> dict:
    """``evaluate(run.model, ...)`` (FID, KID, precision/recall, IS), computed once and cached."""
    setting = {"dataset": dataset, "split": split, "budgets": list(budgets), "spaces": list(spaces), "n": n,
               "seeds": seeds, "sampler": sampler, "schedule": schedule, **{k: str(v) for k, v in data_kw.items()}}

    def build(tmp: Path) -> None:
        res = evaluate(run.model, dataset, split, budgets, spaces, n, list(range(seeds)), sampler=sampler,
                       schedule=schedule, progress=progress, **data_kw)
        (tmp / "scores.json").write_text(json.dumps(res))

    folder = cached("scores", {"run": run.identity, **setting}, build)
    return {int(b): v for b, v in json.loads((folder / "scores.json").read_text()).items()}


def same_noise_samples(run: Run, budget: int, n: int = 64, seed: int = 7, schedule: str = "linear",
                       sampler: str = "ddim") -> torch.Tensor:
    """``n`` samples [n, C, H, W] in [0, 1] from fixed noise: call it on two models to compare them."""
    m, device = run.model, pick_device()
    return generate(m.unet.to(device), n, timestep_subset(budget, m.T, schedule), m.alphas_cumprod, m.sample_shape,
                    sampler=sampler, seed=seed, device=device)


def nearest_real(samples: torch.Tensor, dataset: str, split: str, space: str, k: int = 5,
                 **data_kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and indices [N, k] of each sample's k nearest real images (Euclidean distance in the
    feature space ``space``): the paper's Fig. 4 check that finetuning does not copy the training set."""
    from .evaluate import reference_features
    from .features import get_feature_extractor

    device = pick_device()
    ref = reference_features(dataset, split, space, device=device, **data_kw)
    d = torch.cdist(embed(get_feature_extractor(space).to(device), samples), ref)
    return d.topk(k, largest=False)


def real_nearest_distance(dataset: str, split: str, space: str, n: int = 500, seed: int = 0,
                          **data_kw) -> torch.Tensor:
    """For ``n`` random real images, the distance to their nearest *other* real image: the scale a copy
    of the training set would fall far below."""
    from .evaluate import reference_features

    ref = reference_features(dataset, split, space, device=pick_device(), **data_kw)
    idx = torch.randperm(len(ref), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.cdist(ref[idx], ref).topk(2, largest=False).values[:, 1]
