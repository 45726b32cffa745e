"""The embedded base model: a small UNet2DModel trained with DDPM's loss (paper eq. 5) on the digits.

Trained on first use (a few minutes on two CPU cores), with an EMA of the weights, and cached under
``$MMDLIB_CACHE/base-model/<config hash>`` as a diffusers folder, so every later call loads it.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .cache import cached, smoke_test
from .data import digits_dataset
from .schedules import alphas_cumprod, linear_betas


@dataclasses.dataclass(frozen=True)
class DigitsModelConfig:
    """Architecture and training recipe of the embedded base model (everything that changes its weights)."""

    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention: bool = True
    T: int = 1000
    iterations: int = 3000
    batch_size: int = 128
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    version: int = 2


def make_unet(cfg: DigitsModelConfig, channels: int = 1, size: int = 8):
    """A UNet2DModel for 8x8 grayscale digits, with self-attention at the lower resolutions."""
    from diffusers import UNet2DModel

    n = len(cfg.block_out_channels)
    down, up = "AttnDownBlock2D" if cfg.attention else "DownBlock2D", "AttnUpBlock2D" if cfg.attention else "UpBlock2D"
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=cfg.layers_per_block,
        block_out_channels=cfg.block_out_channels, norm_num_groups=8,
        attention_head_dim=min(32, cfg.block_out_channels[-1]),
        down_block_types=("DownBlock2D",) + (down,) * (n - 1), up_block_types=(up,) * (n - 1) + ("UpBlock2D",),
    )


def train_ddpm(unet, images: torch.Tensor, cfg: DigitsModelConfig, progress: bool = True):
    """DDPM training (eq. 5): t ~ U{0..T-1}, minimise |eps - eps_theta(sqrt(a_t) x_0 + sqrt(1 - a_t) eps, t)|^2.

    ``images`` are in [0, 1]; returns the EMA copy of the weights.
    """
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    ac = alphas_cumprod(linear_betas(cfg.T)).float()
    x_all = images * 2 - 1
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.Adam(unet.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * i / cfg.iterations)))
    unet.train()
    bar = tqdm(range(cfg.iterations), desc="training the digits base model", disable=not progress)
    for _ in bar:
        x0 = x_all[torch.randint(len(x_all), (cfg.batch_size,), generator=g)]
        t = torch.randint(cfg.T, (cfg.batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = ac[t].view(-1, 1, 1, 1)
        loss = (unet(a.sqrt() * x0 + (1 - a).sqrt() * eps, t).sample - eps).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - cfg.ema_decay)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    return ema.eval()


# MMDLIB_SMOKE=1: a base model that trains in seconds (for tests of the notebooks; its samples are noise)
SMOKE_CONFIG = DigitsModelConfig(block_out_channels=(8, 16), iterations=20, batch_size=16, warmup=5)


def default_config() -> DigitsModelConfig:
    """The embedded base model's recipe (the tiny smoke recipe under MMDLIB_SMOKE=1)."""
    return SMOKE_CONFIG if smoke_test() else DigitsModelConfig()


def digits_model_path(cfg: DigitsModelConfig | None = None, progress: bool = True) -> Path:
    """The cached diffusers folder of the digits base model, trained now if missing."""
    cfg = cfg or default_config()

    def build(tmp: Path) -> None:
        from diffusers import DDPMScheduler

        images = torch.stack([x for x, _ in digits_dataset("all")])
        torch.manual_seed(cfg.seed)  # the initial weights too: the config alone determines the model
        unet = train_ddpm(make_unet(cfg), images, cfg, progress)
        unet.save_pretrained(tmp / "unet")
        DDPMScheduler(num_train_timesteps=cfg.T, beta_schedule="linear", clip_sample=False).save_pretrained(
            tmp / "scheduler")

    return cached("base-model", {"kind": "digits-ddpm", **dataclasses.asdict(cfg)}, build)
