"""MMD-DDM finetuning (paper Sec. III, Fig. 2; settings of Sec. IV-A): the loop.

Each iteration draws a real batch and fresh noise, samples through the short chain *with gradients*,
embeds both sides (real features without gradients), minimises the unbiased MMD^2 (eq. 7,
``loss.MMDDDMLoss``) and steps Adam. Everything random comes from the run seed's own streams
(``mmdlib.streams``: "train" per generated sample, "real-batch" per iteration), so ``resume`` continues to
the same weights and no evaluation or figure ever reuses a training latent. The run's folder
(``runfolder.RunFolder``) is validated by whoever names it and opened, locked and checked once, when the
``Finetuner`` starts the run.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .config import FinetuneConfig
from .data import Mirrored, data_options, get_dataset
from .cores import rebalance, sharing_cores
from .devices import Processes
from .errors import MMDLibError
from .export import save_pipeline
from .features import FeatureExtractor
from .generate import grid_samples
from .models import LoadedModel
from .plots import save_grid
from .real_features import PrecomputedReal, StreamedReal, real_feature_source
from .runfolder import RunFolder, stopped, unstable
from .schedules import timestep_subset
from .speed import checkpoint_everything, describe_plan, plan_memory
from .streams import stream_seed
from .training import Unstable, adam_step, make_parts, release, restore, schedule_row, state, train_seeds


def real_dataset(cfg: FinetuneConfig, model: LoadedModel, download: bool = False) -> Dataset:
    """``cfg``'s real images (``data.get_dataset``); a folder of images is read with the model's channels."""
    return get_dataset(cfg.dataset, cfg.split, **data_options(cfg.dataset, cfg.data_root, download,
                                                              model.sample_shape[0]))


def check_inputs(model: LoadedModel, dataset: Dataset, cfg: FinetuneConfig, world: int = 1) -> list[int]:
    """Refuse, before any file is touched, a run that cannot start: bad settings, a budget outside the model's
    1..T, images that are not the model's shape, a batch that does not divide among the processes. Returns
    the timesteps the chain visits."""
    cfg.check()
    if cfg.batch_size % world:
        raise MMDLibError(f"batch size {cfg.batch_size} (the global batch) does not divide among {world} "
                          f"processes; use a multiple of {world}.")
    timesteps = timestep_subset(cfg.budget, model.T, cfg.spacing)
    x, _ = dataset[0]
    if tuple(x.shape) != model.sample_shape:
        c, h, w = model.sample_shape
        raise MMDLibError(f"dataset images are {tuple(x.shape)} but the model generates {model.sample_shape}; pick "
                          f"the dataset the model was trained on, or resize the folder's images to {h}x{w} first "
                          f"(in Python, get_dataset('folder', root=..., size={h}) resizes them).")
    return timesteps


class Finetuner:
    """The loop: Adam on the MMD-DDM loss, one iteration per ``step``, checkpointing and logging to its run
    folder (default ``RunFolder(cfg.out)``: opened here, released when ``run`` ends or starting fails), on its
    own copy of ``model``'s weights (``self.model``) and, with ``learn_timesteps``, timesteps (``self.schedule``)."""

    def __init__(self, model: LoadedModel, dataset: Dataset, cfg: FinetuneConfig, folder: RunFolder | None = None,
                 *, extractor: FeatureExtractor | None = None, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, processes: Processes | None = None):
        self.procs = processes or Processes(cfg.check().device)
        self.timesteps = check_inputs(model, dataset, cfg, self.procs.world)
        self.cfg, self.dataset = cfg, Mirrored(dataset) if cfg.flip else dataset
        self.progress = progress and self.procs.main
        self.folder = folder or RunFolder(cfg.out, main=self.procs.main)
        resuming = self.folder.open(cfg.run_identity(), resume, overwrite, cfg.iterations)  # every rank
        try:
            self.device = self.procs.device(cfg.device)
            self.parts = p = make_parts(model, cfg, self.device, self.timesteps, extractor, self.procs.gather_with_grad)
            self.speed, self.unet, self.net, self.model, self.extractor, self.opt, self.schedule, _, self.objective = p
            self.iteration = restore(self.folder.load("cpu") if resuming else None, self.parts, cfg.lr)
            self._norm = torch.nn.utils.get_total_norm(self.unet.parameters()).item()  # for adam_step's check
        except BaseException:
            self.folder.unlock()
            raise
        self.overwrite, self.fresh, self._stepped = overwrite, not resuming, False

    @functools.cached_property
    def real(self) -> PrecomputedReal | StreamedReal:
        """Real features per iteration (``real_features.real_feature_source``)."""
        return real_feature_source(self.dataset, self.extractor, self.cfg.batch_size, self.cfg.seed, self.device,
                                   self.objective.autocast, self.cfg.workers, part=(self.procs.rank, self.procs.world),
                                   gather=self.procs.gather_with_grad, end=self.cfg.iterations)

    @functools.cached_property
    def memory(self) -> dict:
        """The gradient-checkpointing plan (``speed.plan_memory``) for this process's share of the batch."""
        return plan_memory(self.unet, self.extractor, self.timesteps, self.model.alphas_cumprod,
                           self.model.sample_shape, self.procs.share(self.cfg.batch_size)[1], self.device, self.speed,
                           self.cfg.checkpointing, self.cfg.memory_gib, self.cfg.sampler, **self.objective.sampler_kw)

    @property
    def checkpoint_steps(self) -> int:
        """How many sampler steps (the first ones, from x_T) are recomputed in backward."""
        return self.memory["checkpointed"]

    def current_timesteps(self) -> list:
        """The timesteps the chain steps through now: the fixed ones, or the learnt schedule's (floats)."""
        return self.timesteps if self.schedule is None else self.schedule().tolist()

    def loss(self, it: int) -> torch.Tensor:
        """Iteration ``it``'s loss on the global batch, this process generating its share (``train_seeds``). With
        dropout, torch's generator is seeded from the "dropout" stream just before the chain: a resume repeats masks."""
        real, self.objective.checkpoint = self.real(it), self.checkpoint_steps
        if self.schedule is not None:
            self.objective.timesteps = self.schedule()  # real-valued, with their gradient
        if self.cfg.dropout is not None:
            torch.manual_seed(stream_seed("dropout", self.cfg.seed, it * self.procs.world + self.procs.rank))
        return self.objective(self.net, real, train_seeds(self.cfg, it, self.procs))

    def step(self) -> tuple[float, float]:
        """One iteration (loss, backward, clipping, Adam); returns (loss, gradient norm). Under "auto"
        checkpointing, running out of memory switches to checkpointing every step and retries once."""
        try:
            return self._step()
        except torch.OutOfMemoryError as e:
            checkpoint_everything(self.memory, f"at iteration {self.iteration} (batch {self.cfg.batch_size})", e)
        release(self.parts, self.device)  # outside the except block, so the failed iteration's graph is gone
        if self.progress:
            tqdm.write("out of memory: now checkpointing every sampler step")
        return self._step()

    def _step(self) -> tuple[float, float]:
        self.unet.train(self.cfg.dropout is not None)
        loss, p = self.loss(self.iteration), self.parts
        try:
            gnorm, self._norm = adam_step(loss, [o for o in (p.opt, p.opt_t) if o], [] if p.opt is None else list(
                self.unet.parameters()), self.cfg.grad_clip, self._norm, [] if p.schedule is None else list(
                p.schedule.parameters()), self.procs.average_gradients)
        except Unstable as e:  # every checkpoint was written after a step that passed, so the last one is good
            raise unstable(self.folder, e, self.iteration, self.cfg.lr, self.cfg.save_every, self._stepped) from None
        self.iteration, self._stepped = self.iteration + 1, True
        return loss.item(), gnorm

    def save_checkpoint(self) -> None:
        self.folder.save(state(self.parts), self.iteration, timesteps=self.current_timesteps())

    def save_grid(self, name: str) -> None:
        """64 samples from the "grid" stream's fixed noise (the same in every run), by the main process."""
        if self.procs.main:
            self.unet.eval()
            x = grid_samples(self.model, self.cfg.budget, sampler=self.cfg.sampler, eta=self.cfg.eta,
                             device=self.device, timesteps=self.current_timesteps())
            save_grid(x, self.folder.path / "samples" / f"{name}.png")

    def run(self) -> Path:
        """Finetune up to cfg.iterations, checkpointing and logging; export the pipeline; return its folder."""
        cfg, path = self.cfg, self.folder.path / "finetuned"
        try:  # the record is written when the run starts (every rank has checked and loaded), not before
            self.procs.barrier()
            self.folder.start({"identity": cfg.run_identity(), "iterations": cfg.iterations,
                               "timesteps": self.current_timesteps()}, self.iteration, self.overwrite)
            self.procs.barrier()
            if self.iteration == 0:
                self.save_grid("iter_000000")
            with tqdm(total=cfg.iterations, initial=self.iteration, desc=f"MMD-DDM {cfg.budget} steps",
                      disable=not self.progress) as bar, sharing_cores():  # bar closed before an error prints
                if self.progress and self.memory["policy"] == "auto" and self.checkpoint_steps:
                    bar.write(describe_plan(self.memory))
                while self.iteration < cfg.iterations:
                    rebalance()  # its share of the CPU's cores beside other mmdlib runs (mmdlib.cores)
                    t0 = time.perf_counter()
                    loss, gnorm = self.step()
                    self.folder.log({"iteration": self.iteration, "loss": f"{loss:.6g}", "grad_norm": f"{gnorm:.4g}",
                                     "seconds": f"{time.perf_counter() - t0:.4f}", **schedule_row(self.parts)})
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
                    if self.iteration % cfg.save_every == 0 or self.iteration == cfg.iterations:
                        self.save_checkpoint()
                    if self.iteration % cfg.sample_every == 0 or self.iteration == cfg.iterations:
                        self.save_grid(f"iter_{self.iteration:06d}")
            self.unet.eval()
            if self.procs.main:
                save_pipeline(self.unet, path, cfg.budget, self.model.alphas_cumprod, cfg.spacing,
                              meta={"finetune": dataclasses.asdict(cfg)}, sampler=cfg.sampler, eta=cfg.eta,
                              timesteps=None if self.schedule is None else self.current_timesteps())
            self.procs.barrier()
            return path
        except BaseException as e:
            raise stopped(self.folder, e, self.iteration, self.fresh) from None
        finally:
            self.folder.unlock()


def finetune(model: LoadedModel, dataset: Dataset, config: FinetuneConfig, **kw) -> Path:
    """Finetune ``model`` on ``dataset`` with ``config``; returns the exported pipeline folder. ``kw``:
    ``Finetuner``'s (folder, extractor, resume, overwrite, progress)."""
    return Finetuner(model, dataset, config, **kw).run()
