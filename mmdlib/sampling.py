"""Short, differentiable samplers over a timestep subset (paper Fig. 2): DDIM and ancestral DDPM, and the
multistep ODE solvers DPM-Solver++(2M) and UniPC.

Plain functions with no hidden state and no ``no_grad`` inside, so the same code samples and is
differentiated through (MMD-DDM backpropagates the loss through the whole chain). Noise comes from
``generator``: ``None`` (torch's global RNG), one ``torch.Generator`` for the batch, or a list with one
generator per sample, which makes every sample independent of how the batch is split. A stochastic
sampler draws each step's noise from ``generator`` after the caller drew x_T from it (``sample_seeded``
does both), as diffusers' pipelines do: the in-chain noise is never x_T again.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence, Union

import torch
from torch.utils.checkpoint import checkpoint as _checkpoint

from .errors import MMDLibError
from .schedules import TIMESTEP_SPACINGS, check_timesteps

Generator = Union[None, torch.Generator, Sequence[torch.Generator]]


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] to image space [0, 1], clamped (the gradient passes inside the range)."""
    return ((x + 1) / 2).clamp(0, 1)


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


def predict_eps(model: Callable, x: torch.Tensor, t: int) -> torch.Tensor:
    """eps_theta(x_t, t) from a diffusers UNet2DModel or any (x, t) -> eps callable."""
    out = model(x, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
    out = getattr(out, "sample", out)
    if isinstance(out, (tuple, list)):
        out = out[0]
    # Models with a learned variance output 2C channels; the first C are eps.
    return out[:, : x.shape[1]]


def _check(noise_: torch.Tensor, timesteps, alphas_cumprod: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    if not torch.is_tensor(noise_) or noise_.dim() < 2:
        raise MMDLibError(f"noise must be a tensor [N, ...] with a batch dimension, got {type(noise_).__name__} "
                          f"of shape {tuple(getattr(noise_, 'shape', ()))}.")
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
    if ac.dim() != 1 or not ((ac > 0) & (ac <= 1)).all():
        raise MMDLibError("alphas_cumprod must be a 1-D tensor with values in (0, 1].")
    return check_timesteps(timesteps, len(ac)), ac


def _checkpointed(checkpoint: bool | int, n: int) -> int:
    """How many steps (the first ones, from x_T) to recompute in backward: True all, False none, int k."""
    if isinstance(checkpoint, bool):
        return n if checkpoint else 0
    if not isinstance(checkpoint, int) or checkpoint < 0:
        raise MMDLibError(f"checkpoint must be True, False or a number of steps >= 0, got {checkpoint!r}.")
    return min(checkpoint, n)


def _chain(step: Callable, noise_: torch.Tensor, steps: list[int], ac: torch.Tensor, sigma_fn: Callable,
           checkpoint: bool | int, generator: Generator) -> torch.Tensor:
    """Run x_T -> x_0 over ``steps`` (descending), with per-step noise drawn outside the checkpoint."""
    x = noise_
    prev = [-1] + steps[:-1]
    k = _checkpointed(checkpoint, len(steps))
    for i, (t, s) in enumerate(zip(reversed(steps), reversed(prev))):
        a_t, a_s = float(ac[t]), (float(ac[s]) if s >= 0 else 1.0)  # alpha_bar_{-1} = 1 (set_alpha_to_one)
        sigma = sigma_fn(a_t, a_s)
        z = randn(x.shape, generator, device=x.device, dtype=x.dtype) if sigma > 0 else None
        if i < k and torch.is_grad_enabled():
            x = _checkpoint(step, x, t, a_t, a_s, sigma, z, use_reentrant=False)
        else:
            x = step(x, t, a_t, a_s, sigma, z)
    return x


def ddim_sample(model: Callable, noise: torch.Tensor, timesteps: Sequence[int], alphas_cumprod: torch.Tensor,
                eta: float = 0.0, checkpoint: bool | int = False, generator: Generator = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) from x_T = ``noise`` over ascending ``timesteps``; returns x_0 in [-1, 1] space.
    ``checkpoint``: recompute every step (True), none (False) or the first k from x_T (k) in backward."""
    steps, ac = _check(noise, timesteps, alphas_cumprod)
    if not eta >= 0:
        raise MMDLibError(f"eta must be >= 0 (0 is deterministic DDIM, 1 is DDPM-like), got {eta!r}.")

    def sigma_fn(a_t: float, a_s: float) -> float:
        # sigma_t(eta), DDIM eq. (16)
        return eta * math.sqrt((1 - a_s) / (1 - a_t) * (1 - a_t / a_s))

    def step(x, t, a_t, a_s, sigma, z):
        eps = predict_eps(model, x, t)
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # predicted x_0, DDIM eq. (9)
        x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma**2, 0.0)) * eps  # DDIM eq. (12)
        return x if z is None else x + sigma * z

    return _chain(step, noise, steps, ac, sigma_fn, checkpoint, generator)


def ddpm_sample(model: Callable, noise: torch.Tensor, timesteps: Sequence[int], alphas_cumprod: torch.Tensor,
                checkpoint: bool | int = False, generator: Generator = None, variance: str = "small") -> torch.Tensor:
    """Ancestral DDPM (paper eqs. 3-4, Table 9) over the subset, with beta_t = 1 - alpha_bar_t / alpha_bar_s.

    ``variance="small"`` is the posterior variance beta~_t = (1 - alpha_bar_s) / (1 - alpha_bar_t) beta_t
    (DDPM's "fixed small", equal to DDIM with eta = 1); ``"large"`` is beta_t, as in the DDIM code's
    ``ddpm_steps``. No x_0 clipping, so the chain stays differentiable.
    """
    steps, ac = _check(noise, timesteps, alphas_cumprod)
    if variance not in ("small", "large"):
        raise MMDLibError(f"unknown DDPM variance {variance!r}; known: small, large.")

    def sigma_fn(a_t: float, a_s: float) -> float:
        if a_s == 1.0:  # last step: x_0 is returned without noise
            return 0.0
        beta = 1 - a_t / a_s
        return math.sqrt(beta * (1 - a_s) / (1 - a_t) if variance == "small" else beta)

    def step(x, t, a_t, a_s, sigma, z):
        eps = predict_eps(model, x, t)
        beta = 1 - a_t / a_s
        x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        # posterior mean mu~_t(x_t, x_0), DDPM eq. (7)
        x = (math.sqrt(a_s) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)) * x
        return x if z is None else x + sigma * z

    return _chain(step, noise, steps, ac, sigma_fn, checkpoint, generator)


# Multistep solvers of the diffusion ODE in data prediction, as diffusers' DPMSolverMultistepScheduler and
# UniPCMultistepScheduler step them (their defaults: order 2, a first-order last step onto sigma = 0).
# Notation of DPM-Solver (Lu et al. 2022, Sec. 2): x_t = alpha_t x_0 + sigma_t eps, lambda_t = log(alpha_t /
# sigma_t); x_theta(x_t, t) = (x_t - sigma_t eps_theta) / alpha_t is the data prediction.

def _vp(ac: torch.Tensor, steps: list[int]) -> tuple[list[float], list[float], list[float]]:
    """alpha, sigma and lambda at the descending ``steps``, then at the end point sigma = 0 (x_0 itself)."""
    a = [math.sqrt(float(ac[t])) for t in reversed(steps)] + [1.0]
    s = [math.sqrt(1.0 - float(ac[t])) for t in reversed(steps)] + [0.0]
    lam = [math.log(ai / si) for ai, si in zip(a[:-1], s[:-1])] + [math.inf]
    return a, s, lam


def _multistep_chain(step: Callable, state: tuple, n: int, checkpoint: bool | int) -> torch.Tensor:
    """Run ``state = step(i, *state)`` for i = 0..n-1 (state[0] is x; the rest is what the solver carries
    from step to step), recomputing the first k steps in backward."""
    k = _checkpointed(checkpoint, n)
    for i in range(n):
        if i < k and torch.is_grad_enabled():
            state = _checkpoint(step, i, *state, use_reentrant=False)
        else:
            state = step(i, *state)
    return state[0]


def dpmpp_2m_sample(model: Callable, noise: torch.Tensor, timesteps: Sequence[int], alphas_cumprod: torch.Tensor,
                    checkpoint: bool | int = False, generator: Generator = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2, "midpoint" form) from x_T = ``noise`` over ascending
    ``timesteps``; the first step is first order (no history yet) and so is the last, onto sigma = 0, where
    it returns the data prediction. Deterministic (``generator`` is accepted and unused). Equals diffusers'
    ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")``."""
    steps, ac = _check(noise, timesteps, alphas_cumprod)
    a, s, lam = _vp(ac, steps)
    ts, n = steps[::-1], len(steps)

    def step(i, x, m_prev):
        m = (x - s[i] * predict_eps(model, x, ts[i])) / a[i]  # x_theta(x_t_i, t_i)
        if i == n - 1:
            return m, m  # sigma = 0: the first-order step lands on the data prediction
        h = lam[i + 1] - lam[i]
        d = m if m_prev is None else m + (m - m_prev) * (h / (lam[i] - lam[i - 1])) / 2  # D0 + D1 / 2, r = h_{i-1} / h
        return s[i + 1] / s[i] * x - a[i + 1] * math.expm1(-h) * d, m  # Algorithm 2, line 6 (first order: eq. 9)

    return _multistep_chain(step, (noise, None), n, checkpoint)


def _unipc_rhos(h: float, r: float | None) -> tuple[float, ...]:
    """UniC's weights (Zhao et al. 2023, Algorithm 2 with B(h) = e^{-h} - 1, "bh2"): 1/2 at order 1; at order 2
    the solution of [[1, 1], [r, 1]] rho = (phi_2, 2 phi_3) / B(h) in the data-prediction phi functions."""
    if r is None:
        return (0.5,)
    hh = -h
    b_h = math.expm1(hh)
    phi_2 = math.expm1(hh) / hh - 1
    phi_3 = phi_2 / hh - 0.5
    b1, b2 = phi_2 / b_h, 2 * phi_3 / b_h
    rho_1 = (b1 - b2) / (1 - r)
    return rho_1, b1 - rho_1


def unipc_sample(model: Callable, noise: torch.Tensor, timesteps: Sequence[int], alphas_cumprod: torch.Tensor,
                 checkpoint: bool | int = False, generator: Generator = None) -> torch.Tensor:
    """UniPC (Zhao et al. 2023; B(h) = bh2, order 2, data prediction) from x_T = ``noise`` over ascending
    ``timesteps``. Each model evaluation first corrects the previous step (UniC, reusing that evaluation: no
    extra cost), then predicts the next (UniP); orders rise from 1 as history accrues and the last step is
    first order onto sigma = 0 (no corrector after it). Deterministic (``generator`` is accepted and unused).
    Equals diffusers' ``UniPCMultistepScheduler(solver_type="bh2", solver_order=2, final_sigmas_type="zero")``."""
    steps, ac = _check(noise, timesteps, alphas_cumprod)
    a, s, lam = _vp(ac, steps)
    ts, n = steps[::-1], len(steps)
    order = [min(2, n - i, i + 1) for i in range(n)]  # UniP's order at step i (warm-up, lower order at the end)

    def step(i, x, x_last, m1, m2):
        # x: UniP's x_t_i; x_last: the corrected x_t_{i-1} it came from; m1, m2: x_theta at t_{i-1}, t_{i-2}
        m = (x - s[i] * predict_eps(model, x, ts[i])) / a[i]  # x_theta at t_i, on the uncorrected x
        if i == n - 1:
            return m, x, m, m1  # sigma = 0: UniP of order 1 lands on the data prediction (a correction would not count)
        if i > 0:  # UniC: correct x_t_i with the new evaluation, at the order of the UniP step that made it
            h = lam[i] - lam[i - 1]
            r = (lam[i - 2] - lam[i - 1]) / h if order[i - 1] == 2 else None
            rho = _unipc_rhos(h, r)
            res = rho[-1] * (m - m1) + (rho[0] * (m2 - m1) / r if r is not None else 0)
            x = s[i] / s[i - 1] * x_last - a[i] * math.expm1(-h) * (m1 + res)
        h = lam[i + 1] - lam[i]
        pred = m if order[i] == 1 else m + 0.5 * (m1 - m) / ((lam[i - 1] - lam[i]) / h)  # UniP, rho_p = 1/2
        return s[i + 1] / s[i] * x - a[i + 1] * math.expm1(-h) * pred, x, m, m1

    return _multistep_chain(step, (noise, None, None, None), n, checkpoint)


def slerp(x0: torch.Tensor, x1: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two latents x_T (paper eq. 8)."""
    a, b = x0.flatten(), x1.flatten()
    theta = torch.arccos(torch.clamp(a @ b / (a.norm() * b.norm()), -1.0, 1.0))
    alpha = torch.as_tensor(alpha, dtype=x0.dtype, device=x0.device).reshape(-1, *([1] * x0.dim()))
    return (torch.sin((1 - alpha) * theta) * x0 + torch.sin(alpha * theta) * x1) / torch.sin(theta)


@dataclasses.dataclass(frozen=True)
class Sampler:
    """Everything about one sampler: the function (calling the record calls it), what a checkpointed step
    keeps, its own timestep spacing, and the diffusers pipeline and scheduler an export writes for it
    (class names: ``mmdlib.export`` builds them; a "module:Class" name is one of mmdlib's)."""

    name: str
    title: str  # as the book's tables name it
    sample: Callable[..., torch.Tensor]
    carried: int  # sample-sized tensors a checkpointed step keeps: x, and a multistep solver's history
    spacing: str  # its own timestep spacing, the one "auto" stands for and its exported scheduler visits
    pipeline: str
    scheduler: str
    scheduler_config: dict
    spacings: dict  # the spacings its scheduler can express: mmdlib's name -> the scheduler's
    eta: bool = False  # takes DDIM's eta
    noisy: bool = False  # adds fresh noise at every step whatever the settings (DDPM)

    def __call__(self, *args, **kw) -> torch.Tensor:
        return self.sample(*args, **kw)

    def options(self, eta: float | None = 0.0) -> dict:
        """The options it takes from run settings: DDIM's eta; the others have none."""
        if self.eta:
            return {"eta": float(eta or 0.0)}
        if eta:
            raise MMDLibError(f"eta={eta} applies to the ddim sampler only; {self.name} takes no eta (leave it at 0).")
        return {}

    def stochastic(self, eta: float | None = 0.0) -> bool:
        """Whether the chain adds fresh noise at its steps (DDPM, or DDIM with eta > 0)."""
        return self.noisy or (self.eta and bool(eta))

    def carried_tensors(self, eta: float | None = 0.0) -> int:
        """Sample-sized tensors a checkpointed step keeps for backward: its inputs and a stochastic step's noise."""
        return self.carried + self.stochastic(eta)


_ONE_STEP = {"linear": "leading", "trailing": "trailing"}  # DDIM and DDPM schedulers: mmdlib's spacing -> theirs
# the multistep schedulers as mmdlib steps them: order 2, data prediction, a first-order last step onto sigma = 0
_MULTISTEP = {"solver_order": 2, "lower_order_final": True, "final_sigmas_type": "zero"}
SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("ddim", "DDIM", ddim_sample, 1, "linear", "DDIMPipeline", "DDIMScheduler",
            {"set_alpha_to_one": True, "clip_sample": False}, _ONE_STEP, eta=True),
    Sampler("ddpm", "DDPM", ddpm_sample, 1, "linear", "DDPMPipeline", "DDPMScheduler",
            {"variance_type": "fixed_small", "clip_sample": False}, _ONE_STEP, noisy=True),
    Sampler("dpmpp2m", "DPM-Solver++(2M)", dpmpp_2m_sample, 2, "trailing", "DDPMPipeline",
            "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_type": "midpoint", **_MULTISTEP},
            {"trailing": "trailing"}),
    Sampler("unipc", "UniPC", unipc_sample, 4, "trailing", "DDPMPipeline",
            "mmdlib.pipeline_schedulers:UniPCPipelineScheduler", {"solver_type": "bh2", "predict_x0": True,
                                                                   **_MULTISTEP}, {"trailing": "trailing"}),
)}


def get_sampler(name: str) -> Sampler:
    """The sampler registered as ``name`` (see SAMPLERS); call it as its function."""
    if name not in SAMPLERS:
        raise MMDLibError(f"unknown sampler {name!r}; known samplers: {', '.join(SAMPLERS)}.")
    return SAMPLERS[name]


def sampler_kwargs(name: str, eta: float | None = 0.0) -> dict:
    """The options sampler ``name`` takes from run settings (``Sampler.options``)."""
    return get_sampler(name).options(eta)


def resolve_spacing(sampler: str, spacing: str = "auto") -> str:
    """``spacing``, where "auto" stands for ``sampler``'s own (``Sampler.spacing``)."""
    own = get_sampler(sampler).spacing
    if spacing != "auto" and spacing not in TIMESTEP_SPACINGS:
        raise MMDLibError(f"unknown timestep spacing {spacing!r}; known: auto, {', '.join(TIMESTEP_SPACINGS)}.")
    return own if spacing == "auto" else spacing


def sample_seeded(model: Callable, seeds: Sequence[int], shape: Sequence[int], timesteps: Sequence[int],
                  alphas_cumprod: torch.Tensor, sampler: str = "ddim", device=None, checkpoint: bool | int = False,
                  **kw) -> torch.Tensor:
    """x_0 in [-1, 1] for per-sample ``seeds``: sample i's generator draws its x_T ([C, H, W] = ``shape``) and
    then its in-chain noise, so each sample depends on its seed only (and equals a diffusers pipeline called
    with the same generators)."""
    gens = generators(seeds)
    x_T = randn((len(gens), *shape), gens, device=device)
    return get_sampler(sampler)(model, x_T, timesteps, alphas_cumprod, checkpoint=checkpoint, generator=gens, **kw)
