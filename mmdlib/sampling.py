"""Short, differentiable samplers over a timestep subset (paper Fig. 2): DDIM and ancestral DDPM, and the
multistep ODE solvers DPM-Solver++(2M) and UniPC, in a registry with one record per sampler.

Each sampler is its coefficients (``plan``: from alpha_bar at the chain's times) and its update (``update``:
one step from x and the network's eps), run by ``chain.run`` with no hidden state and no ``no_grad`` inside,
so the same code samples and is differentiated through (MMD-DDM backpropagates the loss through the whole
chain); an exported pipeline's scheduler (``pipeline_schedulers.MMDLibScheduler``) steps the same updates.
Timesteps may be real-valued (a float tensor, possibly requiring grad: ``chain``). A stochastic sampler
draws each step's noise from ``generator`` after the caller drew x_T from it (``sample_seeded`` does both),
as diffusers' pipelines do: the in-chain noise is never x_T again.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import torch

from .chain import (Generator, check_noise, expm1, generators, log, noise, nonneg, predict_eps, randn, run,
                    sqrt, times)
from .errors import MMDLibError
from .schedules import TIMESTEP_SPACINGS

__all__ = ["SAMPLERS", "Sampler", "ddim_sample", "ddpm_sample", "dpmpp_2m_sample", "generators", "get_sampler",
           "noise", "predict_eps", "randn", "resolve_spacing", "sample_seeded", "sampler_kwargs", "slerp", "to_unit",
           "unipc_sample"]


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] to image space [0, 1], clamped (the gradient passes inside the range)."""
    return ((x + 1) / 2).clamp(0, 1)


def slerp(x0: torch.Tensor, x1: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two latents x_T (paper eq. 8)."""
    a, b = x0.flatten(), x1.flatten()
    theta = torch.arccos(torch.clamp(a @ b / (a.norm() * b.norm()), -1.0, 1.0))
    alpha = torch.as_tensor(alpha, dtype=x0.dtype, device=x0.device).reshape(-1, *([1] * x0.dim()))
    return (torch.sin((1 - alpha) * theta) * x0 + torch.sin(alpha * theta) * x1) / torch.sin(theta)


# --- DDIM and DDPM: one network evaluation, one step from alpha_bar a_t to a_s --------------------------------

def check_eta(eta: float) -> None:
    """DDIM's eta lies in [0, 1] (DDIM eq. 16; diffusers' range): 0 is deterministic DDIM, 1 DDPM's variance. Above
    1 the step's noise outgrows what 1 - alpha_bar leaves for it and the chain drifts off the data."""
    if not 0 <= eta <= 1:
        raise MMDLibError(f"eta must be a number in [0, 1] (0 is deterministic DDIM, the paper's; 1 is DDPM-like), "
                          f"got {eta!r}.")


def _ddim_plan(A: list, eta: float = 0.0) -> dict:
    check_eta(eta)
    # sigma_t(eta), DDIM eq. (16); 0 onto x_0 (written out: sqrt's gradient at 0 is infinite)
    return {"A": A, "sigma": [eta * sqrt((1 - s) / (1 - t) * (1 - t / s)) if s != 1.0 else 0.0
                              for t, s in zip(A, A[1:])]}


def _ddim_update(i: int, x: torch.Tensor, eps: torch.Tensor, plan: dict, z=None) -> tuple:
    a_t, a_s, sigma = plan["A"][i], plan["A"][i + 1], plan["sigma"][i]
    x0 = (x - sqrt(1 - a_t) * eps) / sqrt(a_t)  # predicted x_0, DDIM eq. (9)
    x = sqrt(a_s) * x0 + sqrt(nonneg(1 - a_s - sigma**2)) * eps  # DDIM eq. (12)
    return (x if z is None else x + sigma * z,)


def _ddpm_plan(A: list, variance: str = "small") -> dict:
    if variance not in ("small", "large"):
        raise MMDLibError(f"unknown DDPM variance {variance!r}; known: small, large.")
    sigma = []
    for a_t, a_s in zip(A, A[1:]):  # beta_t = 1 - alpha_bar_t / alpha_bar_s over the subset
        beta = 1 - a_t / a_s
        sigma.append(0.0 if a_s == 1.0 else sqrt(beta * (1 - a_s) / (1 - a_t) if variance == "small" else beta))
    return {"A": A, "sigma": sigma}  # the last step returns x_0 without noise


def _ddpm_update(i: int, x: torch.Tensor, eps: torch.Tensor, plan: dict, z=None) -> tuple:
    a_t, a_s, sigma = plan["A"][i], plan["A"][i + 1], plan["sigma"][i]
    beta = 1 - a_t / a_s
    x0 = (x - sqrt(1 - a_t) * eps) / sqrt(a_t)
    # posterior mean mu~_t(x_t, x_0), DDPM eq. (7)
    x = (sqrt(a_s) * beta / (1 - a_t)) * x0 + (sqrt(1 - beta) * (1 - a_s) / (1 - a_t)) * x
    return (x if z is None else x + sigma * z,)


# --- Multistep solvers of the diffusion ODE in data prediction, as diffusers' DPMSolverMultistepScheduler and
# UniPCMultistepScheduler step them (their defaults: order 2, a first-order last step onto sigma = 0).
# Notation of DPM-Solver (Lu et al. 2022, Sec. 2): x_t = alpha_t x_0 + sigma_t eps, lambda_t = log(alpha_t /
# sigma_t); x_theta(x_t, t) = (x_t - sigma_t eps_theta) / alpha_t is the data prediction.

def _vp_plan(A: list) -> dict:
    """alpha, sigma and lambda at the chain's times, then at the end point sigma = 0 (x_0 itself); UniP's order
    at each step (warm-up, and lower order at the end)."""
    n = len(A) - 1
    a = [sqrt(A[i]) for i in range(n)] + [1.0]
    s = [sqrt(1.0 - A[i]) for i in range(n)] + [0.0]
    return {"a": a, "s": s, "lam": [log(ai / si) for ai, si in zip(a[:-1], s[:-1])] + [math.inf], "n": n,
            "order": [min(2, n - i, i + 1) for i in range(n)]}


def _dpmpp_2m_update(i: int, x: torch.Tensor, eps: torch.Tensor, plan: dict, m_prev=None) -> tuple:
    a, s, lam = plan["a"], plan["s"], plan["lam"]
    m = (x - s[i] * eps) / a[i]  # x_theta(x_t_i, t_i)
    if i == plan["n"] - 1:
        return m, m  # sigma = 0: the first-order step lands on the data prediction
    h = lam[i + 1] - lam[i]
    d = m if m_prev is None else m + (m - m_prev) * (h / (lam[i] - lam[i - 1])) / 2  # D0 + D1 / 2, r = h_{i-1} / h
    return s[i + 1] / s[i] * x - a[i + 1] * expm1(-h) * d, m  # Algorithm 2, line 6 (first order: eq. 9)


def _unipc_rhos(h, r):
    """UniC's weights (Zhao et al. 2023, Algorithm 2 with B(h) = e^{-h} - 1, "bh2"): 1/2 at order 1; at order 2
    the solution of [[1, 1], [r, 1]] rho = (phi_2, 2 phi_3) / B(h) in the data-prediction phi functions."""
    if r is None:
        return (0.5,)
    hh = -h
    b_h = expm1(hh)
    phi_2 = expm1(hh) / hh - 1
    phi_3 = phi_2 / hh - 0.5
    b1, b2 = phi_2 / b_h, 2 * phi_3 / b_h
    rho_1 = (b1 - b2) / (1 - r)
    return rho_1, b1 - rho_1


def _unipc_update(i: int, x: torch.Tensor, eps: torch.Tensor, plan: dict, x_last=None, m1=None, m2=None) -> tuple:
    # x: UniP's x_t_i; x_last: the corrected x_t_{i-1} it came from; m1, m2: x_theta at t_{i-1}, t_{i-2}
    a, s, lam, order = plan["a"], plan["s"], plan["lam"], plan["order"]
    m = (x - s[i] * eps) / a[i]  # x_theta at t_i, on the uncorrected x
    if i == plan["n"] - 1:
        return m, x, m, m1  # sigma = 0: UniP of order 1 lands on the data prediction (a correction would not count)
    if i > 0:  # UniC: correct x_t_i with the new evaluation, at the order of the UniP step that made it
        h = lam[i] - lam[i - 1]
        r = (lam[i - 2] - lam[i - 1]) / h if order[i - 1] == 2 else None
        rho = _unipc_rhos(h, r)
        res = rho[-1] * (m - m1) + (rho[0] * (m2 - m1) / r if r is not None else 0)
        x = s[i] / s[i - 1] * x_last - a[i] * expm1(-h) * (m1 + res)
    h = lam[i + 1] - lam[i]
    pred = m if order[i] == 1 else m + 0.5 * (m1 - m) / ((lam[i - 1] - lam[i]) / h)  # UniP, rho_p = 1/2
    return s[i + 1] / s[i] * x - a[i + 1] * expm1(-h) * pred, x, m, m1


# --- The registry ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Sampler:
    """Everything about one sampler: its math (``plan``, ``update``; calling the record runs the chain), what a
    checkpointed step keeps, its own timestep spacing, and the diffusers pipeline and scheduler an export
    writes for it (class names: ``mmdlib.export`` builds them; a "module:Class" name is one of mmdlib's)."""

    name: str
    title: str  # as the book's tables name it
    plan: Callable[..., dict]  # (alpha_bar at the chain's times then 1.0, **options) -> coefficients
    update: Callable[..., tuple]  # (i, x, eps, plan, *carried, [z]) -> (x at the next time, *carried)
    carried: int  # sample-sized tensors a checkpointed step keeps: x, and a multistep solver's history
    spacing: str  # its own timestep spacing, the one "auto" stands for and its exported scheduler visits
    pipeline: str
    scheduler: str
    scheduler_config: dict
    spacings: dict  # the spacings its scheduler can express: mmdlib's name -> the scheduler's
    eta: bool = False  # takes DDIM's eta
    noisy: bool = False  # adds fresh noise at every step whatever the settings (DDPM)

    def __call__(self, model: Callable, noise: torch.Tensor, timesteps, alphas_cumprod: torch.Tensor,
                 checkpoint: bool | int = False, generator: Generator = None, **options) -> torch.Tensor:
        """x_0 in [-1, 1] space from x_T = ``noise`` over ascending ``timesteps`` (ints, or a float tensor).
        ``checkpoint``: recompute every step (True), none (False) or the first k from x_T (k) in backward."""
        check_noise(noise)
        ts, A = times(timesteps, alphas_cumprod)
        plan = self.plan(A, **options)

        def step(i, x, *rest):
            return self.update(i, x, predict_eps(model, x, ts[i]), plan, *rest)

        def draw(i, x):  # a stochastic step's noise, from the sample's generator after its x_T
            if "sigma" not in plan:
                return ()
            return (randn(x.shape, generator, device=x.device, dtype=x.dtype) if plan["sigma"][i] > 0 else None,)

        return run(step, (noise,) + (None,) * (self.carried - 1), len(ts), checkpoint, draw)[0]

    def options(self, eta: float | None = 0.0) -> dict:
        """The options it takes from run settings: DDIM's eta; the others have none."""
        if self.eta:
            check_eta(float(eta or 0.0))
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
    Sampler("ddim", "DDIM", _ddim_plan, _ddim_update, 1, "linear", "DDIMPipeline", "DDIMScheduler",
            {"set_alpha_to_one": True, "clip_sample": False}, _ONE_STEP, eta=True),
    Sampler("ddpm", "DDPM", _ddpm_plan, _ddpm_update, 1, "linear", "DDPMPipeline", "DDPMScheduler",
            {"variance_type": "fixed_small", "clip_sample": False}, _ONE_STEP, noisy=True),
    Sampler("dpmpp2m", "DPM-Solver++(2M)", _vp_plan, _dpmpp_2m_update, 2, "trailing", "DDPMPipeline",
            "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_type": "midpoint", **_MULTISTEP},
            {"trailing": "trailing"}),
    Sampler("unipc", "UniPC", _vp_plan, _unipc_update, 4, "trailing", "DDPMPipeline",
            "mmdlib.pipeline_schedulers:UniPCPipelineScheduler", {"solver_type": "bh2", "predict_x0": True,
                                                                   **_MULTISTEP}, {"trailing": "trailing"}),
)}


def ddim_sample(model: Callable, noise: torch.Tensor, timesteps: Sequence[int] | torch.Tensor,
                alphas_cumprod: torch.Tensor, eta: float = 0.0, checkpoint: bool | int = False,
                generator: Generator = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) from x_T = ``noise`` over ascending ``timesteps``; returns x_0 in [-1, 1] space.
    ``checkpoint``: recompute every step (True), none (False) or the first k from x_T (k) in backward."""
    return SAMPLERS["ddim"](model, noise, timesteps, alphas_cumprod, checkpoint, generator, eta=eta)


def ddpm_sample(model: Callable, noise: torch.Tensor, timesteps: Sequence[int] | torch.Tensor,
                alphas_cumprod: torch.Tensor, checkpoint: bool | int = False, generator: Generator = None,
                variance: str = "small") -> torch.Tensor:
    """Ancestral DDPM (paper eqs. 3-4, Table 9) over the subset, with beta_t = 1 - alpha_bar_t / alpha_bar_s.

    ``variance="small"`` is the posterior variance beta~_t = (1 - alpha_bar_s) / (1 - alpha_bar_t) beta_t
    (DDPM's "fixed small", equal to DDIM with eta = 1); ``"large"`` is beta_t, as in the DDIM code's
    ``ddpm_steps``. No x_0 clipping, so the chain stays differentiable.
    """
    return SAMPLERS["ddpm"](model, noise, timesteps, alphas_cumprod, checkpoint, generator, variance=variance)


def dpmpp_2m_sample(model: Callable, noise: torch.Tensor, timesteps: Sequence[int] | torch.Tensor,
                    alphas_cumprod: torch.Tensor, checkpoint: bool | int = False,
                    generator: Generator = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2, "midpoint" form) from x_T = ``noise`` over ascending
    ``timesteps``; the first step is first order (no history yet) and so is the last, onto sigma = 0, where
    it returns the data prediction. Deterministic (``generator`` is accepted and unused). Equals diffusers'
    ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero")``."""
    return SAMPLERS["dpmpp2m"](model, noise, timesteps, alphas_cumprod, checkpoint, generator)


def unipc_sample(model: Callable, noise: torch.Tensor, timesteps: Sequence[int] | torch.Tensor,
                 alphas_cumprod: torch.Tensor, checkpoint: bool | int = False,
                 generator: Generator = None) -> torch.Tensor:
    """UniPC (Zhao et al. 2023; B(h) = bh2, order 2, data prediction) from x_T = ``noise`` over ascending
    ``timesteps``. Each model evaluation first corrects the previous step (UniC, reusing that evaluation: no
    extra cost), then predicts the next (UniP); orders rise from 1 as history accrues and the last step is
    first order onto sigma = 0 (no corrector after it). Deterministic (``generator`` is accepted and unused).
    Equals diffusers' ``UniPCMultistepScheduler(solver_type="bh2", solver_order=2, final_sigmas_type="zero")``."""
    return SAMPLERS["unipc"](model, noise, timesteps, alphas_cumprod, checkpoint, generator)


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


def sample_seeded(model: Callable, seeds: Sequence[int], shape: Sequence[int], timesteps, alphas_cumprod: torch.Tensor,
                  sampler: str = "ddim", device=None, checkpoint: bool | int = False, **kw) -> torch.Tensor:
    """x_0 in [-1, 1] for per-sample ``seeds``: sample i's generator draws its x_T ([C, H, W] = ``shape``) and
    then its in-chain noise, so each sample depends on its seed only (and equals a diffusers pipeline called
    with the same generators)."""
    gens = generators(seeds)
    x_T = randn((len(gens), *shape), gens, device=device)
    return get_sampler(sampler)(model, x_T, timesteps, alphas_cumprod, checkpoint=checkpoint, generator=gens, **kw)
