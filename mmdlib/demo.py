"""The embedded offline default end to end: the digits base model, finetuned with MMD in ``digits-a``
and measured in the held-out ``digits-b`` space (the paper's optimise-Inception/measure-CLIP protocol
in miniature, Sec. IV-C). Settings: the ``digits`` preset."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .data import digits_dataset
from .evaluate import evaluate, grid_samples
from .finetune import Finetuner
from .models import load_model, save_pipeline
from .plots import save_grid
from .presets import get_preset

PRESET = get_preset("digits")
DEMO = PRESET.finetune
MEASURED_IN = PRESET.measure


def gap_closed(before: dict, after: dict, budget: int, space: str = MEASURED_IN,
               reference: int = PRESET.reference_budget) -> float:
    """Share of the base model's budget-to-reference FID gap that finetuning closes (1 = the finetuned
    model at ``budget`` steps matches the base model at ``reference`` steps)."""
    gap = before[budget][space]["fid"] - before[reference][space]["fid"]
    return (before[budget][space]["fid"] - after[budget][space]["fid"]) / gap if gap > 0 else float("nan")


def run_demo(out: str | Path, budget: int = DEMO.budget, iterations: int = DEMO.iterations,
             n: int = PRESET.evaluation.n, seeds: int = len(PRESET.evaluation.seeds), overwrite: bool = False,
             resume: bool = False, progress: bool = True) -> dict:
    """Finetune the digits base model for ``budget`` steps; write metrics.json, base/, finetuned/ and grids."""
    out = Path(out)
    cfg = dataclasses.replace(DEMO, budget=budget, iterations=iterations, out=str(out))
    reference = PRESET.reference_budget
    evaluation = dataclasses.replace(PRESET.evaluation, n=n, seeds=seeds).check()
    base = load_model("digits")
    ft = Finetuner(base, digits_dataset(cfg.split), cfg, resume=resume, overwrite=overwrite,
                   progress=progress)  # checks `out` first; trains its own copy of the weights
    budgets = tuple(sorted({budget, 10, 20}))
    before = evaluate(base, evaluation, budgets=tuple(sorted({*budgets, reference})), progress=progress)
    save_pipeline(base.unet, out / "base", budget, base.alphas_cumprod)
    save_grid(grid_samples(base, budget), out / f"samples_before_{budget}steps.png")
    ft.run()
    after = evaluate(ft.model, evaluation, budgets=budgets, progress=progress)
    save_grid(grid_samples(ft.model, budget), out / f"samples_after_{budget}steps.png")
    save_grid(digits_dataset("all").images[:64], out / "samples_real.png")
    metrics = {
        "budget": budget, "feature_space": MEASURED_IN, "optimised_space": cfg.features,
        "fid_before": before[budget][MEASURED_IN]["fid"], "fid_after": after[budget][MEASURED_IN]["fid"],
        "fid_reference": before[reference][MEASURED_IN]["fid"], "reference_budget": reference,
        "gap_closed": gap_closed(before, after, budget),
        "n_samples": n, "seeds": list(evaluation.seeds), "reference": "digits/all (1,797 images)",
        "before": {str(b): v for b, v in before.items()}, "after": {str(b): v for b, v in after.items()},
        "config": dataclasses.asdict(cfg), "evaluation": dataclasses.asdict(evaluation),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics
