"""Noise schedules and timestep subsets (paper Sec. II, eqs. 1-2; DDIM Sec. 4.2)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .errors import MMDLibError


def linear_betas(T: int = 1000, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """DDPM's linear beta_t of eq. (2), float64 [T]."""
    if int(T) != T or T < 1:
        raise MMDLibError(f"T must be a positive integer, got {T!r}.")
    if not 0 < start <= end < 1:
        raise MMDLibError(f"need 0 < start <= end < 1 for the betas, got start={start!r}, end={end!r}.")
    return torch.linspace(start, end, int(T), dtype=torch.float64)


def cosine_betas(T: int = 4000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17), float64 [T]: alpha_bar(t) =
    cos((t/T + s) / (1 + s) * pi/2)^2 and beta_t = 1 - alpha_bar((t+1)/T) / alpha_bar(t/T), clipped at
    ``max_beta`` (diffusers' "squaredcos_cap_v2")."""
    if int(T) != T or T < 1:
        raise MMDLibError(f"T must be a positive integer, got {T!r}.")
    f = np.cos((np.arange(int(T) + 1, dtype=np.float64) / T + s) / (1 + s) * np.pi / 2) ** 2
    return torch.from_numpy(np.minimum(1 - f[1:] / f[:-1], max_beta))


SCHEDULES = {"linear": linear_betas, "cosine": cosine_betas}  # name -> betas(T)


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s<=t} (1 - beta_s): the marginal q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, 1 - alpha_bar_t)."""
    return torch.cumprod(1.0 - betas.double(), dim=0)


def _linear(budget: int, T: int) -> list[int]:
    # DDIM "uniform" (range(0, T, T // budget)), cut to `budget` entries: when budget does not divide T
    # the DDIM code takes one step more (budget 15 -> 16 steps); this always equals diffusers' "leading".
    return list(range(0, T, T // budget))[:budget]


def _quadratic(budget: int, T: int) -> list[int]:
    # DDIM "quad": tau_i = floor(c i^2) with c chosen so tau reaches 0.8 T.
    return [int(s) for s in np.linspace(0, np.sqrt(0.8 * T), budget) ** 2]


def _trailing(budget: int, T: int) -> list[int]:
    # diffusers' "trailing" (Lin et al. 2024, Table 2): round(arange(T, 0, -T / budget)) - 1, which starts at
    # the last training timestep T - 1; the multistep solvers' usual spacing.
    return sorted(int(t) for t in np.arange(T, 0, -T / budget).round().astype(np.int64) - 1)


TIMESTEP_SPACINGS = {"linear": _linear, "quadratic": _quadratic, "trailing": _trailing}


def timestep_subset(budget: int, T: int = 1000, spacing: str = "linear") -> list[int]:
    """The |tau| = budget timesteps (diffusers' ``num_inference_steps``) a short sampler visits, ascending,
    spaced by ``spacing`` (a ``TIMESTEP_SPACINGS`` name; paper Sec. IV-G, Table 8)."""
    if spacing not in TIMESTEP_SPACINGS:
        raise MMDLibError(f"unknown timestep spacing {spacing!r}; known: {', '.join(TIMESTEP_SPACINGS)}.")
    if isinstance(budget, bool) or int(budget) != budget or not 1 <= budget <= T:
        raise MMDLibError(f"budget must be an integer in 1..T={T}, got {budget!r}.")
    steps = TIMESTEP_SPACINGS[spacing](int(budget), int(T))
    if len(set(steps)) != len(steps) or len(steps) != budget:
        raise MMDLibError(
            f"the {spacing} spacing of {budget} steps out of T={T} repeats timesteps ({steps[:6]}...); "
            f"use a smaller budget or spacing='linear'."
        )
    return steps


def is_real_valued(timesteps) -> bool:
    """Whether ``timesteps`` is a floating-point tensor (real-valued time, possibly learnt), not integers."""
    return torch.is_tensor(timesteps) and timesteps.is_floating_point()


def check_timesteps(timesteps, T: int) -> list[int] | torch.Tensor:
    """Validate a subset, strictly ascending inside 0..T-1: integers (returned as a list of ints), or a 1-D
    floating-point tensor of real-valued timesteps (returned as it is, its gradient kept)."""
    real = is_real_valued(timesteps)
    if real and (timesteps.dim() != 1 or not torch.isfinite(timesteps).all()):
        raise MMDLibError(f"real-valued timesteps must be a 1-D tensor of finite numbers, got shape "
                          f"{tuple(timesteps.shape)}.")
    steps = timesteps.tolist() if real else [int(t) for t in (timesteps.tolist() if torch.is_tensor(timesteps)
                                                              else timesteps)]
    if not steps:
        raise MMDLibError("timesteps is empty; pass at least one timestep, e.g. timestep_subset(5).")
    if any(b <= a for a, b in zip(steps, steps[1:])):
        raise MMDLibError(f"timesteps must be strictly ascending, got {steps}.")
    if steps[0] < 0 or steps[-1] > T - 1:
        raise MMDLibError(f"timesteps must lie in 0..{T - 1} (T={T} from alphas_cumprod), got {steps}.")
    return timesteps if real else steps


def as_timesteps(steps: Sequence[float]) -> list[int] | torch.Tensor:
    """A list of timesteps as a sampler takes them: the integers as they are, real values as a float64 tensor."""
    return torch.tensor(steps, dtype=torch.float64) if any(float(t) != int(t) for t in steps) else list(steps)


def alpha_bar(t: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """alpha_bar at real-valued timesteps ``t`` in [0, T-1] (float64, t's shape): log alpha_bar interpolated
    linearly between the integers around t, so it is the table at every integer (up to rounding) and
    differentiable in t in between (the DDPM schedule's log alpha_bar is nearly linear in t)."""
    la = torch.log(torch.as_tensor(alphas_cumprod, dtype=torch.float64)).to(t.device)
    if len(la) == 1:
        return torch.exp(la[0]).expand(t.shape)
    lo = t.detach().floor().clamp(0, len(la) - 2).long()
    return torch.exp(la[lo] + (t.double() - lo) * (la[lo + 1] - la[lo]))
