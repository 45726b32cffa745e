"""What a finetuning run trains with and how it takes one step: ``make_parts`` (its own copy of the weights, the
extractor, Adam for the weights and, when the timesteps are learnt, for them, and the objective, placed as the
speed settings say), ``restore`` and ``state`` (a checkpoint's contents), and ``adam_step`` (backward,
clipping, the optimisers' steps, refusing one that blows up)."""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Callable, NamedTuple

import torch

from .config import FinetuneConfig
from .devices import Processes
from .errors import MMDLibError
from .features import FeatureExtractor, get_feature_extractor
from .loss import MMDDDMLoss
from .models import LoadedModel
from .sampling import get_sampler
from .speed import Speed, resolve_speed
from .streams import stream_seeds
from .timesteps import LearnedTimesteps


class Parts(NamedTuple):
    """What a run trains with, on its device: the speed settings, its own copy of the weights (``unet``; ``net``
    is what the chain calls, compiled or not, sharing its parameters), the model around that copy, the
    extractor, Adam for the weights (None when they are frozen), the learnt timesteps and their Adam (None
    when the timesteps are fixed), and the objective."""

    speed: Speed
    unet: torch.nn.Module
    net: Callable
    model: LoadedModel
    extractor: FeatureExtractor
    opt: torch.optim.Adam | None
    schedule: LearnedTimesteps | None
    opt_t: torch.optim.Adam | None
    objective: MMDDDMLoss


def make_parts(model: LoadedModel, cfg: FinetuneConfig, device: torch.device, timesteps: list[int],
               extractor: FeatureExtractor | None = None, gather: Callable | None = None) -> Parts:
    """``Parts`` for ``cfg`` on ``device``: a copy of ``model``'s weights (in eval mode; with ``cfg.dropout``
    every dropout layer at that p for the train-mode steps), placed and compiled as the speed settings say;
    with ``cfg.learn_timesteps``, a ``LearnedTimesteps`` starting at ``timesteps``."""
    speed = resolve_speed(cfg.precision, cfg.compile, device)
    unet = speed.place(copy.deepcopy(model.unet), device).eval().requires_grad_(not cfg.freeze_weights)
    if cfg.dropout is not None:
        for m in unet.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = cfg.dropout
    extractor = speed.place(extractor or get_feature_extractor(cfg.features), device)
    opt = None if cfg.freeze_weights else torch.optim.Adam(
        unet.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
        **({"fused": True} if speed.fused_adam else {}))
    schedule = LearnedTimesteps(cfg.budget, model.T, timesteps).to(device) if cfg.learn_timesteps else None
    opt_t = torch.optim.Adam(schedule.parameters(), lr=cfg.timestep_lr) if schedule is not None else None
    objective = MMDDDMLoss(extractor, shape=model.sample_shape, timesteps=timesteps,
                           alphas_cumprod=model.alphas_cumprod, sampler=cfg.sampler, kernel=cfg.kernel, device=device,
                           autocast=lambda: speed.autocast(device), gather=gather,
                           **get_sampler(cfg.sampler).options(cfg.eta))
    return Parts(speed, unet, speed.compiled(unet, device), dataclasses.replace(model, unet=unet), extractor, opt,
                 schedule, opt_t, objective)


def state(parts: Parts) -> dict:
    """What a checkpoint holds besides the iteration: the weights and the optimisers' states, and the learnt
    timesteps' module (logits and starting schedule) when there is one."""
    out = {"unet": parts.unet.state_dict(), "optimizer": parts.opt.state_dict() if parts.opt else {}}
    if parts.schedule is not None:
        out |= {"schedule": parts.schedule.state_dict(), "schedule_optimizer": parts.opt_t.state_dict()}
    return out


def restore(checkpoint: dict | None, parts: Parts, lr: float) -> int:
    """Load a run's checkpoint (``state``'s contents, onto wherever the parameters are), the weights' Adam at
    learning rate ``lr`` (a resume may change it; run.json records the change); returns its iteration (0:
    none)."""
    if checkpoint is None:
        return 0
    try:
        parts.unet.load_state_dict(checkpoint["unet"])
        if parts.opt is not None:
            parts.opt.load_state_dict(checkpoint["optimizer"])
        if parts.schedule is not None:
            parts.schedule.load_state_dict(checkpoint["schedule"])
            parts.opt_t.load_state_dict(checkpoint["schedule_optimizer"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:  # shapes, names, an optimiser of other parameters
        detail = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
        raise MMDLibError(f"the run's checkpoint does not fit this model and its settings ({detail[:300]}); it was "
                          f"written for another model, or replaced. Restore it, or start again with --overwrite "
                          f"(or choose another --out).") from None
    for group in parts.opt.param_groups if parts.opt is not None else ():
        group["lr"] = lr
    return checkpoint["iteration"]


def release(parts: Parts, device: torch.device) -> None:
    """Drop a failed iteration's gradients (and, on CUDA, the cached memory they held)."""
    for opt in (parts.opt, parts.opt_t):
        if opt is not None:
            opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()


def schedule_row(parts: Parts) -> dict:
    """The log's column for learnt timesteps (none for fixed ones): where the chain steps now."""
    if parts.schedule is None:
        return {}
    return {"timesteps": " ".join(f"{t:.4f}" for t in parts.schedule().tolist())}


def train_seeds(cfg: FinetuneConfig, it: int, procs: Processes) -> list[int]:
    """Per-sample seeds of this process's contiguous share of iteration ``it``'s global batch: draws
    it * batch + i of the run's "train" stream."""
    start, size = procs.share(cfg.batch_size)
    return stream_seeds("train", cfg.seed, range(it * cfg.batch_size + start, it * cfg.batch_size + start + size))


class Unstable(Exception):
    """An optimiser step that would leave the weights non-finite or blown up (the message says which);
    ``before_step``: found before any weight moved (a non-finite loss or gradient)."""

    def __init__(self, message: str, before_step: bool = False):
        super().__init__(message)
        self.before_step = before_step


def adam_step(loss: torch.Tensor, opts: list, weights: list, grad_clip: float, norm: float, extra: list = (),
              average: Callable = lambda params: None) -> tuple[float, float]:
    """Backward, gradient averaging across processes, the weights' gradient clipped at ``grad_clip`` and each
    optimiser's step (``opts``: the weights' Adam, then the learnt timesteps', whose parameters are ``extra``),
    refusing (``Unstable``) a non-finite loss or gradient, an overflowing step, or weights whose norm (``norm``
    before) the step doubles. Returns (the weights' gradient norm, or the timesteps' when the weights are
    frozen; the weights' norm after)."""
    if not torch.isfinite(loss):
        raise Unstable(f"the loss became {loss.item()}", before_step=True)
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    average([*weights, *extra])
    grads = [p.grad for p in extra if p.grad is not None]
    gnorm = torch.nn.utils.clip_grad_norm_(weights, grad_clip) if weights else torch.nn.utils.get_total_norm(grads)
    if not torch.isfinite(gnorm) or not all(torch.isfinite(g).all() for g in grads):
        raise Unstable(f"the gradient norm became {gnorm.item()}" if not torch.isfinite(gnorm) else
                       "the timesteps' gradient stopped being finite", before_step=True)
    try:
        for opt in opts:
            opt.step()
    except RuntimeError as e:  # Adam's step size lr / (1 - beta1^t) overflowing float32
        if "overflow" not in str(e):
            raise
        raise Unstable("Adam's step overflowed") from None
    if not weights:
        return gnorm.item(), norm
    after = torch.nn.utils.get_total_norm(weights).item()
    if not math.isfinite(after) or after > 2 * norm:  # no sane step doubles the weights' norm
        raise Unstable(f"the weights' norm went from {norm:.4g} to {after:.4g} in one Adam step")
    return gnorm.item(), after
