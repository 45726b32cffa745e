"""What mmdlib trains itself for the embedded digits default: the base model, a small UNet2DModel trained with
DDPM's loss (paper eq. 5), and the two digit classifiers whose features are the ``digits-a``/``digits-b`` spaces.

The base model's default recipe ships with the package (``mmdlib/weights/digits``, checked against its
SHA-256 on load; ``python -m mmdlib.pretrain --out DIR`` regenerates it from the recipe and its seed).
Any other recipe, and the tiny smoke recipe, is trained on first use, with an EMA of the weights, and
cached under ``$MMDLIB_CACHE/base-model/<config hash>`` as a diffusers folder. The two classifiers ship too
(``mmdlib/weights/classifiers``, hash-checked; ``python -m mmdlib.pretrain --classifiers DIR`` regenerates them
bit for bit, training on the CPU under one thread, so that no machine's thread count changes a score); the
smoke recipe's are trained on first use and cached under ``$MMDLIB_CACHE/digits-net/<config hash>``.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import devices
from .cores import threads
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


@dataclasses.dataclass(frozen=True)
class DigitsNetConfig:
    """A small CNN digit classifier. Its features concatenate the penultimate layer (shape and class) with
    the global-average-pooled activations of every conv block (strokes, texture, sharpness), each
    dimension standardised by its mean and spread over the train split, so that no group drowns the
    others: a classifier's last layer alone collapses to class clusters and is blind to blur."""

    widths: tuple[int, ...]
    hidden: int
    kernel: int
    seed: int
    epochs: int = 40
    lr: float = 2e-3
    version: int = 2


DIGITS_NETS = {
    "digits-a": DigitsNetConfig(widths=(32, 64), hidden=64, kernel=3, seed=1),
    "digits-b": DigitsNetConfig(widths=(16, 32, 64), hidden=128, kernel=3, seed=2),
}


class DigitsNet(nn.Module):
    def __init__(self, cfg: DigitsNetConfig):
        super().__init__()
        convs, c = [], 1
        for w in cfg.widths:
            convs.append(nn.Sequential(nn.Conv2d(c, w, cfg.kernel, padding=cfg.kernel // 2), nn.BatchNorm2d(w),
                                       nn.ReLU()))
            c = w
        self.convs = nn.ModuleList(convs)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(c * 4 * 4, cfg.hidden), nn.Tanh())
        self.head = nn.Linear(cfg.hidden, 10)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pooled = []
        for i, conv in enumerate(self.convs):
            x = conv(x)
            pooled.append(x.mean((2, 3)))
            if i == 0:
                x = F.max_pool2d(x, 2)  # 8x8 -> 4x4 after the first block
        h = self.fc(x)
        return h, pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x)[0])

    def raw_features(self, x: torch.Tensor) -> torch.Tensor:
        h, pooled = self.embed(x)
        return torch.cat([h, *pooled], 1)


def _shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translations by up to one pixel (zero padding): cheap augmentation for 8x8 digits."""
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
    return torch.roll(F.pad(x, (1, 1, 1, 1)), (dy, dx), (2, 3))[..., 1:-1, 1:-1]


def train_digits_net(cfg: DigitsNetConfig, device: str | torch.device = "auto"
                     ) -> tuple[DigitsNet, float, torch.Tensor, torch.Tensor]:
    """Train on the digits train split on ``device`` ("auto": CUDA when there is one; batches and shifts are
    drawn on the CPU, so the CPU's numbers do not depend on it). Returns, on the CPU, the net, its test-split
    accuracy, and the feature mean and spread over the train split (spreads floored at a tenth of their
    median, so dead units are not blown up)."""
    device = devices.pick_device(str(device))
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    (xtr, ytr), (xte, yte) = [(d.images.float().to(device), d.labels.to(device))
                              for d in (digits_dataset("train"), digits_dataset("test"))]
    net = DigitsNet(cfg).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs)
    for _ in range(cfg.epochs):
        net.train()
        for idx in torch.randperm(len(xtr), generator=g).split(64):
            idx = idx.to(device)
            loss = F.cross_entropy(net(_shift(xtr[idx], g)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    net.eval()
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).float().mean().item()
        f = net.raw_features(xtr)
    sd = f.std(0)
    return net.cpu(), acc, f.mean(0).cpu(), sd.clamp_min(0.1 * sd.median()).cpu()


# The classifiers' weights, shipped like the base model (`--classifiers DIR` regenerates them bit for bit)
CLASSIFIERS = Path(__file__).parent / "weights" / "classifiers"
CLASSIFIER_SHA256 = {"digits-a": "0672c4dd1bb98683922dedc1efcedf5c4429c22b5b261de6a248444cc9ffc734",
                     "digits-b": "9d328d2206e88951114e9e9c81f371190bf1f1c83d3f6c3b57747474d69df224"}


def write_classifier(name: str, path: Path) -> Path:
    """Train the classifier ``name`` on the CPU under one thread (no machine's thread count changes it) and write
    it to ``path``: the net's state as ``net.*``, ``mean``, ``std``; test accuracy and recipe in the metadata."""
    from safetensors.torch import save_file

    cfg = DIGITS_NETS[name]
    with threads(1):
        net, acc, mean, std = train_digits_net(cfg, "cpu")
    tensors = {**{f"net.{k}": v.contiguous() for k, v in net.state_dict().items()}, "mean": mean, "std": std}
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"test_accuracy": acc, "recipe": dataclasses.asdict(cfg)}  # one entry: several come in no fixed order
    save_file(tensors, str(path), metadata={"mmdlib": json.dumps(info, sort_keys=True)})
    return path


def _shipped_classifier(name: str) -> tuple[dict, float] | None:
    """The package's copy of classifier ``name`` (its tensors, test accuracy), hash-checked; None if it has none."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = CLASSIFIERS / f"{name}.safetensors"
    if not path.is_file():
        return None
    if file_hash(path) != CLASSIFIER_SHA256[name]:
        raise MMDLibError(f"the shipped digit classifier {path} does not match its hash (a damaged installation?); "
                          f"reinstall mmdlib, or regenerate it with `python -m mmdlib.pretrain --classifiers "
                          f"{CLASSIFIERS}`.")
    with safe_open(str(path), "pt") as f:
        acc = float(json.loads(f.metadata()["mmdlib"])["test_accuracy"])
    return load_file(str(path)), acc


def digits_classifier(name: str) -> tuple[DigitsNet, float, torch.Tensor, torch.Tensor, DigitsNetConfig]:
    """(net, test accuracy, feature mean, feature spread, recipe) of the digit classifier ``name``
    (``DIGITS_NETS``): the package's shipped weights (``CLASSIFIERS``, checked against their SHA-256), else
    (one epoch under MMDLIB_SMOKE=1, or a package without them) trained on first use on the CPU under one
    thread, and cached."""
    if name not in DIGITS_NETS:
        raise MMDLibError(f"unknown digit classifier {name!r}; known: {', '.join(DIGITS_NETS)}.")
    cfg = DIGITS_NETS[name]
    net = DigitsNet(cfg)
    shipped = None if smoke_test() else _shipped_classifier(name)
    if shipped is not None:
        tensors, acc = shipped
        net.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items() if k.startswith("net.")})
        return net, acc, tensors["mean"], tensors["std"], cfg
    if smoke_test():  # MMDLIB_SMOKE=1: one epoch, for tests of the notebooks
        cfg = dataclasses.replace(cfg, epochs=1)

    def build(tmp: Path) -> None:
        with threads(1):
            trained, acc, mean, std = train_digits_net(cfg, "cpu")
        torch.save({"state_dict": trained.state_dict(), "test_accuracy": acc, "mean": mean, "std": std},
                   tmp / "net.pt")

    folder = cached("digits-net", {"name": name, **dataclasses.asdict(cfg), "threads": 1}, build)
    ckpt = torch.load(folder / "net.pt", weights_only=True)
    net.load_state_dict(ckpt["state_dict"])
    return net, ckpt["test_accuracy"], ckpt["mean"], ckpt["std"], cfg


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


if __name__ == "__main__":
    main()
