"""What mmdlib trains itself for the embedded digits default: the base model, a small UNet2DModel trained with
DDPM's loss (paper eq. 5); and the command that regenerates what ships (the digit classifiers are
``mmdlib.classifiers``).

The base model's default recipe ships with the package (``mmdlib/weights/digits``, checked against its
SHA-256 on load; ``python -m mmdlib.pretrain --out DIR`` regenerates it from the recipe and its seed,
``--classifiers DIR`` the two digit classifiers). Any other recipe, and the tiny smoke recipe, is trained on
first use, with an EMA of the weights, and cached under ``$MMDLIB_CACHE/base-model/<config hash>`` as a
diffusers folder.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import devices
from . import classifiers as _classifiers
from .classifiers import CLASSIFIERS, DIGITS_NETS, write_classifier
from .compat import moved
from .cache import cached, file_hash, smoke_test, trained_on
from .data import digits_dataset
from .errors import MMDLibError
from .schedules import alphas_cumprod, linear_betas


@dataclasses.dataclass(frozen=True)
class DigitsModelConfig:
    """Architecture and training recipe of the embedded base model (everything that changes its weights)."""

    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention: bool = True
    T: int = 1000
    iterations: int = 10000
    batch_size: int = 128
    lr: float = 5e-4
    lr_schedule: str = "constant"  # after the warm-up: "cosine" decay to 0 at `iterations`, or "constant"
    warmup: int = 200
    ema_decay: float = 0.9995
    grad_clip: float = 1.0
    seed: int = 0
    version: int = 3


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


def ddpm_loss(model, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
              alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """DDPM's simple loss (eq. 5): mean |eps - eps_theta(sqrt(a_t) x_0 + sqrt(1 - a_t) eps, t)|^2, a_t =
    alpha_bar at each sample's t; ``model`` is a diffusers UNet or any (x, t) -> eps callable."""
    a = alphas_cumprod[t].view(-1, *[1] * (x0.dim() - 1))
    out = model(a.sqrt() * x0 + (1 - a).sqrt() * eps, t)
    return (getattr(out, "sample", out) - eps).square().mean()


def train_ddpm(unet, images: torch.Tensor, cfg: DigitsModelConfig, progress: bool = True, callback=None,
               device: str | torch.device = "auto"):
    """DDPM training (eq. 5): t ~ U{0..T-1}, minimise |eps - eps_theta(sqrt(a_t) x_0 + sqrt(1 - a_t) eps, t)|^2.

    ``images`` are in [0, 1]; returns the EMA copy of the weights, on the CPU. Trains on ``device`` ("auto":
    CUDA when there is one); batches and noise are drawn on the CPU and moved, so the CPU's numbers do not
    depend on it. ``callback(iteration, ema)`` runs after every iteration, ``ema`` on ``device`` (with a
    constant learning rate, the EMA after k iterations is exactly the model a k-iteration run returns).
    """
    device = devices.pick_device(str(device))
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    ac = alphas_cumprod(linear_betas(cfg.T)).float().to(device)
    x_all = (images * 2 - 1).to(device)
    unet.to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.Adam(unet.parameters(), lr=cfg.lr)
    decay = {"cosine": lambda i: 0.5 * (1 + math.cos(math.pi * i / cfg.iterations)), "constant": lambda i: 1.0}
    if cfg.lr_schedule not in decay:
        raise ValueError(f"unknown lr_schedule {cfg.lr_schedule!r}; known: {', '.join(decay)}.")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min(1.0, (i + 1) / cfg.warmup) * decay[cfg.lr_schedule](i))
    unet.train()
    bar = tqdm(range(cfg.iterations), desc="training the digits base model", disable=not progress)
    for it in bar:
        x0 = x_all[torch.randint(len(x_all), (cfg.batch_size,), generator=g).to(device)]
        t = torch.randint(cfg.T, (cfg.batch_size,), generator=g).to(device)
        eps = torch.randn(x0.shape, generator=g).to(device)
        loss = ddpm_loss(unet, x0, t, eps, ac)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters()):
                pe.lerp_(p, 1 - cfg.ema_decay)
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        if callback is not None:
            callback(it + 1, ema)
    return ema.eval().cpu()


# The default recipe's weights, shipped in the package (`python -m mmdlib.pretrain --out SHIPPED` regenerates them)
SHIPPED = Path(__file__).parent / "weights" / "digits"
SHIPPED_SHA256 = "5684faae588b0f2f39e4467014d5885c65fa3363ce5bd982cb2cdb43d19b55cc"

# MMDLIB_SMOKE=1: a base model that trains in seconds (for tests of the notebooks; its samples are noise)
SMOKE_CONFIG = DigitsModelConfig(block_out_channels=(8, 16), iterations=20, batch_size=16, warmup=5)


def default_config() -> DigitsModelConfig:
    """The embedded base model's recipe (the tiny smoke recipe under MMDLIB_SMOKE=1)."""
    return SMOKE_CONFIG if smoke_test() else DigitsModelConfig()


def write_model(cfg: DigitsModelConfig, folder: Path, progress: bool = True,
                device: str | torch.device = "auto") -> Path:
    """Train the recipe ``cfg`` on ``device`` (seeded: the config and the device class determine the weights)
    and write a diffusers folder (``unet/``, ``scheduler/``) and ``recipe.json`` to ``folder``."""
    from diffusers import DDPMScheduler

    folder = Path(folder)
    images = torch.stack([x for x, _ in digits_dataset("all")])
    torch.manual_seed(cfg.seed)  # the initial weights too
    unet = train_ddpm(make_unet(cfg), images, cfg, progress, device=device)
    unet.save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=cfg.T, beta_schedule="linear", clip_sample=False).save_pretrained(
        folder / "scheduler")
    (folder / "recipe.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    return folder


def shipped_model_path() -> Path | None:
    """The package's copy of the default recipe's weights, verified by hash; None if the package has none."""
    weights = SHIPPED / "unet" / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        return None
    if file_hash(weights) != SHIPPED_SHA256:
        raise MMDLibError(f"the shipped digits base model {weights} does not match its hash (a damaged "
                          f"installation?); reinstall mmdlib, or regenerate it with `python -m mmdlib.pretrain "
                          f"--out {SHIPPED}`.")
    return SHIPPED


def digits_model_path(cfg: DigitsModelConfig | None = None, progress: bool = True) -> Path:
    """The diffusers folder of the digits base model: the shipped weights for the default recipe, else
    (another recipe, the smoke recipe, or a package without the weights) trained on first use, on CUDA when
    there is one, and cached under a key that names the device class."""
    cfg = cfg or default_config()
    if cfg == DigitsModelConfig() and (shipped := shipped_model_path()) is not None:
        return shipped
    device = devices.pick_device()
    return cached("base-model", {"kind": "digits-ddpm", **dataclasses.asdict(cfg), **trained_on(device)},
                  lambda tmp: write_model(cfg, tmp, progress, device))


def main(argv: list[str] | None = None) -> None:
    """``python -m mmdlib.pretrain [--out DIR [--seed S]] [--classifiers DIR]``: regenerate what ships."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m mmdlib.pretrain", description="Train the digits base model's "
                                "default recipe (a diffusers folder) and/or the digit classifiers (safetensors).")
    p.add_argument("--out", default=None, help=f"output folder of the base model (the package ships {SHIPPED})")
    p.add_argument("--seed", type=int, default=None, help="seed of the weights and the batches (default: the "
                   "recipe's, which made the shipped weights)")
    p.add_argument("--classifiers", default=None, help=f"output folder of the classifiers (shipped: {CLASSIFIERS})")
    a = p.parse_args(argv)
    if a.out is None and a.classifiers is None:
        p.error("give --out (the base model), --classifiers (the digit classifiers), or both")
    for name in DIGITS_NETS if a.classifiers else ():
        path = write_classifier(name, Path(a.classifiers) / f"{name}.safetensors")
        print(f"{path}: sha256 {file_hash(path)}")
    if a.out is not None:
        cfg = DigitsModelConfig()
        folder = write_model(cfg if a.seed is None else dataclasses.replace(cfg, seed=a.seed), Path(a.out))
        print(f"{folder}: sha256 {file_hash(folder / 'unet' / 'diffusion_pytorch_model.safetensors')}")


__getattr__ = moved(__name__, {n: (getattr(_classifiers, n), f"mmdlib.classifiers.{n}") for n in (
    "DigitsNetConfig", "DigitsNet", "train_digits_net", "digits_classifier")})

if __name__ == "__main__":
    main()

