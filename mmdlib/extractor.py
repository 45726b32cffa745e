"""The feature extractor's contract (``FeatureExtractor``): float images [N, C, H, W] in [0, 1] in, [N, D]
features out, input checks, frozen eval-mode weights, an identity for cache keys. The spaces themselves are in
``features`` (and ``dinov2``)."""
from __future__ import annotations

import torch
from torch import nn

from .cache import weights_hash
from .errors import MMDLibError

RANGE_TOLERANCE = 1e-3


class FeatureExtractor(nn.Module):
    """Base class: input checks, grayscale to RGB where the network needs it, frozen eval-mode weights."""

    dim: int
    channels: int = 3  # what the network consumes
    size: int | None = None  # the only input size accepted, if the network has one

    def freeze(self) -> "FeatureExtractor":
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> "FeatureExtractor":
        return super().train(False)  # always eval: batch statistics must not leak into the features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(self.checked(images))

    def checked(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` after the input checks, with 1 channel repeated to RGB where the network needs it."""
        if not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point():
            raise MMDLibError(f"{self.name}: images must be a float tensor [N, C, H, W] in [0, 1], got "
                              f"{getattr(images, 'dtype', type(images).__name__)} of shape "
                              f"{tuple(getattr(images, 'shape', ()))}.")
        c = images.shape[1]
        if c not in (1, 3) or (c == 3 and self.channels == 1):
            raise MMDLibError(f"{self.name}: expects {self.channels}-channel images (1-channel ones are repeated "
                              f"to RGB), got {c} channels.")
        if self.size is not None and images.shape[-2:] != (self.size, self.size):
            raise MMDLibError(f"{self.name}: expects {self.size}x{self.size} images, got "
                              f"{images.shape[-2]}x{images.shape[-1]}.")
        lo, hi = torch.stack(torch.aminmax(images.detach())).tolist()  # one device sync, not two
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            raise MMDLibError(f"{self.name}: images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}]; map model "
                              f"outputs x in [-1, 1] with mmdlib.to_unit(x).")
        return images.expand(-1, 3, -1, -1) if c == 1 and self.channels == 3 else images

    def features(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pil_images(self, images: torch.Tensor) -> list:
        """``images`` (checked, in [0, 1]) as 8-bit RGB PIL images: the input of the metric paths that run their
        reference code's own PIL preprocessing."""
        from PIL import Image

        u8 = torch.round(self.checked(images).detach().clamp(0, 1) * 255).to(torch.uint8).cpu()
        return [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in u8]

    def metric_features(self, images: torch.Tensor) -> torch.Tensor:
        """Features for the metrics (FID, KID, ...), of 8-bit images given as floats in [0, 1]; no gradient."""
        with torch.no_grad():
            return self(images)

    def config(self) -> dict:
        """What, besides the weights, makes this extractor's features (for cache keys)."""
        return {}

    def identity(self) -> dict:
        """Name, config and a hash of the weights: what every cached result computed in this space is keyed by."""
        if getattr(self, "_weights_hash", None) is None:  # frozen weights: hash once
            self._weights_hash = weights_hash(self)
        return {"name": self.name, "class": type(self).__name__, "config": self.config(), "weights": self._weights_hash}
