"""The DINOv2 space (FD_DINOv2) against dgm-eval's preprocessing and torch.hub's dinov2_vitl14 forward, both
written out here independently (PIL's bicubic resize, torchvision's to_tensor and normalize, the ViT's blocks
by hand, DINOv2's own position-embedding resize), on random weights in the original checkpoint's layout."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

import mmdlib
from mmdlib.features import get_feature_extractor

from helpers import DINOV2_SHAPE

D, DEPTH, HEADS, GRID = DINOV2_SHAPE


def dgm_eval_features(sd: dict, u8: np.ndarray) -> torch.Tensor:
    """dgm-eval's DINOv2Encoder on uint8 [N, H, W, 3] images: its transform, then dinov2_vitl14(x)."""
    x = torch.stack([TF.normalize(TF.to_tensor(Image.fromarray(im).resize((224, 224), Image.BICUBIC)),
                                  [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) for im in u8])
    n = len(x)
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14).flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(n, -1, -1), x], dim=1)
    pos = sd["pos_embed"][:, 1:].reshape(1, GRID, GRID, D).permute(0, 3, 1, 2)  # interpolate_pos_encoding:
    pos = F.interpolate(pos, scale_factor=((16 + 0.1) / GRID, (16 + 0.1) / GRID), mode="bicubic", antialias=False)
    x = x + torch.cat([sd["pos_embed"][:, :1], pos.permute(0, 2, 3, 1).reshape(1, 256, D)], dim=1)
    for i in range(DEPTH):
        p = {k[len(f"blocks.{i}."):]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        h = F.layer_norm(x, (D,), p["norm1.weight"], p["norm1.bias"], eps=1e-6)
        q, k, v = F.linear(h, p["attn.qkv.weight"], p["attn.qkv.bias"]).reshape(n, -1, 3, HEADS, D // HEADS) \
            .permute(2, 0, 3, 1, 4)
        a = torch.softmax(q * (D // HEADS) ** -0.5 @ k.transpose(-2, -1), dim=-1) @ v
        x = x + F.linear(a.transpose(1, 2).reshape(n, -1, D), p["attn.proj.weight"], p["attn.proj.bias"]) * p["ls1.gamma"]
        h = F.layer_norm(x, (D,), p["norm2.weight"], p["norm2.bias"], eps=1e-6)
        h = F.linear(F.gelu(F.linear(h, p["mlp.fc1.weight"], p["mlp.fc1.bias"])), p["mlp.fc2.weight"], p["mlp.fc2.bias"])
        x = x + h * p["ls2.gamma"]
    return F.layer_norm(x, (D,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)[:, 0]  # x_norm_clstoken


@pytest.fixture(scope="module")
def extractor(dinov2_file):
    return get_feature_extractor("dinov2", weights_path=dinov2_file)


def test_dinov2_metric_features_equal_dgm_evals_on_8bit_images(extractor, dinov2_file):
    g = torch.Generator().manual_seed(1)
    u8 = (torch.rand(2, 32, 32, 3, generator=g) * 255).round().to(torch.uint8).numpy()
    theirs = dgm_eval_features(torch.load(dinov2_file, weights_only=True), u8)
    ours = extractor.metric_features(torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255)
    assert ours.shape == (2, 1024) == theirs.shape and extractor.dim == 1024 and "dinov2" in mmdlib.FEATURES
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=2e-5)  # measured 1.9e-6 of features up to 3.4
    # timm's own resize of the position embeddings (size 16, antialiased) differs (it moves these features by 0.26)
    timm_pos = F.interpolate(torch.load(dinov2_file, weights_only=True)["pos_embed"][:, 1:].reshape(1, 37, 37, -1)
                             .permute(0, 3, 1, 2), size=16, mode="bicubic", antialias=True)
    assert not torch.allclose(timm_pos.permute(0, 2, 3, 1).reshape(1, 256, -1), extractor.net.pos_embed[:, 1:], atol=1e-3)


def test_dinov2_loss_path_is_differentiable_and_close_to_the_metric_path(extractor):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x = (x * 255).round() / 255
    x.requires_grad_(True)
    f = extractor(x)
    f.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    m = extractor.metric_features(x.detach())
    assert torch.nn.functional.cosine_similarity(f.detach(), m).item() > 0.95  # PIL rounds to 8 bits after resizing


def test_dinov2_offline_says_what_to_fetch(monkeypatch):
    import huggingface_hub

    def offline(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(mmdlib.MMDLibError, match="dinov2: could not download model.safetensors of "
                                                 "timm/vit_large_patch14_dinov2.lvd142m.*--dinov2-weights FILE"):
        get_feature_extractor("dinov2")
    with pytest.raises(mmdlib.MMDLibError, match="is not a file"):
        get_feature_extractor("dinov2", weights_path="/nonexistent/dinov2.pth")


def test_a_hub_download_that_does_not_match_its_declared_hash_is_refused(tmp_path, monkeypatch, dinov2_file):
    import huggingface_hub

    blob = tmp_path / ("0" * 64)  # the hub names a large file's blob by its SHA-256; this one lies
    blob.write_bytes(dinov2_file.read_bytes())
    (tmp_path / "model.safetensors").symlink_to(blob)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: str(tmp_path / "model.safetensors"))
    with pytest.raises(mmdlib.MMDLibError, match="does not match the SHA-256 the hub declares"):
        get_feature_extractor("dinov2")
