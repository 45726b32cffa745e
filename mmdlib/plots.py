"""Figures: sample grids."""
from __future__ import annotations

from pathlib import Path

import torch


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Images [N, C, H, W] in [0, 1] as one PNG grid, small images scaled up (nearest) to about 64 pixels."""
    from torchvision.utils import save_image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = max(1, 64 // images.shape[-1])
    save_image(torch.nn.functional.interpolate(images.float().cpu(), scale_factor=scale, mode="nearest"), path,
               nrow=nrow, padding=1)
    return path
