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
from .report import gap_closed

PRESET = get_preset("digits")
DEMO = PRESET.finetune
MEASURED_IN = PRESET.measure


def run_demo(out: str | Path, budget: int = DEMO.budget, iterations: int = DEMO.iterations,
             n: int = PRESET.evaluation.n, seeds: int = len(PRESET.evaluation.seeds), overwrite: bool = False,
             resume: bool = False, progress: bool = True) -> dict:
    """Finetune the digits base model for ``budget`` steps; write metrics.json, base/, finetuned/ and grids.

    Scored at ``budget`` steps before and after (``seeds`` evaluation seeds), and the base model at the
    preset's reference budget (100 steps) with its reference seeds (the first only, as chapter 3 does): at
    20 times the steps per sample it would otherwise take most of the demo's time. Scores are cached under
    $MMDLIB_CACHE like the book's, so a second run only finetunes."""
    out = Path(out)
    cfg = dataclasses.replace(DEMO, budget=budget, iterations=iterations, out=str(out))
    reference = PRESET.reference_budget
    evaluation = dataclasses.replace(PRESET.evaluation, n=n, seeds=seeds).check()
    base = load_model("digits")
    ft = Finetuner(base, digits_dataset(cfg.split), cfg, resume=resume, overwrite=overwrite,
                   progress=progress)  # checks `out` first; trains its own copy of the weights
    before = evaluate(base, evaluation, budgets=(budget,), progress=progress, cache=True)
    reference_seeds = evaluation.seeds[:PRESET.reference_seeds]
    many = evaluate(base, evaluation, budgets=(reference,), seeds=reference_seeds, progress=progress, cache=True)
    save_pipeline(base.unet, out / "base", budget, base.alphas_cumprod)
    save_grid(grid_samples(base, budget), out / f"samples_before_{budget}steps.png")
    ft.run()
    after = evaluate(ft.model, evaluation, budgets=(budget,), progress=progress, cache=True)
    save_grid(grid_samples(ft.model, budget), out / f"samples_after_{budget}steps.png")
    save_grid(digits_dataset("all").images[:64], out / "samples_real.png")
    fid_before, fid_after, fid_reference = (r[b][MEASURED_IN]["fid"] for r, b in
                                            ((before, budget), (after, budget), (many, reference)))
    metrics = {
        "budget": budget, "feature_space": MEASURED_IN, "optimised_space": cfg.features,
        "fid_before": fid_before, "fid_after": fid_after, "fid_reference": fid_reference,
        "reference_budget": reference, "gap_closed": gap_closed(fid_before, fid_after, fid_reference),
        "n_samples": n, "seeds": list(evaluation.seeds), "reference_seeds": list(reference_seeds),
        "reference": "digits/all (1,797 images)",
        "before": {str(b): v for b, v in {**before, **many}.items()}, "after": {str(b): v for b, v in after.items()},
        "config": dataclasses.asdict(cfg), "evaluation": dataclasses.asdict(evaluation),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics
