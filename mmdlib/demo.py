"""The embedded offline default end to end: the digits base model, finetuned with MMD in ``digits-a``
and measured in the held-out ``digits-b`` space (the paper's optimise-Inception/measure-CLIP protocol
in miniature, Sec. IV-C). Settings: the ``digits`` preset."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from .data import digits_dataset
from .evaluate import evaluate
from .export import save_pipeline
from .finetune import Finetuner
from .generate import grid_samples
from .models import load_model
from .plots import save_grid
from .presets import get_preset
from .report import gap_closed
from .runfolder import RunFolder

PRESET = get_preset("digits")
DEMO = PRESET.finetune
MEASURED_IN = PRESET.measure


DEMO_FILES = ("metrics.json", "samples_before_*steps.png", "samples_after_*steps.png", "samples_real.png")


def demo_folder(out: str | Path) -> RunFolder:
    """The demo's output folder: a run's folder that also holds the demo's metrics, grids and base model."""
    return RunFolder(out, files=DEMO_FILES, pipelines=("base",))


def run_demo(out: str | Path, budget: int = DEMO.budget, iterations: int = DEMO.iterations,
             n: int = PRESET.evaluation.n, seeds: int = len(PRESET.evaluation.seeds), overwrite: bool = False,
             resume: bool = False, progress: bool = True, folder: RunFolder | None = None) -> dict:
    """Finetune the digits base model for ``budget`` steps; write metrics.json, base/, finetuned/ and grids.

    Scored at ``budget`` steps before and after (``seeds`` evaluation seeds), and the base model at the
    preset's many-step budget (100 steps) with its seeds there (the first only, as chapter 3 does): at 20
    times the steps per sample it would otherwise take most of the demo's time. Scores are cached under
    $MMDLIB_CACHE like the book's, so a second run only finetunes. ``folder``: ``out`` as a checked
    ``RunFolder`` (the CLI's)."""
    out = Path(out)
    cfg = dataclasses.replace(DEMO, budget=budget, iterations=iterations, out=str(out))
    many = PRESET.many_steps
    evaluation = dataclasses.replace(PRESET.evaluation, n=n, seeds=seeds).check()
    base = load_model("digits")
    ft = Finetuner(base, digits_dataset(cfg.split), cfg, folder or demo_folder(out), resume=resume,
                   overwrite=overwrite, progress=progress)  # opens `out` first; trains its own copy of the weights
    try:
        before = evaluate(base, evaluation, budgets=(budget,), progress=progress, cache=True)
        many_seeds = evaluation.seeds[:PRESET.many_steps_seeds]
        at_many = evaluate(base, evaluation, budgets=(many,), seeds=many_seeds, progress=progress, cache=True)
    except BaseException:  # nothing written yet: leave the folder as it was
        ft.folder.unlock()
        if ft.fresh:
            ft.folder.discard()
        raise
    ft.run()  # on its own copy of the weights: `base` is as it was
    save_pipeline(base.unet, out / "base", budget, base.alphas_cumprod)
    save_grid(grid_samples(base, budget), out / f"samples_before_{budget}steps.png")
    after = evaluate(ft.model, evaluation, budgets=(budget,), progress=progress, cache=True)
    save_grid(grid_samples(ft.model, budget), out / f"samples_after_{budget}steps.png")
    save_grid(digits_dataset("all").images[:64], out / "samples_real.png")
    fid_before, fid_after, fid_many = (r[b][MEASURED_IN]["fid"] for r, b in
                                       ((before, budget), (after, budget), (at_many, many)))
    metrics = {
        "budget": budget, "timesteps": ft.timesteps, "feature_space": MEASURED_IN, "optimised_space": cfg.features,
        "fid_before": fid_before, "fid_after": fid_after, "fid_many_steps": fid_many, "many_steps": many,
        "gap_closed": gap_closed(fid_before, fid_after, fid_many), "n_samples": n, "seeds": list(evaluation.seeds),
        "many_steps_seeds": list(many_seeds), "reference": "digits/all (1,797 images)",
        "before": {str(b): v for b, v in {**before, **at_many}.items()},
        "after": {str(b): v for b, v in after.items()},
        "config": dataclasses.asdict(cfg), "evaluation": dataclasses.asdict(evaluation),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics
