"""MMD-DDM finetuning (paper Sec. III, Fig. 2; settings of Sec. IV-A).

Each iteration draws a real batch and fresh noise, samples through the short chain *with gradients*,
embeds both sides (real features without gradients), minimises the unbiased MMD^2 (eq. 7) and steps
Adam. Everything random comes from the run seed's own streams (``mmdlib.streams``: "train" per
generated sample, "real-batch" per iteration), so ``resume`` continues to the same weights and no
evaluation or figure ever reuses a training latent.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import math
import os
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .data import Mirrored
from .errors import MMDLibError
from .evaluate import grid_samples
from .features import FEATURES, FeatureExtractor, get_feature_extractor
from .loss import mmd_ddm_loss
from .mmd import KERNELS
from .models import LoadedModel, save_pipeline
from .plots import save_grid
from .real_features import PrecomputedReal, StreamedReal, real_feature_source
from .runfolder import RunFolder
from .sampling import SAMPLERS, resolve_spacing, sample_seeded, sampler_kwargs
from .schedules import TIMESTEP_SPACINGS, timestep_subset
from .speed import COMPILE, PRECISIONS, plan_memory, resolve_speed
from .streams import MAX_INDEX, stream_seed, stream_seeds

CHECKPOINTING = ("auto", "all", "none")


def _setting(default, group: str, identity: bool | None = None, **meta):
    """A ``FinetuneConfig`` field in its group: "method" (what is learnt), "execution" (how it runs) or
    "output" (what is written). ``identity``: whether two runs that differ in it are different runs (by
    default the method settings are and the others are not), which ``--resume`` and the cache keys check."""
    identity = group == "method" if identity is None else identity
    return dataclasses.field(default=default, metadata={"group": group, "identity": identity, **meta})


def _yes_no(text: str) -> bool:
    """A command-line boolean: yes/no, true/false, on/off or 1/0."""
    value = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}
    if str(text).lower() not in value:
        raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")
    return value[str(text).lower()]


def _float_or_none(text: str) -> float | None:
    """A command-line number, or none."""
    if str(text).lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None


# settings added after 0.1.0, left out of a run's identity while off, so runs from before keep theirs
OFF_SINCE_0_1 = {"dropout": None, "flip": False}


@dataclasses.dataclass
class FinetuneConfig:
    """The one source of defaults for the CLI, the notebooks and papermill (paper Sec. IV-A); the named
    presets (``mmdlib.presets``) start from it."""

    # method: the paper's settings
    model: str = _setting("digits", "method")  # short name, hub id or folder
    dataset: str = _setting("digits", "method")
    split: str = _setting("train", "method")
    data_root: str | None = _setting(None, "method")
    features: str = _setting("inception", "method")
    kernel: str = _setting("cubic", "method")
    budget: int = _setting(5, "method")  # |tau|, the sampling steps (diffusers' num_inference_steps)
    timestep_spacing: str = _setting("auto", "method")  # which |tau| timesteps: "auto" (the sampler's own) or
    # one of TIMESTEP_SPACINGS
    sampler: str = _setting("ddim", "method")
    eta: float = _setting(0.0, "method")
    batch_size: int = _setting(128, "method")
    lr: float = _setting(5e-6, "method")
    adam_betas: tuple[float, float] = _setting((0.9, 0.999), "method")
    adam_eps: float = _setting(1e-8, "method")
    iterations: int = _setting(500, "method", identity=False)  # may grow on --resume
    grad_clip: float = _setting(0.5, "method")  # max gradient norm (the official code clips at 0.5)
    # None: the network in eval mode through the chain (no dropout); p: train mode, every dropout layer at p (the
    # official code finetunes in train mode at the model's training dropout: 0.1 for CIFAR-10 and CelebA)
    dropout: float | None = _setting(None, "method", type=_float_or_none)
    flip: bool = _setting(False, "method", type=_yes_no)  # real images mirrored at random (the official code does)
    seed: int = _setting(0, "method")
    # execution: the same math however it runs, except precision, which changes the numbers
    checkpointing: str = _setting("auto", "execution")  # recompute sampler steps in backward: "auto", "all", "none"
    memory_gib: float | None = _setting(None, "execution", type=float)  # what "auto" checkpointing may use
    precision: str = _setting("auto", "execution", identity=True)  # "fp32" or "bf16" (networks under autocast)
    compile: str = _setting("auto", "execution")  # "on", "off", or "auto" (on for CUDA): torch.compile the UNet
    workers: int = _setting(0, "execution")
    device: str = _setting("auto", "execution")
    # output
    out: str = _setting("runs/mmd-ddm", "output")
    save_every: int = _setting(50, "output")
    sample_every: int = _setting(100, "output")

    def check(self) -> "FinetuneConfig":
        """Refuse bad values with a message naming the value and what is allowed."""
        for field, known in (("features", FEATURES), ("kernel", KERNELS),
                             ("timestep_spacing", ("auto", *TIMESTEP_SPACINGS)), ("sampler", SAMPLERS)):
            if getattr(self, field) not in known:
                raise MMDLibError(f"unknown {field} {getattr(self, field)!r}; known: {', '.join(known)}.")
        if self.batch_size < 2:
            raise MMDLibError(f"batch size {self.batch_size} is too small: the unbiased MMD^2 needs at least 2 "
                              f"samples per side; use --batch-size 2 or more (the paper uses 128).")
        for field in ("iterations", "save_every", "sample_every"):
            if getattr(self, field) < 1:
                raise MMDLibError(f"{field} must be >= 1, got {getattr(self, field)}.")
        for field, known in (("precision", PRECISIONS), ("compile", COMPILE), ("checkpointing", CHECKPOINTING)):
            if getattr(self, field) not in known:
                raise MMDLibError(f"unknown {field} setting {getattr(self, field)!r}; known: {', '.join(known)}.")
        if self.memory_gib is not None and not self.memory_gib > 0:
            raise MMDLibError(f"memory_gib must be > 0 (GiB the run may use), got {self.memory_gib}.")
        if not 0 < self.lr < math.inf:
            raise MMDLibError(f"learning rate must be a finite number > 0, got {self.lr}.")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise MMDLibError(f"adam_betas must be two numbers in [0, 1), got {tuple(self.adam_betas)}.")
        if not 0 < self.adam_eps < math.inf:
            raise MMDLibError(f"adam_eps must be a finite number > 0, got {self.adam_eps}.")
        if self.workers < 0:
            raise MMDLibError(f"workers must be >= 0 (0 loads real images in the main process), got {self.workers}.")
        if self.device != "auto":
            pick_device(self.device)
        if not 0 < self.grad_clip < math.inf:
            raise MMDLibError(f"grad_clip (the largest gradient norm) must be a finite number > 0, got "
                              f"{self.grad_clip}; the paper's code clips at 0.5.")
        sampler_kwargs(self.sampler, self.eta)
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise MMDLibError(f"dropout must be None (eval mode, no dropout) or a probability in [0, 1), got "
                              f"{self.dropout}.")
        stream_seed("train", self.seed, 0)  # the seed is in range
        if self.iterations * self.batch_size > MAX_INDEX + 1:
            raise MMDLibError(f"iterations x batch size = {self.iterations * self.batch_size:,} generated samples; a "
                              f"run seed's training stream holds {MAX_INDEX + 1:,}. Use fewer iterations or a smaller "
                              f"batch.")
        return self

    @property
    def spacing(self) -> str:
        """The timestep spacing in force: ``timestep_spacing``, with "auto" resolved to the sampler's own."""
        return resolve_spacing(self.sampler, self.timestep_spacing)

    def run_identity(self) -> dict:
        """What makes two runs the same run: the fields declared part of the identity (``_setting``)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["identity"]}
        d["adam_betas"], d["timestep_spacing"] = list(d["adam_betas"]), self.spacing
        for name, off in OFF_SINCE_0_1.items():
            if d[name] == off:
                del d[name]
        return d


def pick_device(name: str = "auto") -> torch.device:
    """``name`` as a torch device ("auto": CUDA when there is one, else the CPU); a device this machine does
    not have is refused with a message, not a traceback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise MMDLibError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise MMDLibError(f"device {name!r} is not available here ({torch.cuda.device_count()} CUDA devices); use "
                          f"--device cpu or auto.")
    return device


def _noise_seeds(cfg: FinetuneConfig, it: int, part: tuple[int, int] = (0, 1)) -> list[int]:
    """Per-sample seeds of iteration ``it``'s global batch (or one rank's contiguous share): draws
    it * batch + i of the run's "train" stream."""
    rank, world = part
    share = cfg.batch_size // world
    start = it * cfg.batch_size + rank * share
    return stream_seeds("train", cfg.seed, range(start, start + share))


class _Processes:
    """Who we are among the processes ``accelerate launch`` (or torchrun, or notebook_launcher) started."""

    def __init__(self, device: str):
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


def check_fit(model: LoadedModel, dataset: Dataset) -> None:
    """The dataset's images must have the model's channels and size."""
    x, _ = dataset[0]
    if tuple(x.shape) != model.sample_shape:
        raise MMDLibError(f"dataset images are {tuple(x.shape)} but the model generates {model.sample_shape}; "
                          f"pick the matching dataset, or resize it (e.g. folder datasets take size=).")


class Finetuner:
    """The optimiser and the loop: Adam on the MMD-DDM loss (``mmd_ddm_loss``), one iteration per ``step``,
    checkpointing and logging to its ``RunFolder``. It trains its own copy of ``model``'s weights
    (``self.model`` holds it; the model passed in is left as it was)."""

    def __init__(self, model: LoadedModel, dataset: Dataset, cfg: FinetuneConfig,
                 extractor: FeatureExtractor | None = None, resume: bool = False, overwrite: bool = False,
                 progress: bool = True):
        self.cfg = cfg.check()
        self.dataset = Mirrored(dataset) if cfg.flip else dataset
        check_fit(model, dataset)
        self.procs = _Processes(cfg.device)
        if cfg.batch_size % self.procs.world:
            raise MMDLibError(f"batch size {cfg.batch_size} (the global batch) does not divide among "
                              f"{self.procs.world} processes; use a multiple of {self.procs.world}.")
        self.timesteps = timestep_subset(cfg.budget, model.T, cfg.spacing)  # refuses a bad budget before any file
        self.folder = RunFolder(cfg.out, main=self.procs.main)
        self.folder.lock()  # held until run() ends, or until __init__ fails
        try:
            self._start(model, extractor, resume, overwrite, progress)
        except BaseException:
            self.folder.unlock()
            raise

    def _start(self, model, extractor, resume, overwrite, progress) -> None:
        """The rest of __init__, under the folder's lock: check the folder, place the model, load a checkpoint."""
        cfg = self.cfg
        resuming = self.folder.check(cfg.run_identity(), resume, overwrite, cfg.iterations)  # every rank, first
        self.progress = progress and self.procs.main
        self.device = self.procs.device(cfg.device)
        self.speed = resolve_speed(cfg.precision, cfg.compile, self.device)
        self.unet = self.speed.place(copy.deepcopy(model.unet), self.device).eval()
        if cfg.dropout is not None:  # train mode in _step, with every dropout layer at this p
            for m in self.unet.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = cfg.dropout
        self.model = dataclasses.replace(model, unet=self.unet)
        self.extractor = self.speed.place(extractor or get_feature_extractor(cfg.features), self.device)
        # the sampler calls `self.net`; compiled or not, it shares its parameters with `self.unet`
        self.net = self.speed.compiled(self.unet)
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                                    **({"fused": True} if self.speed.fused_adam else {}))
        self.iteration = 0
        # onto the CPU: load_state_dict moves it where the parameters are (accelerate names the CPU "cpu:0",
        # which torch.load cannot map to)
        ckpt = self.folder.load("cpu") if resuming else None
        if ckpt is not None:
            self.unet.load_state_dict(ckpt["unet"])
            self.opt.load_state_dict(ckpt["optimizer"])
            for group in self.opt.param_groups:  # --resume --lr: a changed lr, recorded in run.json by start()
                group["lr"] = cfg.lr
            self.iteration = ckpt["iteration"]
        self._norm = torch.nn.utils.get_total_norm(self.unet.parameters()).item()  # for _step's blow-up check
        self.procs.barrier()  # every rank has checked and loaded before the main one writes
        self.folder.start({"identity": cfg.run_identity(), "iterations": cfg.iterations,
                           "timesteps": self.timesteps}, self.iteration, overwrite)
        self.procs.barrier()

    @functools.cached_property
    def real(self) -> PrecomputedReal | StreamedReal:
        """Real features per iteration (``real_features.real_feature_source``)."""
        return real_feature_source(self.dataset, self.extractor, self.cfg.batch_size, self.cfg.seed, self.device,
                                   self._autocast, self.cfg.workers, part=(self.procs.rank, self.procs.world),
                                   gather=self.procs.gather_with_grad, end=self.cfg.iterations)

    @functools.cached_property
    def memory(self) -> dict:
        """The checkpointing plan (``speed.plan_memory``) for this process's share of the batch."""
        return plan_memory(self.unet, self.extractor, self.timesteps, self.model.alphas_cumprod,
                           self.model.sample_shape, self.cfg.batch_size // self.procs.world, self.device, self.speed,
                           self.cfg.checkpointing, self.cfg.memory_gib, self.cfg.sampler, **self._sampler_kw)

    @property
    def checkpoint_steps(self) -> int:
        """How many sampler steps (the first ones, from x_T) are recomputed in backward."""
        return self.memory["checkpointed"]

    @property
    def _sampler_kw(self) -> dict:
        return sampler_kwargs(self.cfg.sampler, self.cfg.eta)

    def _autocast(self):
        return self.speed.autocast(self.device)

    def sample(self, seeds: list[int]) -> torch.Tensor:
        """x_0 in [-1, 1] through the short chain (differentiable): each sample's generator draws its x_T,
        then its in-chain noise."""
        return sample_seeded(self.net, seeds, self.model.sample_shape, self.timesteps, self.model.alphas_cumprod,
                             self.cfg.sampler, device=self.device, checkpoint=self.checkpoint_steps, **self._sampler_kw)

    def loss(self, it: int) -> torch.Tensor:
        """Iteration ``it``'s MMD-DDM loss on the global batch: this process generates its share of the
        "train" draws, and the features are all-gathered with their gradient. With dropout on, torch's global
        generator is seeded from the run's "dropout" stream just before the chain (after the real batch and the
        memory plan, which draw from it too), so a resumed run repeats the masks."""
        real, steps = self.real(it), self.checkpoint_steps
        if self.cfg.dropout is not None:
            torch.manual_seed(stream_seed("dropout", self.cfg.seed, it * self.procs.world + self.procs.rank))
        return mmd_ddm_loss(self.net, self.extractor, real,
                            _noise_seeds(self.cfg, it, (self.procs.rank, self.procs.world)),
                            shape=self.model.sample_shape, timesteps=self.timesteps,
                            alphas_cumprod=self.model.alphas_cumprod, sampler=self.cfg.sampler, kernel=self.cfg.kernel,
                            checkpoint=steps, device=self.device, autocast=self._autocast,
                            gather=self.procs.gather_with_grad, **self._sampler_kw)

    def step(self) -> tuple[float, float]:
        """One iteration (loss, backward, clipping, Adam); returns (loss, gradient norm). Under "auto"
        checkpointing, running out of memory switches to checkpointing every step and retries once."""
        try:
            return self._step()
        except torch.OutOfMemoryError as e:
            if self.memory["policy"] != "auto" or self.checkpoint_steps == len(self.timesteps):
                raise MMDLibError(f"out of memory at iteration {self.iteration} (batch {self.cfg.batch_size}, "
                                  f"{self.checkpoint_steps} of {len(self.timesteps)} steps checkpointed); use "
                                  f"--checkpointing all or a smaller --batch-size.") from e
        # outside the except block, so the failed iteration's graph is gone
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.memory["checkpointed"] = len(self.timesteps)
        if self.progress:
            tqdm.write("out of memory: now checkpointing every sampler step")
        return self._step()

    def _blew_up(self, what: str) -> MMDLibError:
        """The error for a run whose loss or gradient stopped being finite or whose weights blew up: every
        checkpoint was written after a step that passed ``_step``'s checks, so the last one is good."""
        saved, lr = self.folder.saved_iteration(), self.cfg.lr
        if saved:
            restart = (f"The last checkpoint, {self.folder.checkpoint} (iteration {saved}), was written before "
                       f"this: continue from it with a smaller learning rate by rerunning the same command with "
                       f"--resume --lr {lr / 10:g}.")
        else:
            restart = (f"No checkpoint was written yet (the first comes at iteration {self.cfg.save_every}): rerun "
                       f"the same command with --overwrite --lr {lr / 10:g}.")
        return MMDLibError(f"{what} at iteration {self.iteration} (lr {lr:g}); stopped. {restart}")

    def _step(self) -> tuple[float, float]:
        self.unet.train(self.cfg.dropout is not None)
        loss = self.loss(self.iteration)
        if not torch.isfinite(loss):
            raise self._blew_up(f"the loss became {loss.item()}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.procs.average_gradients(self.unet.parameters())
        gnorm = torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.cfg.grad_clip)
        if not torch.isfinite(gnorm):
            raise self._blew_up(f"the gradient norm became {gnorm.item()}")
        try:
            self.opt.step()
        except RuntimeError as e:  # Adam's step size lr / (1 - beta1^t) overflowing float32
            if "overflow" not in str(e):
                raise
            raise self._blew_up("Adam's step overflowed") from None
        before, self._norm = self._norm, torch.nn.utils.get_total_norm(self.unet.parameters()).item()
        if not math.isfinite(self._norm) or self._norm > 2 * before:  # no sane step doubles the weights' norm
            raise self._blew_up(f"the weights' norm went from {before:.4g} to {self._norm:.4g} in one Adam step")
        self.iteration += 1
        return loss.item(), gnorm.item()

    def save_checkpoint(self) -> None:
        self.folder.save({"unet": self.unet.state_dict(), "optimizer": self.opt.state_dict()}, self.iteration)

    def save_grid(self, name: str) -> Path | None:
        """64 samples from fixed noise (``evaluate.grid_samples``: the same at every call and in every run), on
        the main process."""
        if not self.procs.main:
            return None
        self.unet.eval()
        x = grid_samples(self.model, self.cfg.budget, timestep_spacing=self.cfg.spacing, sampler=self.cfg.sampler,
                         eta=self.cfg.eta, device=self.device)
        return save_grid(x, self.folder.path / "samples" / f"{name}.png")

    def run(self) -> Path:
        """Finetune up to cfg.iterations, checkpointing and logging; export the pipeline; return its folder.
        The folder's lock is released when it returns or fails."""
        try:
            return self._run()
        finally:
            self.folder.unlock()

    def _run(self) -> Path:
        cfg = self.cfg
        if self.iteration == 0:
            self.save_grid("iter_000000")
        bar = tqdm(total=cfg.iterations, initial=self.iteration, desc=f"MMD-DDM {cfg.budget} steps",
                   disable=not self.progress)
        if self.progress and self.memory["policy"] == "auto" and self.checkpoint_steps:
            bar.write(f"checkpointing {self.checkpoint_steps} of {len(self.timesteps)} sampler steps (estimated "
                      f"{self.memory['estimate_gib']:.1f} GiB of activations, {self.memory['available_gib']:.1f} GiB "
                      f"available)")
        with bar:  # closed (its line ended) before an error is printed
            while self.iteration < cfg.iterations:
                t0 = time.perf_counter()
                loss, gnorm = self.step()
                self.folder.log({"iteration": self.iteration, "loss": f"{loss:.6g}", "grad_norm": f"{gnorm:.4g}",
                                 "seconds": f"{time.perf_counter() - t0:.4f}"})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                if self.iteration % cfg.save_every == 0 or self.iteration == cfg.iterations:
                    self.save_checkpoint()
                if self.iteration % cfg.sample_every == 0 or self.iteration == cfg.iterations:
                    self.save_grid(f"iter_{self.iteration:06d}")
        self.unet.eval()
        path = self.folder.path / "finetuned"
        if self.procs.main:
            save_pipeline(self.unet, path, cfg.budget, self.model.alphas_cumprod, cfg.spacing,
                          meta={"finetune": dataclasses.asdict(self.cfg)}, sampler=cfg.sampler, eta=cfg.eta)
        self.procs.barrier()
        return path


def finetune(model: LoadedModel, dataset: Dataset, config: FinetuneConfig, **kw) -> Path:
    """Finetune ``model`` on ``dataset`` with ``config``; returns the exported DDIMPipeline folder."""
    return Finetuner(model, dataset, config, **kw).run()
