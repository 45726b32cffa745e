"""Pretrained diffusion models by short name, hub id or local folder, and export as a diffusers pipeline."""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Sequence

import torch

from .cache import env_flag, weights_hash
from .errors import MMDLibError
from .schedules import alphas_cumprod as _alphas_cumprod
from .schedules import linear_betas, timestep_subset



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
MODELS = ["digits", *PAPER_MODELS]


def paper_models_table():
    """The paper's base models (``PAPER_MODELS``) as a pandas DataFrame: where each comes from, its weights,
    its parameters (counted on its authors' architecture, built empty), its schedule, and the FIDs reported
    for it (the MMD-DDM paper's DDIM rows; a many-step FID where its authors' paper is quoted in
    ``reported.BASE_FID``)."""
    import pandas as pd

    from .convert import FORMATS, unet_for
    from .reported import BASE_FID, DATASET_TABLE, TABLES

    rows = {}
    for name, ck in PAPER_MODELS.items():
        f = FORMATS[ck.format]
        with torch.device("meta"):
            unet = unet_for(ck.format, ck.size, 3, dropout=ck.dropout, **ck.arch)
        table = TABLES[DATASET_TABLE[name]]
        ddim = dict(zip(table["columns"], table["rows"]["DDIM"]))
        rows[name] = {
            "source": ck.source, "weights": "EMA" if ck.ema else "not EMA", "format": ck.format,
            "image size": ck.size, "parameters (M)": f"{sum(p.numel() for p in unet.parameters()) / 1e6:.1f}",
            "schedule": f"{f.schedule}, T = {f.T}" + (", network fed t·1000/T" if ck.format != "ddpm" else ""),
            "MD5 published": "yes" if ck.md5 else "no",
            "DDIM FID, 5 / 10 / 20 steps (reported, MMD-DDM paper)": " / ".join(
                f"{ddim[f'|T|={b}']}" for b in (5, 10, 20)),
            "many-step FID (reported)": BASE_FID.get(name, "not quoted here")}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("name")
META_FILE = "mmdlib.json"


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


def _read_json(repo: str, names: Sequence[str], local: bool) -> dict | None:
    for name in names:
        if local:
            if (Path(repo) / name).is_file():
                return json.loads((Path(repo) / name).read_text())
            continue
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError

        try:
            return json.loads(Path(hf_hub_download(repo, name)).read_text())
        except EntryNotFoundError:
            continue
    return None


def load_model(name_or_path: str, device: str | torch.device = "cpu") -> LoadedModel:
    """A diffusers UNet and its alphas_cumprod: ``digits``, one of the paper's models (``PAPER_MODELS``), a hub
    id, a local folder or an original checkpoint file (``mmdlib.convert``'s formats).

    The folder may be a pipeline (``unet/`` and ``scheduler/`` subfolders, as ``save_pipeline`` writes)
    or a bare model folder with ``config.json`` and ``scheduler_config.json`` side by side. A paper model is
    downloaded from where its authors publish it, checked against its published MD5, converted and cached
    under $MMDLIB_CACHE on first use; a checkpoint file is converted once, keyed by its SHA-256.
    """
    from .convert import converted, paper_model
    from .unets import UNET_CLASSES

    if name_or_path in PAPER_MODELS:
        name_or_path = str(paper_model(name_or_path))  # downloaded, verified and converted once, then cached
    elif Path(name_or_path).is_file():  # an original checkpoint: converted once (by its hash), then cached
        name_or_path = str(converted(name_or_path))
    if name_or_path == "digits":
        from .pretrain import digits_model_path

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
    try:
        sub = "unet" if (Path(repo) / "unet").is_dir() or (not local and _read_json(repo, ["unet/config.json"],
                                                                                       False)) else None
        config = _read_json(repo, [f"{sub}/config.json" if sub else "config.json"], local) or {}
        cls = UNET_CLASSES.get(config.get("_class_name", "UNet2DModel"))
        if cls is None:
            raise OSError(f"its UNet is a {config['_class_name']}, not one mmdlib knows ({', '.join(UNET_CLASSES)})")
        unet = cls.from_pretrained(repo, subfolder=sub)
        sched = _read_json(repo, ["scheduler/scheduler_config.json", "scheduler_config.json"], local) or {}
        meta = _read_json(repo, [META_FILE], local) or {}
    except (OSError, ValueError) as e:
        if local:
            raise MMDLibError(f"could not load a diffusers UNet from the folder {repo!r}: {e}") from e
        how = ("HF_HUB_OFFLINE=1 is set and there is no local copy in the Hugging Face cache. "
               if env_flag("HF_HUB_OFFLINE") else "The hub could not be reached. ")
        raise MMDLibError(f"could not load {repo!r}. {how}On a connected machine run `hf download {repo}` "
                          f"(huggingface_hub's command; it fills the cache this machine reads), or download it "
                          f"and pass the local folder instead.") from e
    return LoadedModel(unet.to(device).eval(), _schedule_from_config(sched), repo, meta)


def save_pipeline(model: torch.nn.Module, path: str | Path, budget: int = 5, alphas_cumprod: torch.Tensor | None = None,
                  timestep_spacing: str = "auto", meta: dict | None = None, sampler: str = "ddim",
                  eta: float = 0.0) -> Path:
    """Write ``model`` as a folder that ``diffusers.DiffusionPipeline.from_pretrained`` loads, with the
    scheduler that makes ``pipe(num_inference_steps=budget)`` visit ``timestep_subset(budget, T, spacing)``,
    the steps mmdlib's sampler used (spacing "auto": the sampler's own, ``sampling.SPACING``):

    - ``"ddim"``: a DDIMPipeline (DDIMScheduler: set_alpha_to_one, no clipping, offset 0); pass the recorded
      eta to the call (it is a call argument, not part of the scheduler's config);
    - ``"ddpm"``: a DDPMPipeline (DDPMScheduler, fixed-small variance, no clipping);
    - ``"dpmpp2m"``, ``"unipc"``: a DDPMPipeline with a DPMSolverMultistepScheduler (DPM-Solver++, order 2,
      midpoint) or a UniPCMultistepScheduler (bh2, order 2), both data prediction with a first-order last
      step onto sigma = 0. The UniPC folder names ``mmdlib.pipeline_schedulers.UniPCPipelineScheduler``,
      diffusers' class with a ``step`` that accepts the ``generator=`` DDPMPipeline passes.

    Called with the generators ``sample_seeded`` uses, the pipeline reproduces mmdlib's chain, stochastic
    steps included. ``mmdlib.json`` records the budget, its timesteps, the spacing, the sampler and eta. A
    spacing the scheduler cannot express (quadratic; linear for the solvers) is written as the sampler's
    own, with a warning: sample with mmdlib and the recorded timesteps.
    """
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler

    from .pipeline_schedulers import UniPCPipelineScheduler
    from .sampling import SPACING, resolve_spacing, sampler_kwargs

    sampler_kwargs(sampler, eta)  # a known sampler, and eta only where it applies
    spacing = resolve_spacing(sampler, timestep_spacing)
    ac = _alphas_cumprod(linear_betas()) if alphas_cumprod is None else torch.as_tensor(alphas_cumprod).double()
    T = len(ac)
    steps = timestep_subset(budget, T, spacing)
    # mmdlib's spacing -> the scheduler's name for it, where it has one
    expressible = {"trailing": "trailing", **({"linear": "leading"} if sampler in ("ddim", "ddpm") else {})}
    if spacing not in expressible:
        warnings.warn(f"{spacing} spacing cannot be expressed in the {sampler} scheduler's config: the pipeline will "
                      f"use {SPACING[sampler]} spacing; sample with mmdlib and the timesteps in {META_FILE}.")
    if torch.allclose(ac, _alphas_cumprod(linear_betas(T)), rtol=1e-12, atol=0):
        betas = {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    else:
        betas = {"trained_betas": (1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])).tolist()}
    common = dict(num_train_timesteps=T, timestep_spacing=expressible.get(spacing, expressible[SPACING[sampler]]),
                  steps_offset=0, **betas)
    solver = dict(solver_order=2, lower_order_final=True, final_sigmas_type="zero")
    if sampler == "ddim":
        pipe = DDIMPipeline(unet=model, scheduler=DDIMScheduler(set_alpha_to_one=True, clip_sample=False, **common))
    elif sampler == "ddpm":
        pipe = DDPMPipeline(unet=model, scheduler=DDPMScheduler(variance_type="fixed_small", clip_sample=False,
                                                                **common))
    elif sampler == "dpmpp2m":
        pipe = DDPMPipeline(unet=model, scheduler=DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++", solver_type="midpoint", **solver, **common))
    else:
        pipe = DDPMPipeline(unet=model, scheduler=UniPCPipelineScheduler(solver_type="bh2", predict_x0=True,
                                                                         **solver, **common))
    path = Path(path)
    pipe.save_pretrained(path)
    record = {"budget": budget, "timestep_spacing": spacing, "timesteps": steps, "num_inference_steps": budget,
              "sampler": sampler, "eta": float(eta) if sampler == "ddim" else None, **(meta or {})}
    (path / META_FILE).write_text(json.dumps(record, indent=1))
    return path
