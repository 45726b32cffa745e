"""Figures: sample grids, image rows, metric-vs-steps plots."""
from __future__ import annotations

from pathlib import Path

import numpy as np
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


def _grid(images: torch.Tensor, nrow: int = 8) -> np.ndarray:
    from torchvision.utils import make_grid

    g = make_grid(images.float().cpu().clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0)
    return g.permute(1, 2, 0).numpy()


def _imshow(ax, hwc: np.ndarray) -> None:
    """An [H, W, C] image in [0, 1]: one channel in grayscale, three as RGB, pixels unsmoothed."""
    gray = hwc.shape[-1] == 1
    ax.imshow(hwc[..., 0] if gray else hwc, cmap="gray" if gray else None, interpolation="nearest", vmin=0, vmax=1)


def show_grids(panels: dict[str, torch.Tensor], nrow: int = 8, size: float = 3.2):
    """One figure with a titled grid per entry (images [N, C, H, W] in [0, 1]), side by side."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False)
    for ax, (title, images) in zip(axes[0], panels.items()):
        _imshow(ax, _grid(images, nrow)[..., : images.shape[1]])
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    return fig


def show_rows(rows: dict[str, torch.Tensor], size: float = 0.9):
    """One row of images per entry (e.g. an interpolation per model), labelled on the left."""
    import matplotlib.pyplot as plt

    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(size * n + 1.5, size * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                _imshow(ax, images[c].float().cpu().clamp(0, 1).permute(1, 2, 0).numpy())
        axes[r][0].text(-0.15, 0.5, label, transform=axes[r][0].transAxes, ha="right", va="center")
    fig.subplots_adjust(left=0.2, wspace=0.05, hspace=0.1)
    return fig


def metric_vs_steps(results: dict[str, dict], space: str, metric: str = "fid", ax=None):
    """``metric`` against the number of steps, one line per model (``results[name] = scores(...)``)."""
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    rows = [{"model": name, "steps": b, metric: r[b][space][metric]} for name, r in results.items() for b in r]
    ax = ax or plt.subplots(figsize=(5, 3.5))[1]
    sns.lineplot(pd.DataFrame(rows), x="steps", y=metric, hue="model", marker="o", ax=ax)
    ax.set(xticks=sorted({r["steps"] for r in rows}), ylabel=f"{metric.upper()} ({space})", yscale="log")
    return ax


def schedules_plot(schedules: dict[str, list], T: int, ax=None):
    """Each schedule's timesteps (one row of points per entry, labelled) on the axis 0..T-1: where each chain
    steps, the fixed spacings beside the learnt ones."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 0.45 * len(schedules) + 1))[1]
    for row, (name, steps) in enumerate(schedules.items()):
        ax.plot(steps, [row] * len(steps), "o-", ms=5)
    ax.set(yticks=range(len(schedules)), yticklabels=list(schedules), xlim=(-T * 0.02, T * 1.02), xlabel="timestep t")
    ax.invert_yaxis()
    return ax
