"""load_model: a diffusers UNet and its schedule from a short name, a hub id, a folder or a checkpoint file."""
import json
import re

import pytest
import torch

import mmdlib
from mmdlib.export import save_pipeline
from mmdlib.models import load_model
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
    from mmdlib.paper_models import PAPER_MODELS

    with pytest.raises(mmdlib.MMDLibError, match=f"model '{name}' is not downloaded yet and this process is offline"
                       f".*{re.escape(PAPER_MODELS[name].page or PAPER_MODELS[name].url)}.*downloads/"):
        load_model(name)


def test_unknown_model_lists_known():
    with pytest.raises(mmdlib.MMDLibError, match="known name \\(digits, cifar10, church, celeba64, imagenet64\\)"):
        load_model("cifar100")


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


