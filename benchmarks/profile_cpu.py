"""Where a finetune iteration's and an evaluation's CPU time goes (issue 28, step 3), by torch operator.

    python benchmarks/profile_cpu.py [--iterations 3] [--samples 1000]
    OMP_NUM_THREADS=1 python benchmarks/profile_cpu.py --samples 5000   # as the book's build computes

One digits-preset finetune (5 DDIM steps, batch 128) through ``Finetuner.step`` after one untimed step, and
``generate`` of ``--samples`` samples at 5 steps plus their digits-b features, each under
``torch.profiler`` on the CPU. Prints the top operators by self CPU time and the share of the wall time they
account for (the rest is Python and dispatch overhead between them); then one whole evaluation seed of
``--samples`` samples by part (sampling, embedding, scores).
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from mmdlib import digits_dataset, load_model
from mmdlib.features import get_feature_extractor
from mmdlib.finetune import Finetuner
from mmdlib.generate import generate
from mmdlib.evaluate import reference_features
from mmdlib.metrics import embed, score_features
from mmdlib.presets import get_preset
from mmdlib.schedules import timestep_subset


def table(prof, wall: float, rows: int = 12) -> None:
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    print(f"wall {wall:.2f} s; operators' self time {total:.2f} s ({total / wall:.0%} of the wall, summed over threads)")
    for e in events[:rows]:
        print(f"  {e.key:42s} {e.self_cpu_time_total / 1e6:7.3f} s  {e.self_cpu_time_total / 1e6 / total:6.1%}  "
              f"x{e.count}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--samples", type=int, default=1000)
    a = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    cfg = get_preset("digits").finetune
    with tempfile.TemporaryDirectory() as out:
        ft = Finetuner(load_model("digits"), digits_dataset(cfg.split), dataclasses.replace(
            cfg, out=out, iterations=a.iterations + 1), progress=False)
        ft.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            for _ in range(a.iterations):
                ft.step()
            wall = time.perf_counter() - t0
        ft.folder.unlock()
    print(f"\nfinetune, {a.iterations} iterations ({wall / a.iterations:.3f} s each)")
    table(prof, wall)
    m, f = load_model("digits"), get_feature_extractor("digits-b")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        x = generate(m.unet, a.samples, timestep_subset(5, m.T), m.alphas_cumprod, m.sample_shape, progress=False)
        embed(f, x)
        wall = time.perf_counter() - t0
    print(f"\nevaluation: {a.samples} samples at 5 steps and their digits-b features")
    table(prof, wall)
    parts(a.samples)


def parts(n: int) -> None:
    """One evaluation seed of the book's (``n`` samples at 5 steps, scored in both digit spaces) by part, as one
    of the build's score tasks computes it: sampling, embedding, then each space's scores (FID, KID,
    precision/recall, IS) against the real features."""
    m, t = load_model("digits"), {}
    t0 = time.perf_counter()
    x = generate(m.unet, n, timestep_subset(5, m.T), m.alphas_cumprod, m.sample_shape, progress=False)
    t["sampling"] = time.perf_counter() - t0
    for space in ("digits-a", "digits-b"):
        f = get_feature_extractor(space)
        real = reference_features("digits", "all", space, f)
        t0 = time.perf_counter()
        gen = embed(f, x)
        t[f"embedding ({space})"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        score_features(f, gen, real)
        t[f"scores ({space})"] = time.perf_counter() - t0
    total = sum(t.values())
    print(f"\none evaluation seed, {n} samples, by part ({total:.1f} s):")
    for name, seconds in t.items():
        print(f"  {name:24s} {seconds:6.2f} s  {seconds / total:6.1%}")


if __name__ == "__main__":
    main()
