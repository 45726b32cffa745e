"""The paper's checkpoints as diffusers folders (mmdlib.convert), proven against independent references:
for ``ddpm``, a functional DDPM UNet written from the paper (tests/ddpm_reference.py); for
``improved-diffusion``, openai's own UNet and respaced DDIM loop (the guided-diffusion-sdk package, which
loads improved-diffusion checkpoints), at reduced width with random weights."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import ddpm_reference as ref
from helpers import rel
import mmdlib
from mmdlib import convert as cv
from mmdlib.cache import file_hash
from mmdlib.errors import MMDLibError
from mmdlib.models import load_model
from mmdlib.sampling import ddim_sample, generators, randn
from mmdlib.schedules import cosine_betas, timestep_subset

ARCH = ref.SMALL


@pytest.fixture(scope="module")
def ddpm_state():
    return ref.random_state(ch=32, **ARCH)


def test_ddpm_eps_equals_the_reference_forward_pass(ddpm_state):
    unet, ac = cv.convert_state(ddpm_state, "ddpm", size=16)
    assert tuple(unet.config.block_out_channels) == (32, 64, 64) and unet.config.layers_per_block == 2
    assert tuple(unet.config.down_block_types) == ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")
    assert len(ac) == 1000 and unet.config.dropout == 0.1
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for t in (0, 1, 250, 999):
            tt = torch.full((3,), t)
            assert rel(unet(x, tt).sample, ref.forward(ddpm_state, x, tt, **ARCH)) <= 1e-5, t


def test_ddpm_files_bare_module_prefixed_and_the_ddim_codes_list_with_ema(ddpm_state, tmp_path, capsys):
    ema = ref.random_state(ch=32, seed=7, **ARCH)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 700])
    want = {"bare": ddpm_state, "module": ddpm_state, "list": ema}
    torch.save(ddpm_state, tmp_path / "bare.ckpt")
    torch.save({f"module.{k}": v for k, v in ddpm_state.items()}, tmp_path / "module.ckpt")
    optim = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 2e-4, "params": [0]}]}
    torch.save([{f"module.{k}": v for k, v in ddpm_state.items()}, optim, 10, 5000,
                {f"module.{k}": v for k, v in ema.items()}], tmp_path / "list.ckpt")
    for name, state in want.items():
        folder = cv.convert(tmp_path / f"{name}.ckpt", tmp_path / name, size=16)
        m = load_model(str(folder))
        with torch.no_grad():
            assert rel(m.unet(x, t).sample, ref.forward(state, x, t, **ARCH)) <= 1e-5, name
        meta = json.loads((folder / "mmdlib.json").read_text())["converted_from"]
        assert meta["format"] == "ddpm" and meta["sha256"] == file_hash(tmp_path / f"{name}.ckpt")
    out = capsys.readouterr().out
    assert "took the EMA weights (the last of its list of states" in out  # printed, as the issue asks
    assert "a bare state dict: EMA or not is not recorded" in out


def test_bad_checkpoint_files_get_one_clear_message(ddpm_state, tmp_path):
    good = tmp_path / "good.ckpt"
    torch.save(ddpm_state, good)
    (tmp_path / "truncated.ckpt").write_bytes(good.read_bytes()[:5000])
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "foreign.ckpt")
    for name, words in (("truncated", "not a checkpoint this tool can read"), ("text", "not a checkpoint this tool"),
                        ("foreign", "without weights"), ("missing", "no checkpoint file")):
        with pytest.raises(MMDLibError, match=words):
            cv.read_checkpoint(tmp_path / f"{name}.ckpt")
    with pytest.raises(MMDLibError, match="not in the improved-diffusion format .* look like 'ddpm'"):
        cv.convert_state(ddpm_state, "improved-diffusion")
    broken = {k: v for k, v in ddpm_state.items() if "mid.attn_1" not in k}
    with pytest.raises(MMDLibError, match="incomplete|do not fill"):
        cv.convert_state(broken, "ddpm")
    with pytest.raises(MMDLibError, match="1 tensors this converter does not place .*down.0.extra.weight"):
        cv.convert_state(dict(ddpm_state, **{"down.0.extra.weight": torch.zeros(3)}), "ddpm")
    wrong = dict(ddpm_state, **{"conv_out.weight": torch.zeros(3, 16, 3, 3)})
    with pytest.raises(MMDLibError, match="unexpected shape"):
        cv.convert_state(wrong, "ddpm")


def test_the_convert_command_writes_a_folder_diffusers_and_mmdlib_load(ddpm_state, tmp_path):
    torch.save([ddpm_state, {}, 1, 2, ddpm_state], tmp_path / "ckpt.pth")
    out = tmp_path / "cifar_like"
    r = subprocess.run([sys.executable, "-m", "mmdlib", "convert", str(tmp_path / "ckpt.pth"), "--out", str(out),
                        "--size", "16"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ddpm format; took the EMA weights" in r.stdout
    again = subprocess.run([sys.executable, "-m", "mmdlib", "convert", str(tmp_path / "ckpt.pth"), "--out",
                            str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and "not empty; pass --overwrite" in again.stderr
    bad = subprocess.run([sys.executable, "-m", "mmdlib", "convert", str(tmp_path / "nothing.pt"), "--out",
                          str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and "no checkpoint file" in bad.stderr and not (tmp_path / "x").exists()
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(out)
    seeds = [3, 4]
    images = pipe(batch_size=2, generator=generators(seeds), num_inference_steps=5, output_type="np").images
    m = load_model(str(out))
    x = ddim_sample(m.unet, randn((2, 3, 16, 16), generators(seeds)), timestep_subset(5, m.T), m.alphas_cumprod)
    np.testing.assert_allclose(images, (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).detach().numpy(), atol=1e-5)


# improved-diffusion: openai's UNet with the ImageNet-64 hyper-parameters (channel_mult 1,2,3,4, 3 blocks per
# level, attention at 16 and 8, 4 heads, scale-shift norm, learned sigma, cosine schedule over 4000 steps,
# rescaled timesteps) at width 32 instead of 128
IMAGENET64 = dict(image_size=64, num_channels=32, num_res_blocks=3, num_heads=4, attention_resolutions="16,8",
                  learn_sigma=True, use_scale_shift_norm=True, dropout=0.0, diffusion_steps=4000,
                  noise_schedule="cosine", rescale_timesteps=True)


@pytest.fixture(scope="module")
def openai_model():
    script_util = pytest.importorskip("guided_diffusion.script_util")
    args = script_util.model_and_diffusion_defaults() | IMAGENET64
    torch.manual_seed(0)
    model, _ = script_util.create_model_and_diffusion(**args)
    with torch.no_grad():  # its output convolutions start at zero; random weights everywhere
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval(), args


def test_cosine_betas_equal_improved_diffusions():
    from guided_diffusion.gaussian_diffusion import get_named_beta_schedule

    # to an ulp: numpy's vectorised cos against its per-step math.cos
    np.testing.assert_allclose(cosine_betas(4000).numpy(), get_named_beta_schedule("cosine", 4000), rtol=1e-12, atol=0)


def test_improved_diffusion_eps_equals_openais_unet_with_rescaled_timesteps(openai_model):
    model, _ = openai_model
    unet, ac = cv.convert_state(model.state_dict(), "improved-diffusion")
    assert tuple(unet.config.block_out_channels) == (32, 64, 96, 128) and unet.config.attention_heads == 4
    assert tuple(unet.config.down_block_types) == ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")
    assert unet.config.out_channels == 3 and len(ac) == 4000 and unet.config.timestep_scale == 0.25
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for t in (0, 1, 799, 2400, 3999):
            tt = torch.full((2,), t)
            want = model(x, tt.float() * 1000 / 4000)[:, :3]  # what its _WrappedModel feeds: t * 1000 / T
            assert rel(unet(x, tt).sample, want) <= 1e-5, t
    # the head count matters: the same weights read with one head per layer give another network
    one = cv.convert_state(model.state_dict(), "improved-diffusion", heads=1)[0]
    with torch.no_grad():
        assert rel(one(x, torch.full((2,), 2400)).sample, unet(x, torch.full((2,), 2400)).sample) > 1e-3


def test_a_5_step_ddim_chain_equals_openais_respaced_loop_in_mmdlib_and_the_exported_pipeline(openai_model, tmp_path):
    from diffusers import DiffusionPipeline
    from guided_diffusion import script_util

    model, args = openai_model
    _, diffusion = script_util.create_model_and_diffusion(**(args | {"timestep_respacing": "ddim5"}))
    torch.save(model.state_dict(), tmp_path / "imagenet64_like.pt")
    folder = cv.convert(tmp_path / "imagenet64_like.pt", tmp_path / "converted")  # format detected
    m = load_model(str(folder))
    seeds = [11, 12]
    x_T = randn((2, 3, 64, 64), generators(seeds))
    with torch.no_grad():
        want = diffusion.ddim_sample_loop(model, (2, 3, 64, 64), noise=x_T.clone(), clip_denoised=False, eta=0.0)
        ours = ddim_sample(m.unet, x_T, timestep_subset(5, m.T), m.alphas_cumprod)
    assert timestep_subset(5, m.T) == [0, 800, 1600, 2400, 3200]
    assert rel(ours, want) <= 1e-4
    pipe = DiffusionPipeline.from_pretrained(folder)  # imports mmdlib.unets for the UNet class
    assert type(pipe.unet).__name__ == "ImprovedUNet2DModel"
    images = pipe(batch_size=2, generator=generators(seeds), num_inference_steps=5, output_type="np").images
    np.testing.assert_allclose(images, (want / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy(), atol=1e-4)



def test_a_checkpoint_file_passed_as_the_model_is_converted_once(ddpm_state, tmp_path):
    torch.save(ddpm_state, tmp_path / "m.ckpt")
    converted = mmdlib.cache.cache_dir() / "converted"
    before = set(converted.glob("*/config.json")) if converted.exists() else set()
    a, b = load_model(str(tmp_path / "m.ckpt")), load_model(str(tmp_path / "m.ckpt"))
    assert len(set(converted.glob("*/config.json")) - before) == 1 and a.identity() == b.identity()
    assert json.loads((mmdlib.cache.cache_dir() / "converted").joinpath(
        next(iter(set(converted.glob("*/config.json")) - before)).parent.name, "config.json").read_text())["sha256"]


