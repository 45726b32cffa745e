"""Dropout through the chain while finetuning (the official code finetunes in train mode): does it help or hurt?

    python benchmarks/dropout_in_finetuning.py [--dropouts none,0.1] [--train-seeds 0,1,2] [--iterations 400]

The digits preset at 5 DDIM steps: one finetune per (dropout, training seed), each scored with 3 evaluation
seeds x 5,000 samples in both digits spaces, all through the book's cache (``mmdlib.experiments``), so the
eval-mode run with training seed 0 is chapter 2's. Prints a line per run as it goes, then FID mean ± std over
the training seeds per dropout, and a JSON line.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

from mmdlib import experiments as ex
from mmdlib.cli import float_or_none
from mmdlib.metrics import mean_std
from mmdlib.presets import get_preset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dropouts", default="none,0.1")
    p.add_argument("--train-seeds", default="0,1,2")
    p.add_argument("--iterations", type=int, default=None, help="default: the preset's")
    a = p.parse_args()
    preset = get_preset("digits")
    ft, ev = preset.finetune, preset.evaluation
    spaces = list(preset.spaces)
    rows: dict = {}
    for dropout in [float_or_none(d) for d in a.dropouts.split(",")]:
        for seed in [int(s) for s in a.train_seeds.split(",")]:
            t0 = time.perf_counter()
            cfg = dataclasses.replace(ft, iterations=a.iterations or ft.iterations, seed=seed, dropout=dropout)
            s = ex.scores(ex.finetuned(cfg, progress=False), ev, budgets=[ft.budget], progress=False)[ft.budget]
            rows.setdefault(str(dropout), {})[seed] = {sp: s[sp]["fid"] for sp in spaces}
            print(f"dropout {dropout}, training seed {seed}: " + ", ".join(f"FID {sp} {s[sp]['fid']:.3f}"
                                                                             for sp in spaces)
                  + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("\n| dropout | " + " | ".join(f"FID {sp} (mean ± std over training seeds)" for sp in spaces) + " |")
    print("|---|" + "---|" * len(spaces))
    for dropout, by_seed in rows.items():
        cells = [mean_std([r[sp] for r in by_seed.values()]) for sp in spaces]
        print(f"| {dropout} | " + " | ".join(f"{m:.2f} ± {sd:.2f}" for m, sd in cells) + " |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
