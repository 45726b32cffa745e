"""Samples for the metrics and the figures: ``generate`` draws n samples in memory, each from its own draw of
a random stream ("eval" for metrics, "grid" for figures), and ``grid_samples`` the fixed-noise grids that
compare models side by side.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .config import EVAL_PRECISIONS
from .cores import rebalance, sharing_cores
from .errors import MMDLibError
from .models import LoadedModel
from .sampling import get_sampler, resolve_spacing, sample_seeded, to_unit
from .schedules import as_timesteps, timestep_subset
from .speed import Speed
from .streams import stream_seeds


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round [0, 1] images to 8-bit levels, as saving them to PNG would."""
    return torch.round(images.clamp(0, 1) * 255) / 255


def autocast(device, precision: str):
    """The network under bf16 autocast for ``precision="bf16"``; "fp32" (the default) is exact."""
    if precision not in EVAL_PRECISIONS:
        raise MMDLibError(f"unknown evaluation precision {precision!r}; known: {', '.join(EVAL_PRECISIONS)}.")
    return Speed(bf16=precision == "bf16").autocast(torch.device(device or "cpu"))


@torch.no_grad()
def generate(model: Callable, n: int, timesteps: Sequence[int], alphas_cumprod: torch.Tensor, shape: Sequence[int],
             sampler: str = "ddim", seed: int = 0, batch_size: int = 500, device=None, progress: bool = False,
             precision: str = "fp32", purpose: str = "eval", **kw) -> torch.Tensor:
    """``n`` samples as float [n, C, H, W] in [0, 1] (8-bit levels); sample i comes from draw i of the random
    stream (``purpose``, ``seed``): "eval" for metrics, "grid" for figures. ``precision="bf16"`` runs the
    network under bf16 autocast (the chain's state stays fp32)."""
    seeds = stream_seeds(purpose, seed, range(n))
    out = []
    with sharing_cores():  # its share of the CPU's cores, beside other mmdlib runs (mmdlib.cores)
        for start in tqdm(range(0, n, batch_size), desc=f"sampling {len(timesteps)} steps", disable=not progress):
            rebalance()
            with autocast(device, precision):
                x = sample_seeded(model, seeds[start:start + batch_size], shape, timesteps, alphas_cumprod, sampler,
                                  device=device, **kw)
            out.append(quantize(to_unit(x.float())).cpu())
    return torch.cat(out)


def grid_samples(model: LoadedModel, budget: int, n: int = 64, seed: int = 0, timestep_spacing: str = "auto",
                 sampler: str = "ddim", eta: float = 0.0, device=None, timesteps=None) -> torch.Tensor:
    """``n`` samples [n, C, H, W] in [0, 1] of a ``LoadedModel`` from the fixed noise of the "grid" stream,
    sampled where the model is (or on ``device``): the same noise at every call, so two models (or one model
    during finetuning) can be compared side by side; never a training or an evaluation latent. ``timesteps``:
    explicit (e.g. learnt) ones instead of the spacing's."""
    device = device or next(model.unet.parameters()).device
    steps = timestep_subset(budget, model.T, resolve_spacing(sampler, timestep_spacing)) if timesteps is None \
        else as_timesteps(timesteps)
    return generate(model.unet.to(device), n, steps, model.alphas_cumprod, model.sample_shape, sampler=sampler,
                    seed=seed, device=device, purpose="grid", **get_sampler(sampler).options(eta))
