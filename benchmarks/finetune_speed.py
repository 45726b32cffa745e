"""MMD-DDM finetuning and evaluation speed: the reference mode (fp32, eager, no checkpointing: the
official code's way) and mmdlib's fast default, side by side in one run.

    python benchmarks/finetune_speed.py                      # paper scale: CIFAR-10 DDPM UNet, batch 128, Inception
    python benchmarks/finetune_speed.py --tiny               # a tiny size that runs on a CPU in seconds

Weights are random (only the architecture matters for speed). For each budget it prints seconds per
iteration of `Finetuner.step` (the iteration `mmdlib finetune` runs; warm-up excluded), peak memory,
the checkpointing plan and the ratio, checks that both modes give the same loss and gradient (within
bf16 tolerance), then times generating N samples at 5 steps plus their Inception features in memory
with `mmdlib.evaluate`'s own `generate` and `embed`. The last line is JSON; `--json` also writes the
report after every measurement, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

import mmdlib
from mmdlib.config import FinetuneConfig
from mmdlib.data import TensorImages
from mmdlib.features import InceptionFeatures, write_random_inception_weights
from mmdlib.finetune import Finetuner
from mmdlib.generate import generate
from mmdlib.metrics import embed
from mmdlib.models import LoadedModel
from mmdlib.speed import resolve_speed

MODES = {
    "reference": dict(precision="fp32", compile="off", checkpointing="none"),
    "fast": dict(precision="auto", compile="auto", checkpointing="auto"),
}


def cifar10_unet(tiny: bool = False):
    """google/ddpm-cifar10-32's architecture (35.7 M parameters), randomly initialised; or a tiny cousin."""
    from diffusers import UNet2DModel

    if tiny:
        return UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                           block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=None,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    return UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(128, 256, 256, 256), downsample_padding=0, flip_sin_to_cos=False,
                       freq_shift=1, norm_eps=1e-6, norm_num_groups=32, attention_head_dim=None,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_gib(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def time_finetune(mode: str, budget: int, args, weights: Path, state: dict) -> dict:
    """Seconds per iteration of one mode, and its loss and gradient at iteration 0 (for the agreement check)."""
    device = torch.device(args.device)
    unet = cifar10_unet(args.tiny)
    unet.load_state_dict(state)
    model = LoadedModel(unet, mmdlib.alphas_cumprod(mmdlib.linear_betas()), "random")
    c, s = model.sample_shape[0], model.sample_shape[1]
    n_real = 2 * args.batch if args.tiny else max(args.batch, 256)
    real = TensorImages(torch.rand(n_real, c, s, s, generator=torch.Generator().manual_seed(0)))
    with tempfile.TemporaryDirectory() as out:
        modes = {**MODES, "fast": {**MODES["fast"], "precision": args.fast_precision,
                                   "memory_gib": args.memory_gib}}
        cfg = FinetuneConfig(features="inception", budget=budget, batch_size=args.batch, lr=1e-6,
                             iterations=args.warmup + args.iterations, out=out, device=args.device, **modes[mode])
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        ft = Finetuner(model, real, cfg, extractor=InceptionFeatures(weights), progress=False)
        # agreement check: loss and gradient at iteration 0, before any step
        loss = ft.loss(0)
        loss.backward()
        grad = torch.cat([p.grad.flatten().float() for p in ft.unet.parameters()]).cpu()
        ft.opt.zero_grad(set_to_none=True)
        times = []
        for _ in range(args.warmup + args.iterations):
            _sync(device)
            t0 = time.perf_counter()
            ft.step()
            _sync(device)
            times.append(time.perf_counter() - t0)
        timed = times[args.warmup:]
        return {"s_per_it": sum(timed) / len(timed), "first_s": times[0], "peak_gib": _peak_gib(device),
                "loss": loss.item(), "grad": grad, "speed": dataclasses.asdict(ft.speed), "memory": ft.memory}


def time_evaluation(mode: str, args, weights: Path, state: dict) -> dict:
    """N samples at 5 steps and their Inception features, in memory, through mmdlib.evaluate's generate and
    embed; the fast mode samples and embeds under bf16 autocast with the UNet compiled and channels-last.
    One untimed batch first (warm-up, compilation)."""
    device = torch.device(args.device)
    unet = cifar10_unet(args.tiny)
    unet.load_state_dict(state)
    speed = resolve_speed(*((args.fast_precision, "auto") if mode == "fast" else ("fp32", "off")), device)
    precision = "bf16" if speed.bf16 else "fp32"
    unet = speed.place(unet, device).eval()
    net, ext = speed.compiled(unet), speed.place(InceptionFeatures(weights), device)
    ac = mmdlib.alphas_cumprod(mmdlib.linear_betas())
    steps, shape = mmdlib.timestep_subset(5), (3, unet.config.sample_size, unet.config.sample_size)

    def run(n):
        x = generate(net, n, steps, ac, shape, batch_size=args.eval_batch, device=device, precision=precision)
        return embed(ext, x, batch_size=args.eval_batch, device=device, precision=precision)

    _sync(device)
    t0 = time.perf_counter()
    run(min(args.eval_batch, args.eval_samples))
    _sync(device)
    t1 = time.perf_counter()
    feats = run(args.eval_samples)
    _sync(device)
    return {"seconds": time.perf_counter() - t1, "warmup_s": t1 - t0, "samples": args.eval_samples,
            "precision": precision, "compile": speed.compile, "features": tuple(feats.shape)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="tiny UNet and batch: runs on a CPU in seconds")
    p.add_argument("--budgets", default="5,10,20")
    p.add_argument("--batch", type=int, default=None, help="default 128 (4 with --tiny)")
    p.add_argument("--iterations", type=int, default=None, help="timed iterations (default 10, 2 with --tiny)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations first (default 3, 1 with --tiny)")
    p.add_argument("--eval-samples", type=int, default=None, help="default 50000 (8 with --tiny); 0 skips evaluation")
    p.add_argument("--eval-batch", type=int, default=1000)
    p.add_argument("--memory-gib", type=float, default=12.0,
                   help="the fast mode's memory for --checkpointing auto (the issue's goal: 12 GiB at 5 steps)")
    p.add_argument("--json", default=None, help="also write the report here after every measurement")
    p.add_argument("--inception-weights", default=None, help="a torch-fidelity Inception weights file (else random)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--modes", default="reference,fast")
    p.add_argument("--fast-precision", default="auto", help="the fast mode's precision: auto (bf16 on CUDA), bf16, fp32")
    a = p.parse_args(argv)

    def save():
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(report, default=str, indent=1))

    for k, full, tiny in (("batch", 128, 4), ("iterations", 10, 2), ("warmup", 3, 1), ("eval_samples", 50000, 8)):
        if getattr(a, k) is None:
            setattr(a, k, tiny if a.tiny else full)
    weights = Path(a.inception_weights) if a.inception_weights else \
        write_random_inception_weights(Path(tempfile.mkdtemp()) / "inception.pth")
    torch.manual_seed(0)
    state = cifar10_unet(a.tiny).state_dict()
    modes = a.modes.split(",")
    device_name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    print(f"device: {device_name}, torch {torch.__version__}, batch {a.batch}, "
          f"{sum(v.numel() for v in state.values()) / 1e6:.1f} M parameters")
    report = {"device": device_name, "torch": torch.__version__, "batch": a.batch, "tiny": a.tiny, "finetune": {}}
    for b in [int(x) for x in a.budgets.split(",")]:
        res = {m: time_finetune(m, b, a, weights, state) for m in modes}
        row = {m: {k: v for k, v in r.items() if k != "grad"} for m, r in res.items()}
        if len(modes) == 2:
            r0, r1 = (res[m] for m in modes)
            row["ratio"] = r0["s_per_it"] / r1["s_per_it"]
            row["loss_rel_diff"] = abs(r1["loss"] - r0["loss"]) / max(abs(r0["loss"]), 1e-12)
            row["grad_cosine"] = torch.nn.functional.cosine_similarity(r0["grad"], r1["grad"], dim=0).item()
            row["grad_rel_err"] = ((r1["grad"] - r0["grad"]).norm() / r0["grad"].norm()).item()
        report["finetune"][b] = row
        save()
        mem = lambda r: f"{r['peak_gib']:.1f} GiB" if r["peak_gib"] is not None else "n/a"  # noqa: E731
        print(f"budget {b:2d}: " + " | ".join(f"{m} {res[m]['s_per_it']:.3f} s/it, peak {mem(res[m])}, "
                                              f"{res[m]['memory']['checkpointed']}/{b} steps checkpointed"
                                              for m in modes)
              + (f" | ratio {row['ratio']:.2f}x, loss rel diff {row['loss_rel_diff']:.2e}, grad cosine "
                 f"{row['grad_cosine']:.5f}, grad rel err {row['grad_rel_err']:.2e}" if "ratio" in row else ""),
              flush=True)
    if a.eval_samples:
        report["evaluation"] = {}
        for m in modes:
            r = report["evaluation"][m] = time_evaluation(m, a, weights, state)
            save()
            print(f"evaluation ({m}, {r['precision']}): {r['samples']} samples at 5 steps + Inception features in "
                  f"{r['seconds']:.1f} s (+{r['warmup_s']:.1f} s warm-up)", flush=True)
    print(json.dumps(report, default=str))
    return report


if __name__ == "__main__":
    main()
