"""The finetuning loop (mmdlib.finetune): it lowers the MMD, resumes to the same weights, stops on a blow-up
with the last good checkpoint, and follows a golden trajectory."""
import csv
import json
import math

import pytest
import torch
from diffusers import DDIMPipeline
from helpers import TinyFeatures, tiny_model

import mmdlib
from mmdlib.config import FinetuneConfig
from mmdlib.finetune import Finetuner, finetune
from mmdlib.real_features import PrecomputedReal, StreamedReal
from mmdlib.sampling import to_unit


def cfg(tmp_path, **kw) -> FinetuneConfig:
    base = dict(features="digits-a", budget=2, batch_size=8, lr=1e-3, iterations=4, save_every=2,
                sample_every=2, out=str(tmp_path / "run"), device="cpu")
    return FinetuneConfig(**{**base, **kw})


def weights(unet):
    return {k: v.clone() for k, v in unet.state_dict().items()}


def test_finetuning_lowers_the_mmd_it_optimises(tmp_path):
    ds = mmdlib.digits_dataset("train")
    c = cfg(tmp_path, iterations=40, batch_size=32, lr=2e-3, grad_clip=10.0)
    ft = Finetuner(tiny_model(), ds, c, progress=False)

    def held_out_mmd():
        with torch.no_grad():
            x = mmdlib.to_unit(mmdlib.sample_seeded(ft.net, range(5000, 5256), (1, 8, 8), ft.timesteps,
                                                    ft.model.alphas_cumprod))
            return mmdlib.mmd2_unbiased(ft.extractor(x), ft.real.features, "cubic").item()

    before = held_out_mmd()
    path = ft.run()
    after = held_out_mmd()
    assert after < 0.7 * before, (before, after)
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [int(r["iteration"]) for r in rows] == list(range(1, 41))
    assert (tmp_path / "run" / "samples" / "iter_000000.png").exists()
    assert (tmp_path / "run" / "samples" / "iter_000040.png").exists()
    pipe = DDIMPipeline.from_pretrained(path)
    assert json.loads((path / "mmdlib.json").read_text())["timesteps"] == [0, 500]
    torch.testing.assert_close(pipe.unet.state_dict()["conv_in.weight"], ft.unet.state_dict()["conv_in.weight"])


@pytest.mark.parametrize("extra", [{}, {"dropout": 0.3}, {"flip": True}], ids=["paper", "dropout", "flips"])
def test_resume_reaches_the_same_weights(tmp_path, monkeypatch, extra):
    ds = mmdlib.digits_dataset("train")
    make = lambda path: cfg(path, **extra)  # noqa: E731
    straight = Finetuner(tiny_model(), ds, make(tmp_path / "a"), progress=False)
    straight.run()

    interrupted = Finetuner(tiny_model(), ds, make(tmp_path / "b"), progress=False)
    real_loss = Finetuner.loss

    def crash_at_3(self, it, *a):
        if it == 3:
            raise KeyboardInterrupt
        return real_loss(self, it, *a)

    monkeypatch.setattr(Finetuner, "loss", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    monkeypatch.setattr(Finetuner, "loss", real_loss)
    resumed = Finetuner(tiny_model(), ds, make(tmp_path / "b"), resume=True, progress=False)
    assert resumed.iteration == 2
    resumed.run()
    a, b = weights(straight.unet), weights(resumed.unet)
    assert not torch.equal(a["conv_in.weight"], weights(tiny_model().unet)["conv_in.weight"])
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)
    rows = list(csv.DictReader((tmp_path / "b" / "run" / "log.csv").open()))
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]


def test_dropout_and_flips_as_the_official_code_finetunes(tmp_path):
    from mmdlib.data import Mirrored

    ds = mmdlib.digits_dataset("train")
    m = Mirrored(ds)
    assert len(m) == 2 * len(ds) and torch.equal(m[len(ds) + 5][0], ds[5][0].flip(-1)) and torch.equal(m[5][0], ds[5][0])
    plain = Finetuner(tiny_model(), ds, cfg(tmp_path / "plain"), progress=False)
    dropped = Finetuner(tiny_model(), ds, cfg(tmp_path / "dropout", dropout=0.5), progress=False)
    flipped = Finetuner(tiny_model(), ds, cfg(tmp_path / "flip", flip=True), progress=False)
    assert len(flipped.dataset) == 2 * len(ds) and flipped.real.features.shape[0] == 2 * len(ds)
    assert all(mod.p == 0.5 for mod in dropped.unet.modules() if isinstance(mod, torch.nn.Dropout))
    with torch.no_grad():  # the same iteration's loss: dropout changes it, eval mode does not
        plain.unet.eval(), dropped.unet.train()
        assert plain.loss(0).item() != dropped.loss(0).item()
        dropped.unet.eval()
        assert plain.loss(0).item() == dropped.loss(0).item()
    dropped.run()
    assert not dropped.unet.training  # what is exported and evaluated has no dropout
    # runs from before these settings keep their identity while the settings are off
    assert "dropout" not in plain.cfg.run_identity() and "flip" not in plain.cfg.run_identity()
    assert dropped.cfg.run_identity()["dropout"] == 0.5 and flipped.cfg.run_identity()["flip"] is True
    with pytest.raises(mmdlib.MMDLibError, match="dropout must be None .* or a probability in \\[0, 1\\), got 1.5"):
        FinetuneConfig(dropout=1.5).check()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    ds = mmdlib.digits_dataset("train")
    ft = Finetuner(tiny_model(), ds, cfg(tmp_path, save_every=1), progress=False)
    real_loss = Finetuner.loss
    monkeypatch.setattr(Finetuner, "loss",
                        lambda self, it, *a: real_loss(self, it, *a) * (float("nan") if it == 2 else 1.0))
    with pytest.raises(mmdlib.MMDLibError, match=r"loss became nan at iteration 2 \(lr 0.001\); stopped.*\(iteration 2\), was written before"):
        ft.run()
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["unet"].values())


def test_refuses_an_output_folder_holding_a_run(tmp_path):
    ds = mmdlib.digits_dataset("train")
    finetune(tiny_model(), ds, cfg(tmp_path, iterations=2), progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}
    with pytest.raises(mmdlib.MMDLibError, match="already holds a run .*--resume.*--overwrite.*Nothing was changed"):
        Finetuner(tiny_model(), ds, cfg(tmp_path, iterations=2), progress=False)
    with pytest.raises(mmdlib.MMDLibError, match="holds a different run; these settings differ.*'kernel': \\('cubic', 'linear'\\)"):
        Finetuner(tiny_model(), ds, cfg(tmp_path, iterations=2, kernel="linear"), resume=True, progress=False)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == before
    ft = Finetuner(tiny_model(), ds, cfg(tmp_path, iterations=2), overwrite=True, progress=False)
    assert ft.iteration == 0  # the old run is replaced when the new one starts, not before
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == before
    ft.run()
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["iteration"] == 2
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} != before


@pytest.mark.parametrize("kw,msg", [
    ({"batch_size": 1}, "batch size 1 is too small.*at least 2"),
    ({"kernel": "gauss"}, "unknown kernel 'gauss'; known: linear, cubic, rbf"),
    ({"features": "vgg"}, "unknown features 'vgg'; known: inception, inception-spatial, clip"),
    ({"sampler": "euler"}, "unknown sampler 'euler'; known: ddim, ddpm"),
    ({"timestep_spacing": "cosine"}, "unknown timestep_spacing 'cosine'; known: auto, linear, quadratic, trailing"),
    ({"budget": 0}, "budget must be an integer in 1..T=1000, got 0"),
    ({"budget": 1001}, "budget must be an integer in 1..T=1000, got 1001"),
    ({"checkpointing": "some"}, "unknown checkpointing setting 'some'; known: auto, all, none"),
    ({"precision": "fp16"}, "unknown precision setting 'fp16'; known: auto, fp32, bf16"),
    ({"compile": "yes"}, "unknown compile setting 'yes'; known: auto, on, off"),
    ({"memory_gib": 0.0}, "memory_gib must be a finite number > 0"),
])
def test_bad_config(tmp_path, kw, msg):
    with pytest.raises(mmdlib.MMDLibError, match=msg):
        Finetuner(tiny_model(), mmdlib.digits_dataset("train"), cfg(tmp_path, **kw), progress=False)
    assert not (tmp_path / "run").exists()


def test_dataset_that_does_not_fit_the_model(tmp_path):
    rgb = mmdlib.data.TensorImages(torch.rand(10, 3, 32, 32))
    with pytest.raises(mmdlib.MMDLibError, match=r"dataset images are \(3, 32, 32\) but the model generates \(1, 8, 8\)"):
        Finetuner(tiny_model(), rgb, cfg(tmp_path), progress=False)


def test_real_features_computed_per_batch_for_large_datasets(tmp_path, monkeypatch):
    # Same losses whether real features are precomputed or embedded per batch.
    ds = mmdlib.digits_dataset("train")
    a = Finetuner(tiny_model(), ds, cfg(tmp_path / "a", iterations=2), progress=False)
    a.real  # chosen (and embedded) on first use
    monkeypatch.setattr(mmdlib.real_features, "PRECOMPUTE_LIMIT", 0)
    b = Finetuner(tiny_model(), ds, cfg(tmp_path / "b", iterations=2), progress=False)
    assert isinstance(a.real, PrecomputedReal) and isinstance(b.real, StreamedReal)
    a.run()
    b.run()
    la = [r["loss"] for r in csv.DictReader((tmp_path / "a" / "run" / "log.csv").open())]
    lb = [r["loss"] for r in csv.DictReader((tmp_path / "b" / "run" / "log.csv").open())]
    assert [float(x) for x in la] == pytest.approx([float(x) for x in lb], rel=1e-5)


# Computed by the finetuning code before its split into loss.py, runfolder.py and real_features.py (3
# iterations, 3 steps, batch 8): a change that alters the loss, the sampler's noise, the real batches,
# clipping or Adam moves these numbers. The last number is the loss that the final weights (bitwise the
# pre-split code's, checked at one thread) give on iteration 3's batch; weights are not compared directly,
# since Adam moves parameters whose gradient is ~0 by up to lr either way with the thread count.
GOLDEN = [
    ({}, [0.0380562, 0.035588, 0.0185274], [0.6458, 0.5256, 0.4648], 0.018428519890954398),
    ({"sampler": "ddpm"}, [0.0339534, 0.0362873, 0.0272298], [0.7221, 0.6242, 0.571], 0.015344365740315613),
    ({"eta": 0.5}, [0.0360085, 0.035314, 0.0211703], [0.6202, 0.6122, 0.5412], 0.01615207155546461),
]


@pytest.mark.parametrize("kw,losses,grad_norms,final", GOLDEN)
def test_golden_finetune_trajectory(tmp_path, kw, losses, grad_norms, final):
    ft = Finetuner(tiny_model(), mmdlib.digits_dataset("train"), cfg(tmp_path, budget=3, iterations=3, **kw),
                   extractor=TinyFeatures(), progress=False)
    ft.run()
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [float(r["loss"]) for r in rows] == pytest.approx(losses, rel=1e-5)
    assert [float(r["grad_norm"]) for r in rows] == pytest.approx(grad_norms, rel=1e-3)
    with torch.no_grad():
        assert ft.loss(3).item() == pytest.approx(final, rel=1e-4)


def test_the_finetuner_trains_its_own_copy(tmp_path):
    model = tiny_model()
    before = weights(model.unet)
    ft = Finetuner(model, mmdlib.digits_dataset("train"), cfg(tmp_path, iterations=2), extractor=TinyFeatures(),
                   progress=False)
    ft.run()
    assert all(torch.equal(v, before[k]) for k, v in model.unet.state_dict().items())
    assert not torch.equal(ft.model.unet.conv_in.weight, before["conv_in.weight"]) and ft.model.unet is ft.unet


def test_a_non_finite_gradient_norm_stops_without_stepping(tmp_path, monkeypatch):
    ft = Finetuner(tiny_model(), mmdlib.digits_dataset("train"), cfg(tmp_path, save_every=1), extractor=TinyFeatures(),
                   progress=False)
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, m: clip(params, m) * (
        float("inf") if ft.iteration == 1 else 1.0))
    after_one = {}
    monkeypatch.setattr(ft, "save_checkpoint", lambda: after_one.update(weights(ft.unet)))
    with pytest.raises(mmdlib.MMDLibError, match=r"gradient norm became inf at iteration 1 \(lr 0.001\); stopped"):
        ft.run()
    assert ft.iteration == 1 and all(torch.equal(v, after_one[k]) for k, v in ft.unet.state_dict().items())


@pytest.mark.parametrize("kw,carried", [({"sampler": "ddpm"}, 2), ({"eta": 0.5}, 2), ({"sampler": "dpmpp2m"}, 2),
                                        ({"sampler": "unipc"}, 4)])
def test_the_memory_plan_keeps_a_steps_noise_and_a_solvers_history(tmp_path, monkeypatch, kw, carried):
    seen = []
    plan = mmdlib.speed.plan_checkpointing
    monkeypatch.setattr(mmdlib.speed, "plan_checkpointing", lambda n, step, state, *a: seen.append(state) or
                        plan(n, step, state, *a))
    for extra in ({}, kw):
        c = cfg(tmp_path / str(extra), checkpointing="auto", **extra)
        Finetuner(tiny_model(), mmdlib.digits_dataset("train"), c, extractor=TinyFeatures(), progress=False).memory
    # a checkpointed step keeps its input, its noise when it has one, and a multistep solver's history
    assert seen == [8 * 64 * 4, carried * 8 * 64 * 4]


@pytest.mark.parametrize("sampler", ["dpmpp2m", "unipc"])
def test_finetuning_under_a_multistep_solver_trains_on_its_own_timesteps_and_exports_it(tmp_path, sampler):
    c = cfg(tmp_path, sampler=sampler, budget=3, iterations=2)
    assert c.run_identity()["timestep_spacing"] == "trailing"  # "auto": the solver's own spacing
    assert cfg(tmp_path, sampler=sampler, budget=3, timestep_spacing="trailing").run_identity() == c.run_identity()
    ft = Finetuner(tiny_model(), mmdlib.digits_dataset("train"), c, extractor=TinyFeatures(), progress=False)
    before = weights(ft.unet)
    path = ft.run()
    meta = json.loads((path / "mmdlib.json").read_text())
    assert (meta["sampler"], meta["timestep_spacing"], meta["timesteps"]) == (sampler, "trailing", [332, 666, 999])
    assert not torch.equal(ft.unet.conv_in.weight, before["conv_in.weight"])
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) for r in rows)


def test_learning_the_timesteps_with_the_weights_moves_both_and_exports_them(tmp_path):
    from diffusers import DiffusionPipeline

    c = cfg(tmp_path, budget=3, iterations=3, learn_timesteps=True, timestep_lr=0.1)
    ft = Finetuner(tiny_model(), mmdlib.digits_dataset("train"), c, extractor=TinyFeatures(), progress=False)
    start, before = ft.current_timesteps(), weights(ft.unet)
    assert start == [0, 333, 666]
    path = ft.run()
    learnt = ft.current_timesteps()
    assert learnt[0] == 0 and learnt[1:] != [333.0, 666.0] and all(b > a for a, b in zip(learnt, learnt[1:]))
    assert not torch.equal(ft.unet.conv_in.weight, before["conv_in.weight"])
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert [float(t) for t in rows[-1]["timesteps"].split()] == pytest.approx(learnt, abs=1e-4)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["timesteps"] == learnt
    meta = json.loads((path / "mmdlib.json").read_text())
    assert meta["timesteps"] == pytest.approx(learnt) and meta["finetune"]["learn_timesteps"] is True
    pipe = DiffusionPipeline.from_pretrained(path)
    images = pipe(batch_size=2, num_inference_steps=3, generator=mmdlib.generators([7, 8]), output_type="pt").images
    with torch.no_grad():
        ours = mmdlib.sample_seeded(ft.unet, [7, 8], (1, 8, 8), torch.tensor(learnt, dtype=torch.float64),
                                    ft.model.alphas_cumprod)
    torch.testing.assert_close(images, to_unit(ours), rtol=1e-5, atol=1e-5)


def test_with_the_weights_frozen_only_the_timesteps_move(tmp_path):
    from mmdlib.cache import weights_hash

    c = cfg(tmp_path, budget=3, iterations=3, learn_timesteps=True, freeze_weights=True, timestep_lr=0.1)
    model = tiny_model()
    ft = Finetuner(model, mmdlib.digits_dataset("train"), c, extractor=TinyFeatures(), progress=False)
    ft.run()
    assert weights_hash(ft.unet) == weights_hash(model.unet) and ft.current_timesteps()[1:] != [333.0, 666.0]
    rows = list(csv.DictReader((tmp_path / "run" / "log.csv").open()))
    assert all(float(r["grad_norm"]) > 0 for r in rows)  # the timesteps' gradient


def test_an_interrupted_joint_run_resumes_to_the_same_schedule_and_weights(tmp_path, monkeypatch):
    ds, make = mmdlib.digits_dataset("train"), lambda p: cfg(p, budget=3, learn_timesteps=True, timestep_lr=0.1)
    straight = Finetuner(tiny_model(), ds, make(tmp_path / "a"), extractor=TinyFeatures(), progress=False)
    straight.run()
    interrupted = Finetuner(tiny_model(), ds, make(tmp_path / "b"), extractor=TinyFeatures(), progress=False)
    real_loss = Finetuner.loss
    monkeypatch.setattr(Finetuner, "loss", lambda self, it: (_ for _ in ()).throw(KeyboardInterrupt) if it == 3
                        else real_loss(self, it))
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    monkeypatch.setattr(Finetuner, "loss", real_loss)
    resumed = Finetuner(tiny_model(), ds, make(tmp_path / "b"), extractor=TinyFeatures(), resume=True, progress=False)
    assert resumed.iteration == 2 and resumed.current_timesteps() != straight.current_timesteps()
    resumed.run()
    assert resumed.current_timesteps() == pytest.approx(straight.current_timesteps(), rel=1e-9, abs=1e-9)
    a, b = weights(straight.unet), weights(resumed.unet)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)
