"""The fast path's switches and the gradient-checkpointing plan (no new math: same loss, same gradients).

``Speed`` says how the networks run on a device (bf16 autocast, channels-last, fused Adam, torch.compile);
``plan_memory`` picks how many sampler steps to recompute in the backward pass from the budget and the
memory the run may use, estimated (``plan_checkpointing``) from the bytes autograd saves for one step.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Callable

import torch
from torch import nn

from .errors import MMDLibError
from .sampling import get_sampler, noise, to_unit
from .streams import stream_seeds

PRECISIONS = ("auto", "fp32", "bf16")
COMPILE = ("auto", "on", "off")
MARGIN = 1.25  # estimated activations are scaled by this (allocator rounding, transient buffers)


@dataclasses.dataclass(frozen=True)
class Speed:
    bf16: bool = False
    channels_last: bool = False
    fused_adam: bool = False
    compile: bool = False

    def autocast(self, device: torch.device):
        """Networks in bf16 where it is on; code outside (chain state, kernel, MMD) casts back to fp32+."""
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=self.bf16)

    def place(self, module: nn.Module, device) -> nn.Module:
        return module.to(device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)

    def compiled(self, module: nn.Module, device=None) -> Callable:
        """``module`` under torch.compile where it is on (it shares the module's parameters), saying so: the
        first call compiles, which takes minutes, and on a CPU it gains nothing measured (``COMPILE_ON_CPU``)."""
        if not self.compile:
            return module
        cpu = device is not None and torch.device(device).type == "cpu"
        print("note: compiling the UNet with torch.compile (inductor); the first iteration waits for it"
              + (f". {COMPILE_ON_CPU}" if cpu else "."), file=sys.stderr)
        return torch.compile(module)


# measured (benchmarks/RESULTS.md, "torch.compile on a CPU"): the digits preset, 5 steps, batch 128, 2 cores
COMPILE_ON_CPU = ("On a CPU it gains little (2 cores, digits preset: 98 s to compile from an empty cache, 7 s once "
                  "cached, then 0.60-0.82 s per iteration against 0.70-0.75 s without); --compile off skips it")


def resolve_speed(precision: str, compile: str, device) -> Speed:
    """bf16 autocast, channels-last, fused Adam and torch.compile on CUDA; plain fp32 eager elsewhere.
    ``precision="fp32", compile="off"`` is the reference mode (the official code's way) everywhere."""
    cuda = torch.device(device).type == "cuda"
    fast = cuda and not (precision == "fp32" and compile == "off")
    return Speed(bf16=precision == "bf16" or (precision == "auto" and cuda), channels_last=fast, fused_adam=fast,
                 compile=compile == "on" or (compile == "auto" and cuda))


def saved_bytes(fn: Callable, exclude: tuple[torch.Tensor, ...] = ()):
    """(bytes of the tensors autograd saves for backward while ``fn()`` runs, its output): distinct
    storages only, and none of ``exclude``'s (the parameters, which are resident anyway)."""
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def chain_peak(steps: int, checkpointed: int, step: float, state: float, features: float) -> float:
    """Estimated activation peak of one iteration when the first ``checkpointed`` of ``steps`` sampler steps
    (from x_T) are recomputed in backward: at the end of the forward the features' graph, the plain
    steps' graphs and the checkpointed steps' inputs are held; in backward the plain steps are freed
    before the checkpointed ones are recomputed, one at a time."""
    plain = steps - checkpointed
    forward_end = features + plain * step + checkpointed * state
    return max(forward_end, step + checkpointed * state) if checkpointed else forward_end


def plan_checkpointing(steps: int, step: float, state: float, features: float, available: float) -> int:
    """The fewest checkpointed steps whose estimated peak (times MARGIN) fits in ``available`` bytes; all
    of them when none fits (the run may still fit: the estimate is conservative)."""
    for k in range(steps + 1):
        if MARGIN * chain_peak(steps, k, step, state, features) <= available:
            return k
    return steps


def available_bytes(device, memory_gib: float | None) -> float:
    """Bytes the run may still allocate: ``memory_gib`` minus what torch holds now, else 90% of the CUDA
    device's free memory, or half the CPU's available memory (unlimited where it cannot be read)."""
    device = torch.device(device)
    held = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if memory_gib is not None:
        return memory_gib * 2**30 - held
    if device.type == "cuda":
        return 0.9 * torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return 0.5 * int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return float("inf")


def plan_memory(net: Callable, extractor: nn.Module, timesteps, alphas_cumprod: torch.Tensor, shape, batch: int,
                device, speed: Speed, policy: str = "auto", memory_gib: float | None = None, sampler: str = "ddim",
                **sampler_kw) -> dict:
    """How many sampler steps to recompute in backward, as a dict (``policy``, ``steps``, ``checkpointed`` and
    for "auto" the measured and estimated GiB). "auto" measures the bytes autograd saves for one step and
    for the features of this process's ``batch`` (a stand-in batch from the "memory-plan" stream), and
    checkpoints the fewest steps whose estimated peak fits in the memory left (``memory_gib``, else what
    the device has free) after the gradients and Adam's two moments of ``net``'s trainable parameters."""
    n = len(timesteps)
    if policy != "auto":
        return {"policy": policy, "steps": n, "checkpointed": n if policy == "all" else 0}
    params = (*net.parameters(), *extractor.parameters())
    x = noise(stream_seeds("memory-plan", 0, range(batch)), shape, device=device).requires_grad_()
    with speed.autocast(device):
        step, x0 = saved_bytes(lambda: get_sampler(sampler)(net, x, timesteps[:1], alphas_cumprod, **sampler_kw),
                               exclude=params)
        feats, _ = saved_bytes(lambda: extractor(to_unit(x0.float())), exclude=params)
    # a checkpointed step keeps its inputs (a multistep solver's history too) and a stochastic step's noise
    state = x.nbytes * get_sampler(sampler).carried_tensors(sampler_kw.get("eta"))
    trainable = sum(p.numel() * p.element_size() for p in net.parameters() if p.requires_grad)
    available = available_bytes(device, memory_gib) - 3 * trainable  # grads + Adam's moments
    k = plan_checkpointing(n, step, state, feats, available)
    gib = 2.0**-30
    return {"policy": "auto", "steps": n, "checkpointed": k, "step_gib": step * gib, "features_gib": feats * gib,
            "available_gib": available * gib, "estimate_gib": chain_peak(n, k, step, state, feats) * gib}


def describe_plan(plan: dict) -> str:
    """One line for the log: how many steps an "auto" plan checkpoints, and why."""
    return (f"checkpointing {plan['checkpointed']} of {plan['steps']} sampler steps (estimated "
            f"{plan['estimate_gib']:.1f} GiB of activations, {plan['available_gib']:.1f} GiB available)")


def checkpoint_everything(plan: dict, where: str, error: Exception) -> None:
    """After running out of memory ``where``: switch an "auto" plan that still keeps some steps' graphs to
    checkpointing every step; refuse, naming the ways out, when there is nothing left to switch."""
    if plan["policy"] != "auto" or plan["checkpointed"] == plan["steps"]:
        raise MMDLibError(f"out of memory {where}, {plan['checkpointed']} of {plan['steps']} steps checkpointed; use "
                          f"--checkpointing all or a smaller --batch-size.") from error
    plan["checkpointed"] = plan["steps"]

