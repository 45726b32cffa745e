"""The embedded offline default end to end: the digits base model, finetuned with MMD in ``digits-a``
and measured in the held-out ``digits-b`` space (the paper's optimise-Inception/measure-CLIP protocol
in miniature, Sec. IV-C)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from .data import digits_dataset
from .evaluate import evaluate
from .features import to_unit
from .finetune import FinetuneConfig, Finetuner
from .models import load_model, save_pipeline
from .plots import save_grid
from .sampling import noise
from .schedules import timestep_subset

DEMO = FinetuneConfig(model="digits", dataset="digits", split="all", features="digits-a", kernel="cubic",
                      timesteps=5, batch_size=128, lr=5e-6, iterations=400,
                      save_every=50, sample_every=100)
MEASURED_IN = "digits-b"


def gap_closed(before: dict, after: dict, budget: int, space: str = MEASURED_IN, reference: int = 20) -> float:
    """Share of the base model's budget-to-reference FID gap that finetuning closes (1 = reaches 20-step FID)."""
    gap = before[budget][space]["fid"] - before[reference][space]["fid"]
    return (before[budget][space]["fid"] - after[budget][space]["fid"]) / gap if gap > 0 else float("nan")


def _grid_samples(model, budget: int) -> torch.Tensor:
    from .sampling import ddim_sample

    device = next(model.unet.parameters()).device  # sample where the model is; do not move it
    with torch.no_grad():
        x = ddim_sample(model.unet, noise(range(64), model.sample_shape, device=device),
                        timestep_subset(budget, model.T), model.alphas_cumprod)
    return to_unit(x)


def run_demo(out: str | Path, timesteps: int = DEMO.timesteps, iterations: int = DEMO.iterations, n: int = 5000,
             seeds: int = 1, overwrite: bool = False, resume: bool = False, progress: bool = True) -> dict:
    """Finetune the digits base model for ``timesteps`` steps; write metrics.json, base/, finetuned/ and grids."""
    out = Path(out)
    cfg = dataclasses.replace(DEMO, timesteps=timesteps, iterations=iterations, out=str(out))
    model = load_model("digits")
    dataset = digits_dataset(cfg.split)
    ft = Finetuner(model, dataset, cfg, resume=resume, overwrite=overwrite, progress=progress)  # checks `out` first
    budgets = sorted({timesteps, 10, 20})
    spaces = (cfg.features, MEASURED_IN)
    seeds_ = list(range(seeds))
    base = load_model("digits")  # an untouched copy: the finetuner trains `model` in place
    before = evaluate(base, "digits", "all", budgets, spaces, n, seeds_, progress=progress)
    save_pipeline(base.unet, out / "base", timesteps, base.alphas_cumprod)
    save_grid(_grid_samples(base, timesteps), out / f"samples_before_{timesteps}steps.png")
    ft.run()
    after = evaluate(model, "digits", "all", budgets, spaces, n, seeds_, progress=progress)
    save_grid(_grid_samples(model, timesteps), out / f"samples_after_{timesteps}steps.png")
    save_grid(digits_dataset("all").images[:64], out / "samples_real.png")
    metrics = {
        "timesteps": timesteps, "feature_space": MEASURED_IN, "optimised_space": cfg.features,
        "fid_before": before[timesteps][MEASURED_IN]["fid"], "fid_after": after[timesteps][MEASURED_IN]["fid"],
        "gap_closed": gap_closed(before, after, timesteps),
        "n_samples": n, "seeds": seeds, "reference": "digits/all (1,797 images)",
        "before": {str(b): v for b, v in before.items()}, "after": {str(b): v for b, v in after.items()},
        "config": dataclasses.asdict(cfg),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics
