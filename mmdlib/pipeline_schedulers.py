"""Scheduler classes that exported pipelines name in their ``model_index.json`` (``save_pipeline``).

diffusers 0.42's ``DDPMPipeline`` passes ``generator=`` to its scheduler's ``step``, and
``UniPCMultistepScheduler.step`` does not take it, so a DDPMPipeline with diffusers' own UniPC scheduler
cannot be called. A UniPC folder therefore names this subclass, as
``["mmdlib.pipeline_schedulers", "UniPCPipelineScheduler"]``; ``DiffusionPipeline.from_pretrained``
imports this module and looks up the class and its base class, ``SchedulerMixin``, in it. Where mmdlib
is not installed, ``UniPCMultistepScheduler.from_pretrained(folder, subfolder="scheduler")`` reads the
same config. Not imported by ``import mmdlib``, which does not import diffusers.
"""
from __future__ import annotations

from diffusers import SchedulerMixin, UniPCMultistepScheduler

__all__ = ["SchedulerMixin", "UniPCPipelineScheduler"]


class UniPCPipelineScheduler(UniPCMultistepScheduler):
    """diffusers' UniPCMultistepScheduler, whose ``step`` also accepts the ``generator`` a pipeline passes
    (and ignores it: UniPC is deterministic)."""

    def step(self, model_output, timestep, sample, return_dict: bool = True, generator=None):
        return super().step(model_output, timestep, sample, return_dict=return_dict)
