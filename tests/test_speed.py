"""The fast path computes the same loss and gradients as the reference path; the benchmark's code runs."""
import sys
from pathlib import Path

import torch
from helpers import make_tiny_unet

import mmdlib
from mmdlib.finetune import FinetuneConfig, Finetuner, resolve_speed
from mmdlib.models import LoadedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _loss_and_grad(tmp_path, **kw):
    model = LoadedModel(make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny")
    cfg = FinetuneConfig(features="digits-a", timesteps=3, batch_size=16, out=str(tmp_path / str(kw)), device="cpu",
                         **kw)
    ft = Finetuner(model, mmdlib.digits_dataset("train"), cfg, progress=False)
    loss = ft.loss(0, list(range(16)), None)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in ft.unet.parameters()])


def test_bf16_autocast_agrees_with_fp32_within_bf16_tolerance(tmp_path):
    l32, g32 = _loss_and_grad(tmp_path, precision="fp32", checkpointing=False)
    l16, g16 = _loss_and_grad(tmp_path, precision="bf16", checkpointing=True)
    assert abs(l16 - l32) <= 0.05 * abs(l32)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.98
    assert 0.9 < (g16.norm() / g32.norm()).item() < 1.1


def test_speed_switches_by_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_speed(FinetuneConfig(), cpu) == {"bf16": False, "channels_last": False, "fused_adam": False,
                                                    "compile": False}
    assert resolve_speed(FinetuneConfig(), cuda) == {"bf16": True, "channels_last": True, "fused_adam": True,
                                                     "compile": True}
    ref = FinetuneConfig(precision="fp32", compile="off")
    assert not any(resolve_speed(ref, cuda).values())


def test_benchmark_runs_at_tiny_size(capsys):
    import finetune_speed

    report = finetune_speed.main(["--tiny", "--budgets", "2", "--fast-precision", "bf16", "--iterations", "1",
                                  "--warmup", "0", "--eval-samples", "4"])
    row = report["finetune"][2]
    assert row["reference"]["s_per_it"] > 0 and row["fast"]["s_per_it"] > 0 and row["ratio"] > 0
    assert row["fast"]["speed"]["bf16"] and not row["reference"]["speed"]["bf16"]
    assert row["grad_cosine"] > 0.95 and row["loss_rel_diff"] < 0.05
    assert report["evaluation"]["fast"]["features"] == (4, 2048)
    out = capsys.readouterr().out
    assert "ratio" in out and out.strip().splitlines()[-1].startswith("{")
