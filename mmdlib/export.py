"""A denoiser as a diffusers pipeline folder whose scheduler steps mmdlib's chain (``save_pipeline``)."""
from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from .errors import MMDLibError
from .sampling import Sampler, get_sampler, resolve_spacing
from .schedules import alphas_cumprod as _alphas_cumprod
from .schedules import check_timesteps, linear_betas, timestep_subset

META_FILE = "mmdlib.json"  # what mmdlib records beside a pipeline: budget, timesteps, sampler, eta, ...
# the files save_pipeline writes in its folder (glob patterns): all a pipeline folder holds that is mmdlib's
PIPELINE_FILES = ("model_index.json", META_FILE, "unet/config.json", "unet/diffusion_pytorch_model*.safetensors",
                  "unet/diffusion_pytorch_model*.safetensors.index.json", "scheduler/scheduler_config.json")
PIPELINE_FOLDERS = ("unet", "scheduler")


def pipeline_files(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """(the files ``save_pipeline`` wrote that ``folder`` holds, its subfolders then ``folder`` itself): what
    replacing or discarding the pipeline may remove. A file a user put there matches no name and stays."""
    folder = Path(folder)
    files = sorted({p for pattern in PIPELINE_FILES for p in folder.glob(pattern)})
    return files, [folder / name for name in PIPELINE_FOLDERS] + [folder]


def _class(name: str):
    """A diffusers class by name, or one of mmdlib's as "module:Class"."""
    module, _, cls = name.rpartition(":")
    return getattr(importlib.import_module(module or "diffusers"), cls)


def betas_config(ac: torch.Tensor) -> dict:
    """The scheduler-config entries that give alphas_cumprod ``ac``: DDPM's linear betas by name where they
    are those, else the betas themselves."""
    if torch.allclose(ac, _alphas_cumprod(linear_betas(len(ac))), rtol=1e-12, atol=0):
        return {"beta_schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02}
    return {"trained_betas": (1 - ac / torch.cat([ac.new_ones(1), ac[:-1]])).tolist()}


def native(sampler: Sampler, spacing: str | None, steps: list, T: int) -> bool:
    """Whether ``sampler``'s own diffusers scheduler, given ``spacing``, steps exactly through ``steps``: its
    spacings' timesteps are mmdlib's, but DDIM's and DDPM's schedulers step from t to t - T // n, which is the
    previous timestep only when the steps are that far apart and the first lies below T // n."""
    if spacing not in sampler.spacings:
        return False
    if sampler.name in ("ddim", "ddpm"):
        stride = T // len(steps)
        return steps[0] < stride and all(b - a == stride for a, b in zip(steps, steps[1:]))
    return True


def scheduler_for(sampler: Sampler, spacing: str | None, steps: list, ac: torch.Tensor, eta: float = 0.0):
    """The scheduler that steps ``sampler``'s chain through ``steps`` over the training schedule ``ac``: its own
    diffusers scheduler (``Sampler.scheduler``, ``.scheduler_config``) where that steps exactly (``native``),
    else ``mmdlib.pipeline_schedulers.MMDLibScheduler``, mmdlib's own steps over the explicit timesteps."""
    if native(sampler, spacing, steps, len(ac)):
        return _class(sampler.scheduler)(num_train_timesteps=len(ac), steps_offset=0, **betas_config(ac),
                                         timestep_spacing=sampler.spacings[spacing], **sampler.scheduler_config)
    return _class("mmdlib.pipeline_schedulers:MMDLibScheduler")(
        num_train_timesteps=len(ac), **betas_config(ac), sampler=sampler.name, steps=list(steps), eta=float(eta))


def save_pipeline(model: torch.nn.Module, path: str | Path, budget: int = 5, alphas_cumprod: torch.Tensor | None = None,
                  timestep_spacing: str = "auto", meta: dict | None = None, sampler: str = "ddim",
                  eta: float = 0.0, timesteps=None) -> Path:
    """Write ``model`` as a folder that ``diffusers.DiffusionPipeline.from_pretrained`` loads, whose
    ``pipe(num_inference_steps=budget)`` steps through the timesteps mmdlib's chain used: ``timesteps`` when
    given (ascending; integers or real numbers, e.g. a learnt schedule), else ``timestep_subset(budget, T,
    spacing)`` (spacing "auto": the sampler's own, ``Sampler.spacing``). Each sampler's record
    (``sampling.SAMPLERS``) names its diffusers pipeline and scheduler, used where that scheduler steps
    exactly through them (``native``):

    - ``"ddim"``: a DDIMPipeline (DDIMScheduler: set_alpha_to_one, no clipping, offset 0); pass the recorded
      eta to the call (it is a call argument, not part of the scheduler's config);
    - ``"ddpm"``: a DDPMPipeline (DDPMScheduler, fixed-small variance, no clipping);
    - ``"dpmpp2m"``, ``"unipc"``: a DDPMPipeline with a DPMSolverMultistepScheduler (DPM-Solver++, order 2,
      midpoint) or a UniPCMultistepScheduler (bh2, order 2), both data prediction with a first-order last
      step onto sigma = 0. The UniPC folder names ``mmdlib.pipeline_schedulers.UniPCPipelineScheduler``,
      diffusers' class with a ``step`` that accepts the ``generator=`` DDPMPipeline passes.

    Elsewhere (learnt or real-valued timesteps, the quadratic spacing, linear for the solvers, trailing with a
    budget that does not divide T) the folder is a DDPMPipeline with ``mmdlib.pipeline_schedulers.MMDLibScheduler``
    (the sampler's own steps over the explicit timesteps; eta in its config), which needs mmdlib installed.
    Called with the generators ``sample_seeded`` uses, the pipeline reproduces mmdlib's chain, stochastic steps
    included. ``mmdlib.json`` records the budget, its timesteps, the spacing, the sampler and eta.
    """
    record = get_sampler(sampler)
    record.options(eta)  # eta only where it applies
    ac = _alphas_cumprod(linear_betas()) if alphas_cumprod is None else torch.as_tensor(alphas_cumprod).double()
    if timesteps is None:
        spacing = resolve_spacing(sampler, timestep_spacing)
        steps = timestep_subset(budget, len(ac), spacing)
    else:
        spacing, steps = None, check_timesteps(torch.as_tensor(timesteps, dtype=torch.float64), len(ac)).tolist()
        if len(steps) != budget:
            raise MMDLibError(f"{len(steps)} timesteps for a budget of {budget}; give one per step.")
        steps = [int(t) if float(t).is_integer() else float(t) for t in steps]
    scheduler = scheduler_for(record, spacing, steps, ac, eta)
    pipeline = record.pipeline if native(record, spacing, steps, len(ac)) else "DDPMPipeline"
    pipe = _class(pipeline)(unet=model, scheduler=scheduler)
    path = Path(path)
    pipe.save_pretrained(path)
    info = {"budget": budget, "timestep_spacing": spacing or "explicit", "timesteps": steps,
            "num_inference_steps": budget, "sampler": sampler, "eta": float(eta) if record.eta else None,
            **(meta or {})}
    (path / META_FILE).write_text(json.dumps(info, indent=1))
    return path


def remove_files(files: list[Path], folders: list[Path]) -> None:
    """Remove ``files``, then each of ``folders`` (deepest first) that this leaves empty: a folder that still holds
    something (a user's file) stays."""
    for p in files:
        p.unlink(missing_ok=True)
    for p in folders:
        try:
            p.rmdir()
        except OSError:  # not empty, or already gone
            pass


def _refuse_replacing(out: Path, overwrite: bool, marker: str) -> None:
    """Refuse, deleting nothing, an ``--out`` that may not be written whole: a symbolic link, the current folder
    or one holding it, a non-empty folder without ``overwrite``, and with it any folder but one the same
    command wrote (its ``mmdlib.json`` records ``marker``) holding only a pipeline's files."""
    if out.is_symlink():
        raise MMDLibError(f"--out {str(out)!r} is a symbolic link (to {os.readlink(out)!r}); the folder is written "
                          f"whole and renamed into place, so name a real folder (the link's target, if that is the "
                          f"one). Nothing was changed.")
    if not out.exists():
        return
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise MMDLibError(f"--out {str(out)!r} is the current folder or holds it; the folder is replaced whole, so "
                          f"choose a new folder (e.g. --out converted). Nothing was changed.")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise MMDLibError(f"{str(out)!r} is not empty; pass --overwrite to replace a folder this command wrote, or "
                          f"choose another --out. Nothing was changed.")
    ours, folders = pipeline_files(out)
    theirs = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                    if p not in ours and p not in folders or p.is_symlink())
    try:
        meta = json.loads((out / META_FILE).read_text())
    except (OSError, ValueError):
        meta = {}
    if theirs or not isinstance(meta, dict) or marker not in meta:
        what = (f"holds {len(theirs)} file(s) a pipeline folder does not hold ({', '.join(theirs[:4])}"
                f"{', ...' if len(theirs) > 4 else ''})" if theirs else f"has no {META_FILE} recording {marker}")
        raise MMDLibError(f"--overwrite replaces only a folder this command wrote, and {str(out)!r} {what}; nothing "
                          f"was deleted. Choose another --out, or move its contents away.")


def write_folder(out: str | Path, write: Callable[[Path], None], overwrite: bool, marker: str) -> Path:
    """``write(folder)`` a pipeline folder at ``out`` whole or not at all: in a temporary folder beside it, then
    renamed into place, so a failure leaves ``out`` as it was. A non-empty ``out`` is replaced only with
    ``overwrite`` and only when it is a pipeline folder whose mmdlib.json records ``marker``
    (``_refuse_replacing``); its own files are removed, never anything else."""
    out = Path(out)
    _refuse_replacing(out, overwrite, marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write(tmp / "model")
        if out.exists():
            remove_files(*pipeline_files(out))  # all it holds (checked above)
        (tmp / "model").rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
