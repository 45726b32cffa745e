"""A denoiser as a diffusers pipeline folder whose scheduler steps mmdlib's chain (``save_pipeline``)."""
from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path

import torch

from .sampling import Sampler, get_sampler, resolve_spacing
from .schedules import alphas_cumprod as _alphas_cumprod
from .schedules import linear_betas, timestep_subset

META_FILE = "mmdlib.json"  # what mmdlib records beside a pipeline: budget, timesteps, sampler, eta, ...


def _class(name: str):
    """A diffusers class by name, or one of mmdlib's as "module:Class"."""
    module, _, cls = name.rpartition(":")
    return getattr(importlib.import_module(module or "diffusers"), cls)


def betas_config(ac: torch.Tensor) -> dict:
    """The scheduler-config entries that give alphas_cumprod ``ac``: DDPM's linear betas by name where they
    are those, else the betas themselves."""
    if torch.allclose(ac, _alphas_cumprod(linear_betas(len(ac))), rtol=1e-12, atol=0):
        return {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    return {"trained_betas": (1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])).tolist()}


def scheduler_for(sampler: Sampler, spacing: str, ac: torch.Tensor):
    """``sampler``'s diffusers scheduler (``Sampler.scheduler``, ``.scheduler_config``) over the training
    schedule ``ac``, visiting ``spacing``'s timesteps; a spacing it cannot express is written as the sampler's
    own, with a warning."""
    if spacing not in sampler.spacings:
        warnings.warn(f"{spacing} spacing cannot be expressed in the {sampler.name} scheduler's config: the pipeline "
                      f"will use {sampler.spacing} spacing; sample with mmdlib and the timesteps in {META_FILE}.")
    return _class(sampler.scheduler)(num_train_timesteps=len(ac), steps_offset=0, **betas_config(ac),
                                     timestep_spacing=sampler.spacings.get(spacing, sampler.spacings[sampler.spacing]),
                                     **sampler.scheduler_config)


def save_pipeline(model: torch.nn.Module, path: str | Path, budget: int = 5, alphas_cumprod: torch.Tensor | None = None,
                  timestep_spacing: str = "auto", meta: dict | None = None, sampler: str = "ddim",
                  eta: float = 0.0) -> Path:
    """Write ``model`` as a folder that ``diffusers.DiffusionPipeline.from_pretrained`` loads, with the
    scheduler that makes ``pipe(num_inference_steps=budget)`` visit ``timestep_subset(budget, T, spacing)``,
    the steps mmdlib's sampler used (spacing "auto": the sampler's own, ``Sampler.spacing``). Each sampler's
    record (``sampling.SAMPLERS``) names the pipeline and scheduler:

    - ``"ddim"``: a DDIMPipeline (DDIMScheduler: set_alpha_to_one, no clipping, offset 0); pass the recorded
      eta to the call (it is a call argument, not part of the scheduler's config);
    - ``"ddpm"``: a DDPMPipeline (DDPMScheduler, fixed-small variance, no clipping);
    - ``"dpmpp2m"``, ``"unipc"``: a DDPMPipeline with a DPMSolverMultistepScheduler (DPM-Solver++, order 2,
      midpoint) or a UniPCMultistepScheduler (bh2, order 2), both data prediction with a first-order last
      step onto sigma = 0. The UniPC folder names ``mmdlib.pipeline_schedulers.UniPCPipelineScheduler``,
      diffusers' class with a ``step`` that accepts the ``generator=`` DDPMPipeline passes.

    Called with the generators ``sample_seeded`` uses, the pipeline reproduces mmdlib's chain, stochastic
    steps included. ``mmdlib.json`` records the budget, its timesteps, the spacing, the sampler and eta. A
    spacing the scheduler cannot express (quadratic; linear for the solvers) is written as the sampler's
    own, with a warning: sample with mmdlib and the recorded timesteps.
    """
    record = get_sampler(sampler)
    record.options(eta)  # eta only where it applies
    spacing = resolve_spacing(sampler, timestep_spacing)
    ac = _alphas_cumprod(linear_betas()) if alphas_cumprod is None else torch.as_tensor(alphas_cumprod).double()
    steps = timestep_subset(budget, len(ac), spacing)
    pipe = _class(record.pipeline)(unet=model, scheduler=scheduler_for(record, spacing, ac))
    path = Path(path)
    pipe.save_pretrained(path)
    info = {"budget": budget, "timestep_spacing": spacing, "timesteps": steps, "num_inference_steps": budget,
            "sampler": sampler, "eta": float(eta) if record.eta else None, **(meta or {})}
    (path / META_FILE).write_text(json.dumps(info, indent=1))
    return path
