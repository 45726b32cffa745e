"""save_pipeline: a folder diffusers loads whose scheduler steps mmdlib's chain, for every sampler."""
import json

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline
from helpers import make_tiny_unet

import mmdlib
from mmdlib.export import save_pipeline
from mmdlib.models import load_model


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
    save_pipeline(make_tiny_unet(), tmp_path / "p", budget=5, alphas_cumprod=ac, timestep_spacing="quadratic")
    m = load_model(str(tmp_path / "p"))
    torch.testing.assert_close(m.alphas_cumprod, ac, rtol=1e-6, atol=0)
    assert m.meta["timesteps"] == mmdlib.timestep_subset(5, spacing="quadratic")
    assert m.meta["timestep_spacing"] == "quadratic" and m.meta["budget"] == 5


@pytest.mark.parametrize("sampler,eta,budget", [(s, 0.0 if mmdlib.SAMPLERS[s].eta else None, b)
                                                for s in mmdlib.SAMPLERS for b in (5, 10)] + [("ddim", 0.6, 5),
                                                                                             ("ddim", 1.0, 3)])
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


@pytest.mark.parametrize("sampler", mmdlib.SAMPLERS)
def test_trailing_spacing_is_written_into_every_scheduler_and_linear_only_where_it_exists(tmp_path, sampler):
    from diffusers import DiffusionPipeline

    save_pipeline(make_tiny_unet(), tmp_path / "t", budget=5, sampler=sampler, timestep_spacing="trailing")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "t")
    assert type(pipe.scheduler).__name__ == mmdlib.SAMPLERS[sampler].scheduler.split(":")[-1]  # diffusers' own
    pipe.scheduler.set_timesteps(5)
    assert sorted(pipe.scheduler.timesteps.tolist()) == mmdlib.timestep_subset(5, spacing="trailing")


@pytest.mark.parametrize("sampler", mmdlib.SAMPLERS)
def test_every_spacing_and_budget_is_stepped_exactly_by_the_scheduler_an_export_writes(sampler):
    # diffusers' own scheduler where it visits mmdlib's timesteps (DDIM's and DDPM's step to t - T // n), mmdlib's
    # MMDLibScheduler elsewhere (quadratic, linear for the solvers, trailing with a budget that does not divide T)
    from mmdlib.export import _class, native, scheduler_for

    unet, ac, record = make_tiny_unet(), mmdlib.alphas_cumprod(mmdlib.linear_betas()), mmdlib.SAMPLERS[sampler]
    seen = set()
    options = {"eta": 0.5} if record.eta else {}
    for spacing in ("linear", "quadratic", "trailing"):
        for budget in range(1, 13):
            steps = mmdlib.timestep_subset(budget, spacing=spacing)
            scheduler = scheduler_for(record, spacing, steps, ac, options.get("eta", 0.0))
            is_native = native(record, spacing, steps, 1000)
            seen.add(is_native)
            pipe = _class(record.pipeline if is_native else "DDPMPipeline")(unet=unet, scheduler=scheduler)
            images = pipe(batch_size=2, num_inference_steps=budget, generator=mmdlib.generators([3, 4]),
                          output_type="pt", **(options if type(pipe).__name__ == "DDIMPipeline" else {})).images
            with torch.no_grad():
                ours = mmdlib.sample_seeded(unet, [3, 4], (3, 8, 8), steps, ac, sampler, **options)
            torch.testing.assert_close(images, mmdlib.to_unit(ours), rtol=1e-5, atol=1e-5,
                                       msg=f"{sampler}, {spacing}, budget {budget}")
    assert seen == {True, False}
    if sampler in ("ddim", "ddpm"):  # the case diffusers' scheduler steps wrongly (0.02-0.12 off at budget 6)
        assert not native(record, "trailing", mmdlib.timestep_subset(6, spacing="trailing"), 1000)


@pytest.mark.parametrize("sampler", mmdlib.SAMPLERS)
def test_real_valued_timesteps_are_exported_with_mmdlibs_scheduler(tmp_path, sampler):
    from diffusers import DiffusionPipeline

    unet, ac = make_tiny_unet(), mmdlib.alphas_cumprod(mmdlib.linear_betas())
    steps = torch.tensor([3.7, 180.2, 433.0, 701.9, 998.5], dtype=torch.float64)
    options = {"eta": 0.5} if mmdlib.SAMPLERS[sampler].eta else {}
    save_pipeline(unet, tmp_path / "p", 5, ac, sampler=sampler, timesteps=steps, **options)
    meta = json.loads((tmp_path / "p" / "mmdlib.json").read_text())
    assert meta["timesteps"] == [3.7, 180.2, 433, 701.9, 998.5] and meta["timestep_spacing"] == "explicit"
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "p")
    assert type(pipe.scheduler).__name__ == "MMDLibScheduler" and type(pipe).__name__ == "DDPMPipeline"
    images = pipe(batch_size=2, num_inference_steps=5, generator=mmdlib.generators([3, 4]), output_type="pt").images
    with torch.no_grad():
        ours = mmdlib.sample_seeded(unet, [3, 4], (3, 8, 8), steps, ac, sampler, **options)
    torch.testing.assert_close(images, mmdlib.to_unit(ours), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="call it with num_inference_steps=5"):
        pipe(num_inference_steps=4)
    with pytest.raises(mmdlib.MMDLibError, match="4 timesteps for a budget of 5"):
        save_pipeline(unet, tmp_path / "q", 5, ac, sampler=sampler, timesteps=steps[:4])

