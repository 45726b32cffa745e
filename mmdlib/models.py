"""Pretrained diffusion models by short name, hub id, local folder or checkpoint file (``load_model``)."""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Sequence

import torch

from .cache import check_finite, weights_hash
from .convert import converted
from .errors import MMDLibError
from .hub import offline_reason
from . import export
from .compat import moved
from .export import META_FILE
from .paper_models import PAPER_MODELS, paper_model
from .pretrain import digits_model_path
from .schedules import alphas_cumprod as _alphas_cumprod
from .schedules import linear_betas

MODELS = ["digits", *PAPER_MODELS]


@dataclasses.dataclass
class LoadedModel:
    """A denoiser eps_theta(x, t) with its training noise schedule."""

    unet: torch.nn.Module
    alphas_cumprod: torch.Tensor  # float64 [T]
    source: str
    meta: dict = dataclasses.field(default_factory=dict)  # what save_pipeline recorded (budget, timesteps, ...)

    @property
    def T(self) -> int:
        return len(self.alphas_cumprod)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c, s = self.unet.config.in_channels, self.unet.config.sample_size
        return (c, *(s if isinstance(s, (tuple, list)) else (s, s)))

    def describe(self) -> str:
        """Where it came from, its size and what it generates, in one line."""
        return (f"{self.source}  ({sum(p.numel() for p in self.unet.parameters()) / 1e6:.2f} M parameters, T = "
                f"{self.T}, samples {self.sample_shape})")

    def identity(self) -> dict:
        """What determines this model's outputs, for cache keys: a hash of its weights (as they are
        now), its architecture and its noise schedule; never its path or name."""
        config = dict(getattr(self.unet, "config", {}) or {})
        return {"weights": weights_hash(self.unet), "class": type(self.unet).__name__,
                "config": {k: v for k, v in config.items() if not k.startswith("_")},
                "alphas_cumprod": weights_hash({"ac": self.alphas_cumprod.double()})}


def _schedule_from_config(config: dict) -> torch.Tensor:
    """alphas_cumprod in float64 from a DDPM/DDIM scheduler config (legacy 'timesteps' key included)."""
    T = int(config.get("num_train_timesteps", config.get("timesteps", 1000)))
    kind = config.get("beta_schedule", "linear")
    if config.get("trained_betas") is not None:
        return _alphas_cumprod(torch.tensor(config["trained_betas"], dtype=torch.float64))
    if kind == "linear":
        return _alphas_cumprod(linear_betas(T, config.get("beta_start", 1e-4), config.get("beta_end", 0.02)))
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule=kind, beta_start=config.get("beta_start", 1e-4),
                          beta_end=config.get("beta_end", 0.02))
    return _alphas_cumprod(sched.betas.double())


def _read_json(repo: str, names: Sequence[str], local: bool, cached_only: bool = False) -> dict | None:
    for name in names:
        if local:
            if (Path(repo) / name).is_file():
                return json.loads((Path(repo) / name).read_text())
            continue
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError

        try:
            return json.loads(Path(hf_hub_download(repo, name, local_files_only=cached_only)).read_text())
        except EntryNotFoundError:
            continue
    return None


def _not_a_model_folder(folder: Path) -> str | None:
    """What to say of a folder that holds no model but points to one (a finetuning run's or the demo's)."""
    if (folder / "config.json").is_file() or (folder / "unet").is_dir() or not (folder / "finetuned").is_dir():
        return None
    return (f"{str(folder)!r} is a finetuning run's folder, not a model; the model it made is "
            f"{str(folder / 'finetuned')!r}: pass that instead.")


def load_model(name_or_path: str, device: str | torch.device = "cpu") -> LoadedModel:
    """A diffusers UNet and its alphas_cumprod: ``digits``, one of the paper's models (``PAPER_MODELS``), a hub
    id, a local folder or an original checkpoint file (``mmdlib.convert``'s formats).

    The folder may be a pipeline (``unet/`` and ``scheduler/`` subfolders, as ``save_pipeline`` writes)
    or a bare model folder with ``config.json`` and ``scheduler_config.json`` side by side. A paper model is
    downloaded from where its authors publish it, checked against its published MD5, converted and cached
    under $MMDLIB_CACHE on first use; a checkpoint file is converted once, keyed by its SHA-256.
    """
    from .unets import UNET_CLASSES  # imports diffusers: not on `import mmdlib`

    if name_or_path in PAPER_MODELS:
        name_or_path = str(paper_model(name_or_path))  # downloaded, verified and converted once, then cached
    elif Path(name_or_path).is_file():  # an original checkpoint: converted once (by its hash), then cached
        name_or_path = str(converted(name_or_path))
    if name_or_path == "digits":
        name_or_path = str(digits_model_path())
    repo = name_or_path
    local = Path(repo).is_dir()
    if not local and Path(repo).parent.is_dir() and str(Path(repo).parent) != ".":
        # "runs/missing" could be a hub id, but runs/ is a folder here: a local path that does not exist
        raise MMDLibError(f"model {name_or_path!r}: there is no folder {repo!r} (its parent "
                          f"{str(Path(repo).parent)!r} exists here, so it is taken as a path, not a hub id).")
    if not local and (Path(repo).exists() or repo.startswith((".", "/", "~")) or repo.count("/") != 1):
        raise MMDLibError(f"model {name_or_path!r} is neither a known name ({', '.join(MODELS)}), a hub id "
                          f"(owner/name), a folder nor a checkpoint file.")
    if local and (hint := _not_a_model_folder(Path(repo))):
        raise MMDLibError(f"model {hint}")
    offline = None if local else offline_reason()  # asked once: no retries against a hub that cannot answer
    cached_only = offline is not None
    try:
        sub = "unet" if (Path(repo) / "unet").is_dir() or (not local and _read_json(
            repo, ["unet/config.json"], False, cached_only)) else None
        config = _read_json(repo, [f"{sub}/config.json" if sub else "config.json"], local, cached_only) or {}
        cls = UNET_CLASSES.get(config.get("_class_name", "UNet2DModel"))
        if cls is None:
            raise OSError(f"its UNet is a {config['_class_name']}, not one mmdlib knows ({', '.join(UNET_CLASSES)})")
        with warnings.catch_warnings():  # diffusers passes huggingface_hub an argument it has deprecated
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            unet = cls.from_pretrained(repo, subfolder=sub, **({"local_files_only": True} if cached_only else {}))
        sched = _read_json(repo, ["scheduler/scheduler_config.json", "scheduler_config.json"], local,
                           cached_only) or {}
        meta = _read_json(repo, [META_FILE], local, cached_only) or {}
        ac = _schedule_from_config(sched)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, IndexError, RuntimeError) as e:
        detail = str(e).strip().splitlines()[0][:300] if str(e).strip() else "no detail"
        if local:  # a config.json of the wrong types, a damaged weights file, ...
            raise MMDLibError(f"could not load a diffusers UNet from the folder {repo!r} ({type(e).__name__}: "
                              f"{detail}).") from None
        how = (f"{offline[0].upper()}{offline[1:]}, and there is no local copy in the Hugging Face cache. " if offline
               else f"The hub answered, but not with a model mmdlib can load ({type(e).__name__}: {detail}). ")
        raise MMDLibError(f"could not load {repo!r}. {how}On a connected machine run `hf download {repo}` "
                          f"(huggingface_hub's command; it fills the cache this machine reads), or download it "
                          f"and pass the local folder instead.") from None
    check_finite(unet, f"model {name_or_path!r}")
    return LoadedModel(unet.to(device).eval(), ac, repo, meta)


__getattr__ = moved(__name__, {"save_pipeline": (export.save_pipeline, "mmdlib.save_pipeline (mmdlib.export)")})

