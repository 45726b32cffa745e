"""The fast path's switches and the gradient-checkpointing plan (no new math: same loss, same gradients).

``Speed`` says how the networks run on a device (bf16 autocast, channels-last, fused Adam, torch.compile);
``plan_checkpointing`` picks how many sampler steps to recompute in the backward pass from the budget
and the memory the run may use, estimated from the bytes autograd saves for one step.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

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

    def compiled(self, module: nn.Module) -> Callable:
        """``module`` under torch.compile where it is on (it shares the module's parameters)."""
        return torch.compile(module) if self.compile else module


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
