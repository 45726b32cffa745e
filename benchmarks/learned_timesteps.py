"""Learnt timesteps on the digits default: the timestep learning rate, and the timesteps learnt alone or with
the weights, against the fixed schedules, at one budget.

    python benchmarks/learned_timesteps.py [--budget 5] [--sampler ddim] [--lrs 0.01,0.05,0.2]
        [--iterations 100] [--modes joint,alone] [--seeds 1]

One finetune per (mode, timestep lr) through the book's cache (``mmdlib.experiments``), each scored in both
digits spaces with ``--seeds`` evaluation seeds x 5,000 samples; prints a line per run as it goes (the learnt
timesteps, FID, seconds per iteration), then a JSON line.
"""
from __future__ import annotations

import argparse
import json
import time

from mmdlib import experiments as ex
from mmdlib.presets import settings


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=int, default=5)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--lrs", default="0.01,0.05,0.2", help="timestep learning rates")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--modes", default="joint,alone", help="joint: timesteps and weights; alone: weights frozen")
    p.add_argument("--seeds", type=int, default=1)
    a = p.parse_args()
    s = settings("digits", sampler=a.sampler, seeds=a.seeds)
    ev = s.evaluation
    base = ex.base(s.finetune.model)
    rows = {"fixed, base model": ex.scores(base, ev, budgets=[a.budget], progress=False)[a.budget]}
    for mode in a.modes.split(","):
        for lr in (float(x) for x in a.lrs.split(",")):
            t0 = time.perf_counter()
            cfg = s.finetune_at(a.budget, iterations=a.iterations, learn_timesteps=True, timestep_lr=lr,
                                freeze_weights=mode == "alone")
            run = ex.finetuned(cfg, progress=False)
            r = ex.scores(run, ev, budgets=[a.budget], progress=False)[a.budget]
            rows[f"{mode}, timestep lr {lr:g}"] = r
            print(f"{mode}, lr {lr:g}: timesteps {[round(t, 1) for t in run.learnt()]}, "
                  + ", ".join(f"FID {sp} {r[sp]['fid']:.3f}" for sp in s.spaces)
                  + f", {run.log()['seconds'].mean():.2f} s/iteration ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(json.dumps({name: {sp: r[sp]["fid"] for sp in s.spaces} for name, r in rows.items()}))


if __name__ == "__main__":
    main()
