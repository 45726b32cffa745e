"""The two digit classifiers whose features are the ``digits-a``/``digits-b`` spaces: their recipes, the
network, its training, and the shipped weights (``mmdlib/weights/classifiers``, hash-checked on load;
``python -m mmdlib.pretrain --classifiers DIR`` regenerates them bit for bit, training on the CPU under one
thread, so that no machine's thread count changes a score). The smoke recipe's are trained on first use and
cached under ``$MMDLIB_CACHE/digits-net/<config hash>``.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import devices
from .cache import cached, file_hash, smoke_test
from .cores import threads
from .data import digits_dataset
from .errors import MMDLibError


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
