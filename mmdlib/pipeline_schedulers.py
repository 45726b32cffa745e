"""Scheduler classes that exported pipelines name in their ``model_index.json`` (``export.save_pipeline``).

- ``UniPCPipelineScheduler``: diffusers 0.42's ``DDPMPipeline`` passes ``generator=`` to its scheduler's
  ``step``, which ``UniPCMultistepScheduler.step`` does not take; a UniPC folder names this subclass, as
  ``["mmdlib.pipeline_schedulers", "UniPCPipelineScheduler"]``. Where mmdlib is not installed,
  ``UniPCMultistepScheduler.from_pretrained(folder, subfolder="scheduler")`` reads the same config.
- ``MMDLibScheduler``: mmdlib's own steps over explicit timesteps, for the chains diffusers' schedulers cannot
  step: real-valued (learnt) timesteps, the quadratic spacing, a trailing spacing whose budget does not divide
  T. Each step is the sampler's update in ``mmdlib.sampling``, so the pipeline reproduces mmdlib's chain.

``DiffusionPipeline.from_pretrained`` imports this module and looks up the class and its base class,
``SchedulerMixin``, in it. Not imported by ``import mmdlib``, which does not import diffusers.
"""
from __future__ import annotations

import torch
from diffusers import ConfigMixin, SchedulerMixin, UniPCMultistepScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerOutput

from .chain import randn, times
from .sampling import get_sampler
from .schedules import alphas_cumprod, as_timesteps, linear_betas

__all__ = ["MMDLibScheduler", "SchedulerMixin", "UniPCPipelineScheduler"]


class UniPCPipelineScheduler(UniPCMultistepScheduler):
    """diffusers' UniPCMultistepScheduler, whose ``step`` also accepts the ``generator`` a pipeline passes
    (and ignores it: UniPC is deterministic)."""

    def step(self, model_output, timestep, sample, return_dict: bool = True, generator=None):
        return super().step(model_output, timestep, sample, return_dict=return_dict)


class MMDLibScheduler(SchedulerMixin, ConfigMixin):
    """mmdlib's chain for ``sampler`` (with ``eta`` for DDIM) over the timesteps ``steps`` (ascending; integers,
    or real numbers where alpha_bar is interpolated as ``mmdlib.schedules.alpha_bar`` does), for a
    ``DDPMPipeline``: ``set_timesteps(len(steps))``, then one ``step(eps, t, x, generator)`` per timestep, the
    stochastic ones drawing their noise from the pipeline's generators in mmdlib's order."""

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear", beta_start: float = 1e-4,
                 beta_end: float = 0.02, trained_betas: list | None = None, sampler: str = "ddim",
                 steps: list | None = None, eta: float = 0.0):
        if trained_betas is None and beta_schedule != "linear":
            raise ValueError(f"MMDLibScheduler takes linear betas or trained_betas, not {beta_schedule!r}.")
        betas = (torch.tensor(trained_betas, dtype=torch.float64) if trained_betas is not None
                 else linear_betas(num_train_timesteps, beta_start, beta_end))
        self.alphas_cumprod = alphas_cumprod(betas)
        self.init_noise_sigma = 1.0
        self.set_timesteps(len(steps or [0]))

    def set_timesteps(self, num_inference_steps: int, device=None) -> None:
        steps = list(self.config.steps or [0])
        if num_inference_steps != len(steps):
            raise ValueError(f"this pipeline steps through its {len(steps)} timesteps ({steps}); call it with "
                             f"num_inference_steps={len(steps)}.")
        self.record = get_sampler(self.config.sampler)
        ts, A = times(as_timesteps(steps), self.alphas_cumprod)
        self.plan = self.record.plan(A, **({"eta": self.config.eta} if self.record.eta else {}))
        self.timesteps = (torch.stack(ts) if torch.is_tensor(ts[0]) else torch.tensor(ts)).to(device)
        self.num_inference_steps, self._i, self._carried = len(steps), 0, (None,) * (self.record.carried - 1)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True):
        i = self._i
        draw = ()
        if "sigma" in self.plan:
            draw = (randn(sample.shape, generator, device=sample.device, dtype=sample.dtype)
                    if self.plan["sigma"][i] > 0 else None,)
        out = self.record.update(i, sample, model_output[:, :sample.shape[1]], self.plan, *self._carried, *draw)
        self._i, self._carried = i + 1, out[1:]
        return SchedulerOutput(prev_sample=out[0]) if return_dict else (out[0],)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
