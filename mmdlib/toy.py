"""A 2-D toy diffusion for the theory chapter: the whole method on a CPU in seconds.

Data: a ring of tight Gaussians. A small MLP learns eps_theta with DDPM's loss (eq. 5); sampled with 5
DDIM steps it smears mass between the modes; MMD-DDM (eq. 7 on the raw coordinates, through the
5-step chain) pulls the samples back onto them.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .cache import cached, weights_hash
from .mmd import mmd2_unbiased
from .pretrain import ddpm_loss
from .sampling import ddim_sample
from .schedules import alphas_cumprod, linear_betas, timestep_subset
from .streams import stream_seed

# draws of the "toy" stream, one per purpose: the data, the DDPM training, the MMD finetuning, the samples shown
DATA, TRAIN, FINETUNE, SAMPLES = range(4)


def _generator(seed: int, purpose: int) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed("toy", seed, purpose))


def toy_noise(n: int, seed: int = 0) -> torch.Tensor:
    """x_T [n, 2] for the samples the chapter shows (never a training draw)."""
    return torch.randn(n, 2, generator=_generator(seed, SAMPLES))


def toy_data(n: int, seed: int = 0, modes: int = 8, radius: float = 1.0, std: float = 0.05) -> torch.Tensor:
    """``n`` points [n, 2] from ``modes`` Gaussians (spread ``std``) evenly spaced on a circle."""
    g = _generator(seed, DATA)
    angle = torch.randint(modes, (n,), generator=g) * (2 * math.pi / modes)
    centres = radius * torch.stack([angle.cos(), angle.sin()], 1)
    return centres + std * torch.randn(n, 2, generator=g)


class ToyDenoiser(nn.Module):
    """eps_theta(x_t, t) for 2-D points: an MLP on the point and a sinusoidal embedding of t."""

    def __init__(self, hidden: int = 256, emb: int = 32):
        super().__init__()
        self.register_buffer("freqs", torch.exp(-math.log(1000.0) * torch.arange(emb // 2) / (emb // 2)))
        self.net = nn.Sequential(nn.Linear(2 + emb, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = t.float()[:, None] * self.freqs
        return self.net(torch.cat([x, a.sin(), a.cos()], 1))


def train_toy(data: torch.Tensor, iterations: int = 4000, batch: int = 512, lr: float = 1e-3, T: int = 1000,
              seed: int = 0) -> tuple[ToyDenoiser, torch.Tensor, list[float]]:
    """DDPM training (eq. 5) on ``data``; returns the model, its alphas_cumprod and the losses."""
    torch.manual_seed(stream_seed("toy", seed, TRAIN))  # the initial weights
    g = _generator(seed, TRAIN)
    model, ac = ToyDenoiser(), alphas_cumprod(linear_betas(T)).float()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iterations)
    losses = []
    for _ in range(iterations):
        x0 = data[torch.randint(len(data), (batch,), generator=g)]
        t = torch.randint(T, (batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        loss = ddpm_loss(model, x0, t, eps, ac)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model.eval(), alphas_cumprod(linear_betas(T)), losses


def trained_toy(data: torch.Tensor, iterations: int = 4000, batch: int = 512, lr: float = 1e-3, T: int = 1000,
                seed: int = 0) -> tuple[ToyDenoiser, torch.Tensor, list[float]]:
    """``train_toy``, trained once per setting and data and then loaded from $MMDLIB_CACHE (the theory
    chapter would otherwise retrain it on every build of the book)."""
    key = {"kind": "toy-ddpm", "data": weights_hash({"data": data}), "iterations": iterations, "batch": batch,
           "lr": lr, "T": T, "seed": seed}

    def build(tmp):
        model, _, losses = train_toy(data, iterations, batch, lr, T, seed)
        torch.save({"model": model.state_dict(), "losses": losses}, tmp / "toy.pt")

    state = torch.load(cached("toy", key, build) / "toy.pt", weights_only=True)
    model = ToyDenoiser()
    model.load_state_dict(state["model"])
    return model.eval(), alphas_cumprod(linear_betas(T)), state["losses"]


def finetune_toy(model: nn.Module, data: torch.Tensor, ac: torch.Tensor, timesteps: Sequence[int],
                 iterations: int = 300, batch: int = 256, lr: float = 1e-4, kernel: str = "rbf", sigma: float = 0.1,
                 seed: int = 0) -> list[float]:
    """MMD-DDM on the toy (in place): sample through the short DDIM chain with gradients, minimise the
    unbiased MMD^2 (eq. 7) against a real batch, step Adam. Returns the losses. The features are the
    coordinates themselves; ``sigma`` is the RBF bandwidth (about a mode's size)."""
    kernel_kw = {"sigma": sigma} if kernel == "rbf" else {}
    g = _generator(seed, FINETUNE)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(iterations):
        x = ddim_sample(model, torch.randn(batch, 2, generator=g), timesteps, ac)
        loss = mmd2_unbiased(x, data[torch.randint(len(data), (batch,), generator=g)], kernel, **kernel_kw)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def toy_samples(model: nn.Module, ac: torch.Tensor, budget: int, n: int = 2000, seed: int = 0) -> torch.Tensor:
    """``n`` points [n, 2] sampled with ``budget`` DDIM steps from the chapter's fixed noise (``toy_noise``):
    the same noise for every model, so before and after can be compared point by point."""
    return ddim_sample(model, toy_noise(n, seed), timestep_subset(budget, len(ac)), ac)


def ring_distance(x: torch.Tensor, radius: float = 1.0) -> float:
    """Mean distance of points [n, 2] from the circle the modes sit on: smeared samples lie off it."""
    return (x.norm(dim=1) - radius).abs().mean().item()


def ring_verdict(samples: float, data: float) -> str:
    """How tightly samples sit on the ring, in words, from their ``ring_distance`` and the data's: within 1.5
    times the data's own is as tightly as the data."""
    if samples < 1.5 * data:
        return "about as tightly as the data"
    return "closer than before, but not as tightly as the data"

