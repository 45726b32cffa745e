import json
import re

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline

import mmdlib
from mmdlib.models import load_model, save_pipeline
from helpers import make_tiny_unet


def _legacy_layout(folder, unet):
    """google/ddpm-cifar10-32's layout: the UNet's config.json and weights at the root, a legacy scheduler config."""
    unet.save_pretrained(folder)
    (folder / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "GaussianDDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
         "timesteps": 1000, "variance_type": "fixed_large"}))


def test_local_bare_folder_and_schedule(tmp_path):
    unet = make_tiny_unet()
    _legacy_layout(tmp_path, unet)
    m = load_model(str(tmp_path))
    assert m.T == 1000 and m.sample_shape == (3, 8, 8)
    torch.testing.assert_close(m.alphas_cumprod, mmdlib.alphas_cumprod(mmdlib.linear_betas()))
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([3, 500])
    torch.testing.assert_close(m.unet(x, t).sample, unet(x, t).sample)


def test_hub_id_from_the_offline_cache(tmp_path, monkeypatch):
    # A Hugging Face cache laid out as `hf download google/ddpm-cifar10-32` leaves it.
    snap = tmp_path / "hub" / "models--google--ddpm-cifar10-32" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    _legacy_layout(snap, make_tiny_unet())
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    m = load_model("google/ddpm-cifar10-32")  # reachable by its hub id; "cifar10" is the paper's EMA model
    assert m.source == "google/ddpm-cifar10-32" and m.T == 1000


def test_hub_id_offline_without_copy_says_how(tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(mmdlib.MMDLibError, match="hf download google/ddpm-ema-church-256"):
        load_model("google/ddpm-ema-church-256")


@pytest.mark.parametrize("name", ["cifar10", "church", "celeba64", "imagenet64"])
def test_a_paper_model_not_downloaded_offline_names_its_url_and_place(name):
    from mmdlib.models import PAPER_MODELS

    with pytest.raises(mmdlib.MMDLibError, match=f"model '{name}' is not downloaded yet and this process is offline"
                       f".*{re.escape(PAPER_MODELS[name].page or PAPER_MODELS[name].url)}.*downloads/"):
        load_model(name)


def test_unknown_model_lists_known():
    with pytest.raises(mmdlib.MMDLibError, match="known name \\(digits, cifar10, church, celeba64, imagenet64\\)"):
        load_model("cifar100")


@pytest.mark.parametrize("budget", [1, 5, 10])
def test_saved_pipeline_samples_like_ddim_sample(tmp_path, budget):
    unet = make_tiny_unet()
    save_pipeline(unet, tmp_path / "pipe", budget=budget)
    pipe = DDIMPipeline.from_pretrained(tmp_path / "pipe")
    meta = json.loads((tmp_path / "pipe" / "mmdlib.json").read_text())
    assert meta["timesteps"] == mmdlib.timestep_subset(budget)
    x_T = mmdlib.noise(range(3), (3, 8, 8))
    with torch.no_grad():
        ours = mmdlib.ddim_sample(unet, x_T, meta["timesteps"], mmdlib.alphas_cumprod(mmdlib.linear_betas()))
    # DDIMPipeline draws x_T from its generator; hand it ours by patching its randn for this call.
    import diffusers.pipelines.ddim.pipeline_ddim as pd
    orig = pd.randn_tensor
    pd.randn_tensor = lambda *a, **k: x_T.clone()
    try:
        images = pipe(batch_size=3, num_inference_steps=budget, eta=0.0, output_type="np").images
    finally:
        pd.randn_tensor = orig
    assert sorted(pipe.scheduler.timesteps.tolist()) == meta["timesteps"]
    expected = (ours.clamp(-1, 1) / 2 + 0.5).permute(0, 2, 3, 1).numpy()  # the pipeline's own output mapping
    torch.testing.assert_close(torch.from_numpy(images), torch.from_numpy(expected), rtol=1e-5, atol=1e-5)
    reloaded = load_model(str(tmp_path / "pipe"))
    assert reloaded.meta["budget"] == budget
    torch.testing.assert_close(reloaded.alphas_cumprod, mmdlib.alphas_cumprod(mmdlib.linear_betas()))


def test_saved_pipeline_with_a_non_linear_beta_schedule_and_spacing_keeps_them(tmp_path):
    ac = mmdlib.alphas_cumprod(mmdlib.linear_betas(1000, 1e-4, 0.03))
    with pytest.warns(UserWarning, match="quadratic spacing cannot be expressed"):
        save_pipeline(make_tiny_unet(), tmp_path / "p", budget=5, alphas_cumprod=ac, timestep_spacing="quadratic")
    m = load_model(str(tmp_path / "p"))
    torch.testing.assert_close(m.alphas_cumprod, ac, rtol=1e-6, atol=0)
    assert m.meta["timesteps"] == mmdlib.timestep_subset(5, spacing="quadratic")
    assert m.meta["timestep_spacing"] == "quadratic" and m.meta["budget"] == 5


@pytest.mark.parametrize("sampler,eta,budget", [("ddim", 0.0, 5), ("ddim", 0.6, 5), ("ddim", 1.0, 3), ("ddpm", None, 5),
                                                ("ddpm", None, 10), ("dpmpp2m", None, 5), ("dpmpp2m", None, 10),
                                                ("unipc", None, 5), ("unipc", None, 10)])
def test_exported_pipeline_reproduces_mmdlibs_chain_from_the_same_generators(tmp_path, sampler, eta, budget):
    # x_T and every step's noise from the same per-sample generators, drawn in the same order: the pipeline
    # (whatever class DiffusionPipeline picks from the folder) and mmdlib produce the same images.
    from diffusers import DiffusionPipeline

    unet = make_tiny_unet()
    save_pipeline(unet, tmp_path / "pipe", budget=budget, sampler=sampler, eta=eta or 0.0)
    meta = json.loads((tmp_path / "pipe" / "mmdlib.json").read_text())
    assert (meta["sampler"], meta["eta"], meta["budget"]) == (sampler, eta, budget)
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "pipe")
    assert type(pipe).__name__ == ("DDIMPipeline" if sampler == "ddim" else "DDPMPipeline")
    assert sorted(meta["timesteps"]) == meta["timesteps"] and len(meta["timesteps"]) == budget
    seeds = [11, 12, 13]
    call = {"eta": eta} if sampler == "ddim" else {}
    images = pipe(batch_size=3, num_inference_steps=budget, generator=mmdlib.generators(seeds), output_type="np",
                  **call).images
    if sampler == "unipc":  # the folder names mmdlib's subclass; diffusers' own class reads the same config
        from diffusers import UniPCMultistepScheduler

        plain = UniPCMultistepScheduler.from_pretrained(tmp_path / "pipe", subfolder="scheduler")
        plain.set_timesteps(budget)
        assert plain.timesteps.tolist() == pipe.scheduler.timesteps.tolist()
    with torch.no_grad():
        ours = mmdlib.sample_seeded(unet, seeds, (3, 8, 8), meta["timesteps"],
                                    mmdlib.alphas_cumprod(mmdlib.linear_betas()), sampler, **call)
    expected = (ours.clamp(-1, 1) / 2 + 0.5).permute(0, 2, 3, 1).numpy()
    torch.testing.assert_close(torch.from_numpy(images), torch.from_numpy(expected), rtol=1e-5, atol=1e-5)
    if sampler == "ddpm" or eta:  # the noise matters: other generators give other images
        other = pipe(batch_size=3, num_inference_steps=budget, generator=mmdlib.generators([11, 12, 99]),
                     output_type="np", **call).images
        assert np.abs(other[:2] - images[:2]).max() < 1e-6 and np.abs(other[2] - images[2]).max() > 1e-3


def test_export_refuses_eta_for_ddpm_and_unknown_samplers(tmp_path):
    with pytest.raises(mmdlib.MMDLibError, match="eta=0.5 applies to the ddim sampler only"):
        save_pipeline(make_tiny_unet(), tmp_path / "p", sampler="ddpm", eta=0.5)
    with pytest.raises(mmdlib.MMDLibError, match="unknown sampler 'euler'; known samplers: ddim, ddpm, dpmpp2m, unipc"):
        save_pipeline(make_tiny_unet(), tmp_path / "p", sampler="euler")
    assert not (tmp_path / "p").exists()


def test_model_identity_follows_the_weights_not_the_path(tmp_path):
    unet = make_tiny_unet()
    a = load_model(str(save_pipeline(unet, tmp_path / "a", budget=2)))
    b = load_model(str(save_pipeline(unet, tmp_path / "b", budget=2)))
    assert a.identity() == b.identity()
    with torch.no_grad():
        b.unet.conv_in.bias[0] += 1e-6  # the in-place change finetuning makes
    assert a.identity() != b.identity()
    c = load_model(str(save_pipeline(unet, tmp_path / "c", budget=2,
                                     alphas_cumprod=mmdlib.alphas_cumprod(mmdlib.linear_betas(1000, 1e-4, 0.03)))))
    assert c.identity()["weights"] == a.identity()["weights"] and c.identity() != a.identity()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp2m", "unipc"])
def test_trailing_spacing_is_written_into_every_scheduler_and_linear_only_where_it_exists(tmp_path, sampler):
    import warnings

    from diffusers import DiffusionPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # expressible: no warning
        save_pipeline(make_tiny_unet(), tmp_path / "t", budget=5, sampler=sampler, timestep_spacing="trailing")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "t")
    pipe.scheduler.set_timesteps(5)
    assert sorted(pipe.scheduler.timesteps.tolist()) == mmdlib.timestep_subset(5, spacing="trailing")
    if sampler in ("dpmpp2m", "unipc"):  # their "leading" is not DDIM's: linear cannot be expressed
        with pytest.warns(UserWarning, match=f"linear spacing cannot be expressed in the {sampler} scheduler"):
            save_pipeline(make_tiny_unet(), tmp_path / "l", budget=5, sampler=sampler, timestep_spacing="linear")
        assert json.loads((tmp_path / "l" / "mmdlib.json").read_text())["timesteps"] == mmdlib.timestep_subset(5)
