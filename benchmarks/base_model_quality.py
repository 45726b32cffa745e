"""FID of a base model in the digits feature spaces across DDIM budgets (the embedded default's premise).

    python benchmarks/base_model_quality.py [--model digits] [--n 5000] [--seeds 3] [--budgets 5,10,20,100]

Prints one line per (budget, space) with mean and std over seeds, then a JSON line.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import mmdlib
from mmdlib.evaluate import embed, fid_from_features, generate, mean_std


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="digits")
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budgets", default="5,10,20,100")
    p.add_argument("--features", default="digits-a,digits-b")
    a = p.parse_args()
    m = mmdlib.load_model(a.model)
    real = torch.stack([x for x, _ in mmdlib.digits_dataset("all")])
    spaces = {n: mmdlib.get_feature_extractor(n) for n in a.features.split(",")}
    ref = {n: embed(f, real) for n, f in spaces.items()}
    rows = {}
    for b in [int(s) for s in a.budgets.split(",")]:
        for seed in range(a.seeds):
            t0 = time.time()
            x = generate(m.unet, a.n, mmdlib.timestep_subset(b, m.T), m.alphas_cumprod, m.sample_shape, seed=seed)
            for n, f in spaces.items():
                rows.setdefault(f"{b}/{n}", []).append(fid_from_features(embed(f, x), ref[n]))
            print(f"budget {b} seed {seed}: " + ", ".join(f"{n} {rows[f'{b}/{n}'][-1]:.3f}" for n in spaces)
                  + f" ({time.time() - t0:.0f} s)", flush=True)
    summary = {k: mean_std(v) for k, v in rows.items()}
    for k, (mu, sd) in summary.items():
        print(f"{k:>16}: FID {mu:.3f} ± {sd:.3f}")
    print(json.dumps({"model": a.model, "n": a.n, "seeds": a.seeds, "fid": summary}))


if __name__ == "__main__":
    main()
