"""A learnable schedule of real-valued timesteps: where a short chain steps, learnt by the same loss as the
weights (the samplers take its float timesteps and are differentiable in them: ``chain``)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .errors import MMDLibError
from .schedules import TIMESTEP_SPACINGS, check_timesteps, timestep_subset


class LearnedTimesteps(nn.Module):
    """``budget`` timesteps, strictly ascending inside [t_min, T-1], as LD3 parameterises a schedule (Tong et
    al. 2025, "Learning to Discretize Denoising Diffusion ODEs"): the span is cut into budget + 1 gaps (below
    the first timestep, between each two, above the last), whose shares are the softmax of unconstrained
    logits, and the timesteps are their cumulative sums. ``init``: a spacing name (``TIMESTEP_SPACINGS``) or
    the timesteps themselves; the module then returns them exactly. An end the initial schedule touches (the
    linear spacing's 0, the trailing one's T-1) stays there, as LD3 keeps its ends fixed; every other gap
    moves. ``forward()`` is the schedule: a float64 tensor [budget] with a gradient for the logits."""

    def __init__(self, budget: int, T: int, init: str | Sequence[float] = "linear", t_min: float = 0.0):
        super().__init__()
        if isinstance(init, str):
            if init not in TIMESTEP_SPACINGS:
                raise MMDLibError(f"unknown timestep spacing {init!r}; known: {', '.join(TIMESTEP_SPACINGS)}, or the "
                                  f"timesteps themselves.")
            init = timestep_subset(budget, T, init)
        steps = torch.as_tensor(init, dtype=torch.float64).flatten()
        check_timesteps(steps, T)
        if len(steps) != budget:
            raise MMDLibError(f"{len(steps)} initial timesteps for a budget of {budget}; give one per step.")
        if not 0 <= t_min <= steps[0]:
            raise MMDLibError(f"t_min must lie in 0..{steps[0].item():g} (the first initial timestep), got {t_min!r}.")
        self.T, self.t_min, self.span = int(T), float(t_min), float(T - 1 - t_min)
        gaps = torch.diff(steps, prepend=steps.new_tensor([t_min]), append=steps.new_tensor([T - 1.0]))
        self.register_buffer("free", gaps > 0)  # a zero gap at an end pins that end
        self.logits = nn.Parameter(torch.log(gaps[gaps > 0] / self.span))
        self.register_buffer("start", steps)
        with torch.no_grad():
            self.register_buffer("start_raw", self._raw())

    def _raw(self) -> torch.Tensor:
        shares = torch.zeros(len(self.free), dtype=torch.float64, device=self.logits.device)
        shares = shares.masked_scatter(self.free, torch.softmax(self.logits.double(), 0))
        return self.t_min + self.span * torch.cumsum(shares, 0)[:-1]

    def forward(self) -> torch.Tensor:
        # start + (raw - raw at the start): exactly the initial schedule until the logits move (cumulative sums
        # of a softmax are integers only up to rounding), and raw's gradient
        return (self.start + (self._raw() - self.start_raw)).clamp(self.t_min, self.T - 1)

    def extra_repr(self) -> str:
        return f"budget={len(self.start)}, T={self.T}, t_min={self.t_min:g}"
