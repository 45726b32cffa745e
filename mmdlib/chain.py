"""What every sampler's chain shares: its random draws, its inputs' checks, the times and alpha_bar it steps
through, the network's eps at a time, and the loop that recomputes its first steps in backward.

Noise comes from ``generator``: ``None`` (torch's global RNG), one ``torch.Generator`` for the batch, or a
list with one generator per sample, which makes every sample independent of how the batch is split.

Timesteps are integers (the training schedule's, looked up in alpha_bar's table with Python floats, as
DDIM and diffusers do) or a floating-point tensor (real-valued, possibly learnt: alpha_bar between the
integers by ``schedules.alpha_bar``, every coefficient a tensor, so the chain is differentiable in time).
The scalar helpers below take either kind and leave the integer path's arithmetic as it always was.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from .errors import MMDLibError
from .schedules import alpha_bar, check_timesteps, is_real_valued

Generator = Union[None, torch.Generator, Sequence[torch.Generator]]
Scalar = Union[float, torch.Tensor]  # a Python float on the integer path, a 0-dim tensor on the real-valued one


def generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One seeded generator per sample, so results do not depend on batch size."""
    return [torch.Generator(device).manual_seed(int(s)) for s in seeds]


def randn(shape: Sequence[int], generator: Generator = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` drawn from ``generator`` (see module docstring)."""
    shape = tuple(shape)
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    if isinstance(generator, torch.Generator):
        return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    if len(generator) != shape[0]:
        raise MMDLibError(f"got {len(generator)} generators for a batch of {shape[0]}; pass one per sample.")
    return torch.stack(
        [torch.randn(shape[1:], generator=g, device=g.device, dtype=dtype) for g in generator]
    ).to(device)


def noise(seeds: Sequence[int], shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """x_T for the given per-sample seeds: sample i depends on seeds[i] only. ``shape`` is [C, H, W]."""
    return randn((len(seeds), *shape), generators(seeds), device=device, dtype=dtype)


def predict_eps(model: Callable, x: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
    """eps_theta(x_t, t) from a diffusers UNet2DModel or any (x, t) -> eps callable; a real-valued t (a 0-dim
    tensor) reaches the network as it is, with its gradient."""
    if torch.is_tensor(t):
        tt = t.to(x.device).expand(x.shape[0])
    else:
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    out = model(x, tt)
    out = getattr(out, "sample", out)
    if isinstance(out, (tuple, list)):
        out = out[0]
    # Models with a learned variance output 2C channels; the first C are eps.
    return out[:, : x.shape[1]]


def sqrt(v: Scalar) -> Scalar:
    return torch.sqrt(v) if torch.is_tensor(v) else math.sqrt(v)


def expm1(v: Scalar) -> Scalar:
    return torch.expm1(v) if torch.is_tensor(v) else math.expm1(v)


def log(v: Scalar) -> Scalar:
    return torch.log(v) if torch.is_tensor(v) else math.log(v)


def nonneg(v: Scalar) -> Scalar:
    """max(v, 0)."""
    return v.clamp_min(0.0) if torch.is_tensor(v) else max(v, 0.0)


def check_noise(noise_: torch.Tensor) -> None:
    """x_T must be a tensor with a batch dimension."""
    if not torch.is_tensor(noise_) or noise_.dim() < 2:
        raise MMDLibError(f"noise must be a tensor [N, ...] with a batch dimension, got {type(noise_).__name__} "
                          f"of shape {tuple(getattr(noise_, 'shape', ()))}.")


def times(timesteps, alphas_cumprod: torch.Tensor) -> tuple[list, list]:
    """The chain's times, descending from x_T's (ints, or 0-dim tensors for real-valued timesteps), and alpha_bar
    at each followed by 1.0, the end point x_0 (DDIM's set_alpha_to_one), after checking them."""
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
    if ac.dim() != 1 or not ((ac > 0) & (ac <= 1)).all():
        raise MMDLibError("alphas_cumprod must be a 1-D tensor with values in (0, 1].")
    steps = check_timesteps(timesteps, len(ac))
    if is_real_valued(steps):
        t = steps.flip(0)
        return list(t), list(alpha_bar(t, ac)) + [1.0]
    return steps[::-1], [float(ac[t]) for t in reversed(steps)] + [1.0]


def checkpointed(checkpoint: bool | int, n: int) -> int:
    """How many steps (the first ones, from x_T) to recompute in backward: True all, False none, int k."""
    if isinstance(checkpoint, bool):
        return n if checkpoint else 0
    if not isinstance(checkpoint, int) or checkpoint < 0:
        raise MMDLibError(f"checkpoint must be True, False or a number of steps >= 0, got {checkpoint!r}.")
    return min(checkpoint, n)


def run(step: Callable, state: tuple, n: int, checkpoint: bool | int,
        draw: Callable[[int, torch.Tensor], tuple] = lambda i, x: ()) -> tuple:
    """``state = step(i, *state, *draw(i, state[0]))`` for i = 0..n-1 (state[0] is x, the rest what a multistep
    solver carries; ``draw`` gives what step i takes from outside, its fresh noise, drawn in order outside the
    recomputation), recomputing the first k steps (``checkpointed``) in backward."""
    k = checkpointed(checkpoint, n)
    for i in range(n):
        extra = draw(i, state[0])
        if i < k and torch.is_grad_enabled():
            state = _checkpoint(step, i, *state, *extra, use_reentrant=False)
        else:
            state = step(i, *state, *extra)
    return state
