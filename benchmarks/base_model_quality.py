"""FID of a base model in the digits feature spaces across budgets, samplers and timestep spacings (the
embedded default's premise, and which spacing suits which sampler).

    python benchmarks/base_model_quality.py [--model digits] [--n 5000] [--seeds 3] [--budgets 5,10,20,100]
        [--samplers ddim] [--spacings auto]

Prints one line per (sampler, spacing, budget, seed) as it goes, then mean ± std over the seeds per space,
then a JSON line. Every sample of a seed comes from the "eval" stream, so samplers see the same x_T.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import mmdlib
from mmdlib.generate import generate
from mmdlib.metrics import embed, fid_from_features, mean_std
from mmdlib.sampling import resolve_spacing


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budgets", default="5,10,20,100")
    p.add_argument("--features", default="digits-a,digits-b")
    p.add_argument("--samplers", default="ddim", help="comma-separated: ddim, ddpm, dpmpp2m, unipc")
    p.add_argument("--spacings", default="auto", help="comma-separated: auto (each sampler's own), linear, trailing, ...")
    a = p.parse_args()
    m = mmdlib.load_model(a.model)
    real = torch.stack([x for x, _ in mmdlib.digits_dataset("all")])
    spaces = {n: mmdlib.get_feature_extractor(n) for n in a.features.split(",")}
    ref = {n: embed(f, real) for n, f in spaces.items()}
    rows = {}
    for sampler in a.samplers.split(","):
        for spacing in dict.fromkeys(resolve_spacing(sampler, s) for s in a.spacings.split(",")):
            for b in [int(s) for s in a.budgets.split(",")]:
                steps = mmdlib.timestep_subset(b, m.T, spacing)
                for seed in range(a.seeds):
                    t0 = time.time()
                    x = generate(m.unet, a.n, steps, m.alphas_cumprod, m.sample_shape, sampler=sampler, seed=seed)
                    line = []
                    for n, f in spaces.items():
                        key = f"{sampler}/{spacing}/{b}/{n}"
                        rows.setdefault(key, []).append(fid_from_features(embed(f, x), ref[n]))
                        line.append(f"{n} {rows[key][-1]:.3f}")
                    print(f"{sampler} {spacing} budget {b} seed {seed}: {', '.join(line)} ({time.time() - t0:.0f} s)",
                          flush=True)
    summary = {k: mean_std(v) for k, v in rows.items()}
    for k, (mu, sd) in summary.items():
        print(f"{k:>32}: FID {mu:.3f} ± {sd:.3f}")
    print(json.dumps({"model": a.model, "n": a.n, "seeds": a.seeds, "fid": summary}))


if __name__ == "__main__":
    main()
