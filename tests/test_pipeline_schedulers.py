"""UniPCPipelineScheduler: diffusers' UniPC, callable from DDPMPipeline (its step takes the generator)."""
import torch
from diffusers import UniPCMultistepScheduler

from mmdlib.pipeline_schedulers import UniPCPipelineScheduler


def test_its_step_takes_a_generator_and_equals_diffusers_own():
    ours, theirs = UniPCPipelineScheduler(solver_type="bh2"), UniPCMultistepScheduler(solver_type="bh2")
    for s in (ours, theirs):
        s.set_timesteps(4)
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    a, b = x.clone(), x.clone()
    for t in ours.timesteps:
        eps = 0.3 * a
        a = ours.step(eps, t, a, generator=torch.Generator().manual_seed(1)).prev_sample
        b = theirs.step(0.3 * b, t, b).prev_sample
    torch.testing.assert_close(a, b)
