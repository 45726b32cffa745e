"""The paper's four base models (Sec. IV-A), where their authors publish them: ``PAPER_MODELS``, and
``paper_model(name)``, the converted folder of one, downloaded, checked and converted once, then cached."""
from __future__ import annotations

import dataclasses
import os
import tempfile
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .cache import cache_dir, cached, env_flag, file_hash
from .convert import convert
from .errors import MMDLibError


@dataclasses.dataclass(frozen=True)
class PaperCheckpoint:
    """One of the paper's base models (Sec. IV-A), where its authors publish it."""

    url: str
    file: str  # the name it is stored under ($MMDLIB_CACHE/downloads/<file>)
    format: str  # convert.FORMATS
    size: int  # image size
    md5: str | None  # published with it (None: its authors publish no hash; the SHA-256 taken is recorded)
    ema: bool  # the EMA weights
    source: str  # who published it, for the reference table
    dropout: float  # its training dropout (not in the weights)
    arch: dict  # its authors' architecture, as convert.unet_for takes it (the converter reads it from the weights)
    page: str = ""  # where a person downloads it by hand, when that differs from url


_DDPM_PORT = "https://heibox.uni-heidelberg.de/f/{}/?dl=1"  # the DDIM code base's table (functions/ckpt_util.py)
PAPER_MODELS = {
    "cifar10": PaperCheckpoint(
        _DDPM_PORT.format("2e4f01e2d9ee49bab1d5"), "ema_cifar10-model-790000.ckpt", "ddpm", 32,
        "1fa350b952534ae442b1d5235cce5cd3", True, "DDPM (Ho et al. 2020), PyTorch port, as the DDIM code downloads it",
        0.1, dict(widths=(128, 256, 256, 256), blocks=2, attn=(False, True, False, False))),
    "church": PaperCheckpoint(
        _DDPM_PORT.format("44ccb50ef3c6436db52e"), "ema_lsun_church-model-4432000.ckpt", "ddpm", 256,
        "fdc68a23938c2397caba4a260bc2445f", True, "DDPM (Ho et al. 2020), PyTorch port, as the DDIM code downloads it",
        0.0, dict(widths=(128, 128, 256, 256, 512, 512), blocks=2, attn=(False, False, False, False, True, False))),
    "celeba64": PaperCheckpoint(
        "https://drive.usercontent.google.com/download?id=1R_H-fJYXSH79wfSKs9D-fuKQVan5L-GR&export=download&confirm=t",
        "ddim_celeba64-ckpt.pth", "ddpm", 64, None, True, "DDIM (Song et al. 2021), the authors' CelebA model", 0.1,
        dict(widths=(128, 256, 256, 256, 512), blocks=2, attn=(False, False, True, False, False)), page="https://drive.google.com/file/d/1R_H-fJYXSH79wfSKs9D-fuKQVan5L-GR/view"),
    "imagenet64": PaperCheckpoint(
        "https://openaipublic.blob.core.windows.net/diffusion/march-2021/imagenet64_uncond_100M_1500K.pt",
        "imagenet64_uncond_100M_1500K.pt", "improved-diffusion", 64, None, True,
        "improved-diffusion (Nichol & Dhariwal 2021), L_hybrid, 1.5 M iterations", 0.0,
        dict(widths=(128, 256, 384, 512), blocks=3, attn=(False, False, True, True), heads=4)),
}


def download(url: str, dest: Path, progress: bool = True) -> Path:
    """``url`` to ``dest`` through a temporary file beside it (renamed when complete), with a progress bar."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}-", dir=dest.parent)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "mmdlib"}), timeout=60) as r, \
                os.fdopen(fd, "wb") as f:
            if r.headers.get_content_type() == "text/html":
                raise OSError("the server sent a web page, not the file (a quota or confirmation page)")
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar:
                for block in iter(lambda: r.read(1 << 20), b""):
                    f.write(block)
                    bar.update(len(block))
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def paper_model(name: str, progress: bool = True) -> Path:
    """The converted folder of the paper's model ``name`` (``PAPER_MODELS``): its file is taken from
    $MMDLIB_CACHE/downloads/ or downloaded there from its authors' URL, checked against the published MD5,
    converted, and cached (keyed by that MD5, or by the URL where none is published)."""
    ck = PAPER_MODELS[name]
    local = cache_dir() / "downloads" / ck.file

    def build(tmp: Path) -> None:
        fresh = not local.is_file()
        if fresh:
            by_hand = ck.page or ck.url
            how = (f"Download {by_hand} on a connected machine and put it at {local}, or pass the file itself "
                   f"(--model /path/to/{ck.file}).")
            if env_flag("HF_HUB_OFFLINE") or env_flag("MMDLIB_OFFLINE"):
                raise MMDLibError(f"model {name!r} is not downloaded yet and this process is offline "
                                  f"(HF_HUB_OFFLINE/MMDLIB_OFFLINE). {how}")
            print(f"downloading {name!r} ({ck.source}) from {ck.url}")
            try:
                download(ck.url, local, progress)
            except OSError as e:
                raise MMDLibError(f"could not download model {name!r} from {ck.url} ({e}). {how}") from None
        digest = file_hash(local, "md5")
        if ck.md5 and digest != ck.md5:
            if fresh:  # ours: not kept
                local.unlink()
                raise MMDLibError(f"the download of {name!r} from {ck.url} has MD5 {digest}, not the published "
                                  f"{ck.md5}: damaged in transit or changed at the source (deleted; try again).")
            raise MMDLibError(f"{local} has MD5 {digest}, not the published {ck.md5} of {name!r}: a damaged or "
                              f"different file. Delete it to download it again.")
        if not ck.md5:
            print(f"{name!r}: its authors publish no hash; the file's SHA-256 is {file_hash(local)} (recorded).")
        convert(local, tmp / "model", ck.format, ck.size, dropout=ck.dropout, verbose=progress)

    key = {"paper_model": name, "md5": ck.md5} if ck.md5 else {"paper_model": name, "url": ck.url}
    return cached("converted", {**key, "format": ck.format, "size": ck.size, "dropout": ck.dropout}, build) / "model"
