"""Runs side by side: one finetune alone, then N at once (N = 2 and the core count), under each thread policy.

    python benchmarks/concurrency.py [--iterations 12] [--repeats 2] [--policies mmdlib,torch-default,one-thread]

Each run is the real command line, ``python -m mmdlib finetune`` on the digits preset (5 steps, batch 128,
``--iterations``), in its own temporary folder; all N of a group start together. Reported per run: the steady
seconds per iteration (the mean of iterations 3 to the end, from its log.csv: start-up and the first
iterations' warm-up left out) and the wall time including start-up; one untimed run goes first. "vs alone" divides the speed of each
run in a group by the speed of one run alone under mmdlib's policy (the best a run gets alone); a fair share
of the machine is 1/N. Policies:

- ``mmdlib``: no thread setting, mmdlib's own (``mmdlib.cores``: the cores divided among active runs);
- ``torch-default``: ``OMP_NUM_THREADS`` = the cores in every run (torch's default, which mmdlib respects
  when it is set): what every run did before ``mmdlib.cores``;
- ``one-thread``: ``MMDLIB_THREADS=1`` in every run.

Nothing else may run on the machine meanwhile: the numbers are shares of it.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

POLICIES = {"mmdlib": {}, "torch-default": {"OMP_NUM_THREADS": str(os.cpu_count() or 1)},
            "one-thread": {"MMDLIB_THREADS": "1"}}


def group(n: int, policy: str, iterations: int) -> list[dict]:
    """Start ``n`` finetunes at once under ``policy``; (steady s/it, wall s) of each."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MMDLIB_THREADS")}
    env |= {"HF_HUB_OFFLINE": "1", **POLICIES[policy]}
    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i in range(n):
            cmd = [sys.executable, "-m", "mmdlib", "finetune", "--iterations", str(iterations), "--save-every",
                   str(iterations), "--sample-every", str(10 * iterations), "--out", f"{tmp}/run{i}"]
            procs.append((time.perf_counter(), subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                                                stderr=subprocess.PIPE, text=True)))
        out = []
        for i, (t0, p) in enumerate(procs):
            err = p.communicate()[1]
            wall = time.perf_counter() - t0
            if p.returncode:
                raise SystemExit(f"run {i} of {n} ({policy}) failed:\n{err[-2000:]}")
            seconds = [float(r["seconds"]) for r in csv.DictReader(open(f"{tmp}/run{i}/log.csv"))]
            out.append({"steady": sum(seconds[2:]) / len(seconds[2:]), "wall": wall})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iterations", type=int, default=12)
    p.add_argument("--policies", default=",".join(POLICIES))
    p.add_argument("--repeats", type=int, default=2, help="each group this many times; the fastest is kept (this "
                   "VM's speed alone varies by up to 1.4x from run to run)")
    a = p.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    sizes = sorted({1, 2, cores})
    group(1, "mmdlib", 3)  # untimed: the first run after an idle spell is slower (caches, clocks), measured
    results = {pol: {n: min((group(n, pol, a.iterations) for _ in range(a.repeats)),
                            key=lambda runs: sum(r["steady"] for r in runs)) for n in sizes}
               for pol in a.policies.split(",")}
    alone = results.get("mmdlib", next(iter(results.values())))[1][0]["steady"]
    print(f"{cores} cores; digits preset, 5 steps, batch 128, {a.iterations} iterations per run\n")
    print("| policy | runs at once | steady s/it (each) | wall s (each) | each run's speed vs alone |")
    print("|---|---:|---:|---:|---:|")
    for pol, by_n in results.items():
        for n, runs in by_n.items():
            steady = " / ".join(f"{r['steady']:.3f}" for r in runs)
            wall = " / ".join(f"{r['wall']:.1f}" for r in runs)
            speed = " / ".join(f"{alone / r['steady']:.2f}x" for r in runs)
            print(f"| {pol} | {n} | {steady} | {wall} | {speed} |")
    print(json.dumps({"cores": cores, "iterations": a.iterations, "results": results}))


if __name__ == "__main__":
    main()
