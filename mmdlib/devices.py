"""Where work runs: the device by name, and who we are among the processes of a multi-GPU launch.

Callers use ``devices.pick_device(...)`` through the module (not a copy of the name), so a test can
stand in for the hardware in one place.
"""
from __future__ import annotations

import os

import torch

from .errors import MMDLibError


def check_device_name(name: str) -> str:
    """``name`` if it spells a device ("auto", "cpu", "cuda", "cuda:N", ...), else a one-line error; says
    nothing about whether this machine has it (``pick_device`` does)."""
    if name != "auto":
        try:
            torch.device(name)
        except (RuntimeError, TypeError):
            raise MMDLibError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from None
    return name


def pick_device(name: str = "auto") -> torch.device:
    """``name`` as a torch device ("auto": CUDA when there is one, else the CPU); a device this machine does
    not have is refused with a message, not a traceback."""
    if check_device_name(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise MMDLibError(f"device {name!r} is not available here ({torch.cuda.device_count()} CUDA devices); use "
                          f"--device cpu or auto.")
    return device


class Processes:
    """Who we are among the processes ``accelerate launch`` (or torchrun, or notebook_launcher) started; one
    process when there is no launcher."""

    def __init__(self, device: str = "auto"):
        self.world, self.rank, self.state = int(os.environ.get("WORLD_SIZE", "1")), 0, None
        if self.world > 1:
            from accelerate import PartialState

            self.state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
            self.world, self.rank = self.state.num_processes, self.state.process_index

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        return self.state.device if self.state is not None else pick_device(name)

    def share(self, batch: int) -> tuple[int, int]:
        """(start, size) of this process's contiguous share of a global batch of ``batch``."""
        size = batch // self.world
        return self.rank * size, size

    def barrier(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def gather_with_grad(self, x: torch.Tensor) -> torch.Tensor:
        """All ranks' rows, in rank order; the gradient flows back to each rank's own rows."""
        if self.world == 1:
            return x
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(x))

    def average_gradients(self, params) -> None:
        """The loss is the same global MMD^2 on every rank, and all_gather's backward sums each rank's
        share, so averaging the per-rank gradients gives the exact gradient of the global loss."""
        if self.world == 1:
            return
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        grads = [p.grad for p in params if p.grad is not None]
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world
        for g, v in zip(grads, _unflatten_dense_tensors(flat, grads)):
            g.copy_(v)
