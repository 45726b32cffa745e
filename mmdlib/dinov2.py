"""FD_DINOv2's feature space (Stein et al. 2023, "Exposing flaws of generative model evaluation metrics"):
DINOv2 ViT-L/14 as their reference code, layer6ai-labs/dgm-eval, runs it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .cache import file_hash
from .errors import MMDLibError, unreadable
from .extractor import FeatureExtractor
from .hub import offline_reason

DINOV2_HUB = ("timm/vit_large_patch14_dinov2.lvd142m", "model.safetensors")  # the dinov2_vitl14 weights


def dinov2_weights(weights_path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """DINOv2 ViT-L/14's state dict: ``weights_path`` (facebookresearch's ``dinov2_vitl14_pretrain.pth`` or
    timm's ``model.safetensors``), or timm's copy from the Hugging Face hub, downloaded once and checked
    against the SHA-256 the hub declares for it."""
    from safetensors.torch import load_file

    if weights_path is None:
        from huggingface_hub import hf_hub_download

        offline = offline_reason()  # asked once: no retries against a hub that cannot answer
        try:
            weights_path = Path(hf_hub_download(*DINOV2_HUB, **({"local_files_only": True} if offline else {})))
        except Exception as e:  # offline, or no network: say what to fetch
            raise MMDLibError(f"dinov2: could not download {DINOV2_HUB[1]} of {DINOV2_HUB[0]} from the Hugging "
                              f"Face hub ({offline or 'offline?'}). Download it (or dinov2_vitl14_pretrain.pth from "
                              f"dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/) on a connected machine and pass "
                              f"--dinov2-weights FILE (weights_path= in Python).") from e
        blob = weights_path.resolve()  # the hub's cache names a large file's blob by its SHA-256
        if len(blob.name) == 64 and file_hash(blob) != blob.name:
            raise MMDLibError(f"dinov2: {blob} does not match the SHA-256 the hub declares; delete it and retry.")
    path = Path(weights_path)
    if not path.is_file():
        raise MMDLibError(f"dinov2: weights_path {str(path)!r} is not a file.")
    try:
        sd = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                               weights_only=True)
    except Exception as e:
        raise unreadable(path, "DINOv2 weights", e) from None
    sd.pop("mask_token", None)  # used in DINOv2's training only
    return sd


class DinoV2Features(FeatureExtractor):
    """DINOv2 ViT-L/14's CLS token after the final norm, the space of FD_DINOv2 (Stein et al. 2023), exactly as
    their reference code (layer6ai-labs/dgm-eval) computes it: 8-bit images resized to 224x224 by PIL's bicubic
    (antialiased) resize, ImageNet's mean and std, torch.hub's ``dinov2_vitl14``, whose position embeddings
    are resized from 37x37 to 16x16 by bicubic interpolation with scale (16 + 0.1) / 37, no antialiasing.
    timm's ViT runs the network; it would resize them otherwise (size 16, antialiased), so they are
    resized here, once. The loss path resizes with differentiable antialiased bicubic interpolation."""

    name, dim, input_size = "dinov2", 1024, 224

    def __init__(self, weights_path: str | Path | None = None):
        super().__init__()
        import timm

        self._config = {"network": "dinov2_vitl14 (timm vit_large_patch14_dinov2)", "resize": "pil-bicubic-224",
                        "normalise": "imagenet", "token": "cls", "pos_embed": "bicubic, scale (16 + 0.1) / 37"}
        self.net = timm.create_model("vit_large_patch14_dinov2", pretrained=False, img_size=self.input_size,
                                     num_classes=0)
        sd = dinov2_weights(weights_path)
        sd["pos_embed"] = dinov2_pos_embed(sd["pos_embed"], self.input_size // 14)
        self.net.load_state_dict(sd)
        self.register_buffer("mean", torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1))
        self.freeze()

    def config(self) -> dict:
        return self._config

    def features(self, images: torch.Tensor) -> torch.Tensor:
        s = self.input_size
        x = F.interpolate(images, size=(s, s), mode="bicubic", antialias=True) if images.shape[-1] != s else images
        return self.net((x - self.mean) / self.std).float()

    @torch.no_grad()
    def metric_features(self, images: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        s = (self.input_size, self.input_size)
        x = torch.stack([torch.from_numpy(np.array(im.resize(s, Image.BICUBIC))) for im in self.pil_images(images)])
        x = x.permute(0, 3, 1, 2).float().div(255).to(self.mean.device)
        return self.net((x - self.mean) / self.std).float()


def dinov2_pos_embed(pos_embed: torch.Tensor, grid: int, offset: float = 0.1) -> torch.Tensor:
    """DINOv2's own resize of its position embeddings [1, 1 + M*M, D] to a grid x grid input
    (``interpolate_pos_encoding``: bicubic, scale factor (grid + offset) / M, no antialiasing)."""
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:].float()
    m, d = int(round(patches.shape[1] ** 0.5)), patches.shape[-1]
    if m == grid:
        return pos_embed
    scale = (grid + offset) / m
    x = F.interpolate(patches.reshape(1, m, m, d).permute(0, 3, 1, 2), scale_factor=(scale, scale), mode="bicubic",
                      antialias=False)
    return torch.cat([cls, x.permute(0, 2, 3, 1).reshape(1, grid * grid, d).to(pos_embed.dtype)], dim=1)
