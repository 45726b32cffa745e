"""The fast path computes the same loss and gradients as the reference path; the checkpointing plan
matches what autograd keeps; the benchmark's code runs."""
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_tiny_unet

import mmdlib
import mmdlib.training
from mmdlib.finetune import FinetuneConfig, Finetuner
from mmdlib.speed import MARGIN, Speed, chain_peak, plan_checkpointing, resolve_speed, saved_bytes
from mmdlib.models import LoadedModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def _finetuner(tmp_path, **kw):
    model = LoadedModel(make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny")
    cfg = FinetuneConfig(features="digits-a", budget=3, batch_size=16, out=str(tmp_path / str(kw)), device="cpu",
                         **kw)
    return Finetuner(model, mmdlib.digits_dataset("train"), cfg, progress=False)


def _loss_and_grad(tmp_path, **kw):
    ft = _finetuner(tmp_path, **kw)
    loss = ft.loss(0)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in ft.unet.parameters()])


def test_bf16_autocast_agrees_with_fp32_within_bf16_tolerance(tmp_path):
    l32, g32 = _loss_and_grad(tmp_path, precision="fp32", checkpointing="none")
    l16, g16 = _loss_and_grad(tmp_path, precision="bf16", checkpointing="all")
    assert abs(l16 - l32) <= 0.05 * abs(l32)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.98
    assert 0.9 < (g16.norm() / g32.norm()).item() < 1.1


def test_speed_switches_by_device():
    assert resolve_speed("auto", "auto", "cpu") == Speed()
    assert resolve_speed("auto", "auto", "cuda") == Speed(bf16=True, channels_last=True, fused_adam=True, compile=True)
    assert resolve_speed("fp32", "off", "cuda") == Speed()  # the reference mode
    assert resolve_speed("bf16", "off", "cpu") == Speed(bf16=True)


def test_benchmark_runs_at_tiny_size(capsys):
    import finetune_speed

    report = finetune_speed.main(["--tiny", "--budgets", "2", "--fast-precision", "bf16", "--iterations", "1",
                                  "--warmup", "0", "--eval-samples", "4"])
    row = report["finetune"][2]
    assert row["reference"]["s_per_it"] > 0 and row["fast"]["s_per_it"] > 0 and row["ratio"] > 0
    assert row["fast"]["speed"]["bf16"] and not row["reference"]["speed"]["bf16"]
    assert row["grad_cosine"] > 0.9 and row["grad_rel_err"] < 0.5 and row["loss_rel_diff"] < 0.05
    assert report["evaluation"]["fast"]["features"] == (4, 2048)
    out = capsys.readouterr().out
    assert "ratio" in out and out.strip().splitlines()[-1].startswith("{")


def test_saved_bytes_counts_what_autograd_keeps():
    x = torch.randn(1000, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(1000))
    assert saved_bytes(lambda: torch.exp(x))[0] == 4000  # exp keeps its output
    assert saved_bytes(lambda: x * w)[0] == 8000  # mul keeps both factors
    assert saved_bytes(lambda: x * w, exclude=(w,))[0] == 4000  # parameters are resident anyway
    assert saved_bytes(lambda: (x * 2).sum())[0] == 0  # nothing saved for a constant factor or a sum
    with torch.no_grad():
        assert saved_bytes(lambda: torch.exp(x))[0] == 0


def test_checkpointing_plan_picks_the_fewest_steps_that_fit():
    step, state, feats = 4.0, 0.1, 6.0
    assert chain_peak(5, 0, step, state, feats) == 26.0  # all five steps' graphs and the features' graph
    assert chain_peak(5, 2, step, state, feats) == pytest.approx(6 + 3 * 4 + 2 * 0.1)
    assert chain_peak(5, 5, step, state, feats) == pytest.approx(6.5)  # features + the five kept inputs
    assert chain_peak(1, 1, 10.0, state, 1.0) == pytest.approx(10.1)  # the recomputed step dominates
    assert plan_checkpointing(5, step, state, feats, available=1e9) == 0
    assert plan_checkpointing(5, step, state, feats, available=MARGIN * 18.2) == 2
    assert plan_checkpointing(5, step, state, feats, available=MARGIN * 18.2 - 1e-6) == 3
    assert plan_checkpointing(5, step, state, feats, available=1.0) == 5  # nothing fits: checkpoint them all


def test_auto_estimate_matches_what_the_iteration_keeps(tmp_path):
    ft = _finetuner(tmp_path, checkpointing="auto", memory_gib=1000.0)
    assert ft.checkpoint_steps == 0 and ft.memory["policy"] == "auto"
    params = (*ft.unet.parameters(), *ft.extractor.parameters())
    kept, _ = saved_bytes(lambda: ft.loss(0), exclude=params)
    assert kept > 0
    assert abs(ft.memory["estimate_gib"] * 2**30 - kept) <= 0.1 * kept


def test_auto_checkpoints_just_enough_and_keeps_the_gradients(tmp_path):
    free = _finetuner(tmp_path / "free", checkpointing="auto", memory_gib=1000.0).memory
    n, gib = free["steps"], 2**30
    state = 16 * 64 * 4  # batch 16 of 1x8x8 fp32 inputs, deterministic DDIM
    trainable = sum(p.numel() * 4 for p in make_tiny_unet(1, 8).parameters())
    need = MARGIN * chain_peak(n, 1, free["step_gib"] * gib, state, free["features_gib"] * gib) + 3 * trainable
    ft = _finetuner(tmp_path / "tight", checkpointing="auto", memory_gib=need / gib * (1 + 1e-6))
    assert ft.checkpoint_steps == 1
    assert _finetuner(tmp_path / "tighter", checkpointing="auto", memory_gib=need / gib * 0.999).checkpoint_steps == 2
    loss = ft.loss(0)
    loss.backward()
    l0, g0 = _loss_and_grad(tmp_path / "none", checkpointing="none")
    assert loss.item() == pytest.approx(l0, rel=1e-6)
    torch.testing.assert_close(torch.cat([p.grad.flatten() for p in ft.unet.parameters()]), g0, rtol=1e-5, atol=1e-7)


def test_out_of_memory_under_auto_falls_back_to_checkpointing_every_step(tmp_path, monkeypatch):
    ft = _finetuner(tmp_path / "auto", checkpointing="auto", memory_gib=1000.0)
    real, failed = Finetuner._step, []

    def flaky(self, *a):
        if not failed:
            failed.append(self.iteration)
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, *a)

    monkeypatch.setattr(Finetuner, "_step", flaky)
    loss, gnorm = ft.step()
    assert failed == [0] and ft.iteration == 1 and ft.checkpoint_steps == 3 and ft.memory["checkpointed"] == 3
    assert loss > 0 and gnorm > 0
    failed.clear()
    fixed = _finetuner(tmp_path / "none", checkpointing="none")
    with pytest.raises(mmdlib.MMDLibError, match="out of memory at iteration 0 .*0 of 3 steps checkpointed.*"
                                                 "--checkpointing all or a smaller --batch-size"):
        fixed.step()


def test_every_fast_switch_at_once_agrees_with_the_reference(tmp_path, monkeypatch):
    """The CUDA default (bf16 autocast, channels-last, fused Adam, torch.compile, partial checkpointing) run
    on the CPU: same loss and gradient as fp32 eager within bf16 tolerance, and Adam steps."""
    l32, g32 = _loss_and_grad(tmp_path / "ref", precision="fp32", compile="off", checkpointing="none")
    monkeypatch.setattr(mmdlib.training, "resolve_speed", lambda *a: Speed(True, True, True, True))
    ft = _finetuner(tmp_path / "fast", checkpointing="none")
    ft.memory["checkpointed"] = 2  # of 3: both kinds of step go through the compiled UNet
    assert ft.net is not ft.unet and ft.opt.defaults["fused"]
    assert ft.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    loss = ft.loss(0)
    loss.backward()
    g16 = torch.cat([p.grad.flatten() for p in ft.unet.parameters()])
    assert abs(loss.item() - l32) <= 0.05 * abs(l32)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.98
    before = [p.detach().clone() for p in ft.unet.parameters()]
    ft.opt.zero_grad(set_to_none=True)
    for _ in range(2):
        loss, gnorm = ft.step()
        assert torch.isfinite(torch.tensor([loss, gnorm])).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, ft.unet.parameters()))


def test_available_memory_on_cuda_and_cpu(monkeypatch):
    from mmdlib.speed import available_bytes

    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * 2**30)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (50 * 2**30, 80 * 2**30))
    assert available_bytes("cuda", None) == 0.9 * 50 * 2**30  # free memory already excludes what torch holds
    assert available_bytes("cuda", 12.0) == 10 * 2**30  # the cap counts what torch holds now
    assert available_bytes("cpu", 4.0) == 4 * 2**30
    assert 0 < available_bytes("cpu", None) < float("inf")  # /proc/meminfo here
