"""MMD-DDM finetuning (paper Sec. III, Fig. 2; settings of Sec. IV-A).

Each iteration draws a real batch and fresh noise, samples through the short chain *with gradients*,
embeds both sides (real features without gradients), minimises the unbiased MMD^2 (eq. 7) and steps
Adam. Everything random comes from the run seed's own streams (``mmdlib.streams``: "train" per
generated sample, "real-batch" per iteration), so ``resume`` continues to the same weights and no
evaluation or figure ever reuses a training latent.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from .cache import atomic_save
from .errors import MMDLibError
from .features import FEATURES, FeatureExtractor, get_feature_extractor, to_unit
from .mmd import KERNELS, mmd2_unbiased
from .models import LoadedModel, save_pipeline
from .plots import save_grid
from .sampling import SAMPLERS, is_stochastic, noise, sample_seeded, sampler_kwargs
from .schedules import SUBSETS, timestep_subset
from .speed import COMPILE, PRECISIONS, available_bytes, chain_peak, plan_checkpointing, resolve_speed, saved_bytes
from .streams import MAX_INDEX, stream_seed, stream_seeds

CHECKPOINTING = ("auto", "all", "none")


@dataclasses.dataclass
class FinetuneConfig:
    """The one source of defaults for the CLI, the notebooks and papermill (paper Sec. IV-A)."""

    model: str = "digits"  # short name, hub id or folder
    dataset: str = "digits"
    split: str = "train"
    data_root: str | None = None
    features: str = "inception"
    kernel: str = "cubic"
    timesteps: int = 5  # the budget |tau|
    schedule: str = "linear"
    sampler: str = "ddim"
    eta: float = 0.0
    batch_size: int = 128
    lr: float = 5e-6
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    iterations: int = 500
    grad_clip: float = 0.5  # max gradient norm (the official code clips at 0.5)
    checkpointing: str = "auto"  # recompute sampler steps in backward: "auto" (by budget and memory), "all", "none"
    memory_gib: float | None = dataclasses.field(default=None, metadata={"type": float})  # what "auto" may use
    precision: str = "auto"  # "fp32" or "bf16" (networks under autocast; chain state, kernel and MMD stay fp32+)
    compile: str = "auto"  # "on", "off", or "auto" (on for CUDA): torch.compile the UNet
    seed: int = 0
    out: str = "runs/mmd-ddm"
    save_every: int = 50
    sample_every: int = 100
    workers: int = 0
    device: str = "auto"

    def __post_init__(self):
        if isinstance(self.checkpointing, bool):  # True/False as in earlier versions
            self.checkpointing = "all" if self.checkpointing else "none"

    def check(self) -> "FinetuneConfig":
        """Refuse bad values with a message naming the value and what is allowed."""
        for field, known in (("features", FEATURES), ("kernel", KERNELS), ("schedule", SUBSETS),
                             ("sampler", SAMPLERS)):
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
        if not self.lr > 0:
            raise MMDLibError(f"learning rate must be > 0, got {self.lr}.")
        sampler_kwargs(self.sampler, self.eta)
        stream_seed("train", self.seed, 0)  # the seed is in range
        if self.iterations * self.batch_size > MAX_INDEX + 1:
            raise MMDLibError(f"iterations x batch size = {self.iterations * self.batch_size:,} generated samples; a "
                              f"run seed's training stream holds {MAX_INDEX + 1:,}. Use fewer iterations or a smaller "
                              f"batch.")
        return self

    def run_identity(self) -> dict:
        """What makes two runs the same run (iterations may grow on resume; output knobs and checkpointing,
        which gives the same gradients, do not count)."""
        d = dataclasses.asdict(self)
        for k in ("iterations", "out", "save_every", "sample_every", "workers", "device", "compile", "checkpointing",
                  "memory_gib"):
            d.pop(k)
        d["adam_betas"] = list(d["adam_betas"])
        return d


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class _IterationBatches(Sampler):
    """Real-image indices of the global batch for iterations start..end-1, each drawn from the generator of
    draw ``it`` in the run's "real-batch" stream; with ``part=(rank, world)`` only that rank's contiguous share."""

    def __init__(self, n: int, batch: int, seed: int, start: int, end: int, part: tuple[int, int] = (0, 1)):
        self.n, self.batch, self.seed, self.start, self.end, self.part = n, batch, seed, start, end, part

    def __iter__(self) -> Iterator[list[int]]:
        rank, world = self.part
        share = self.batch // world
        for it in range(self.start, self.end):
            g = torch.Generator().manual_seed(stream_seed("real-batch", self.seed, it))
            if self.batch <= self.n:
                idx = torch.randperm(self.n, generator=g)[: self.batch].tolist()
            else:
                idx = torch.randint(self.n, (self.batch,), generator=g).tolist()
            yield idx[rank * share:(rank + 1) * share]

    def __len__(self) -> int:
        return self.end - self.start


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
    """State of one run: model, optimiser, feature extractor, real data, output folder."""

    def __init__(self, model: LoadedModel, dataset: Dataset, cfg: FinetuneConfig,
                 extractor: FeatureExtractor | None = None, resume: bool = False, overwrite: bool = False,
                 progress: bool = True):
        self.cfg, self.model, self.dataset = cfg.check(), model, dataset
        check_fit(model, dataset)
        self.procs = _Processes(cfg.device)
        if cfg.batch_size % self.procs.world:
            raise MMDLibError(f"batch size {cfg.batch_size} (the global batch) does not divide among "
                              f"{self.procs.world} processes; use a multiple of {self.procs.world}.")
        self.progress = progress and self.procs.main
        self.device = self.procs.device(cfg.device)
        self.steps = timestep_subset(cfg.timesteps, model.T, cfg.schedule)
        self.speed = resolve_speed(cfg.precision, cfg.compile, self.device)
        self.unet = self.speed.place(model.unet, self.device).eval()
        self.extractor = self.speed.place(extractor or get_feature_extractor(cfg.features), self.device)
        # the sampler calls `self.net`; compiled or not, it shares its parameters with `self.unet`
        self.net = self.speed.compiled(self.unet)
        self.out = Path(cfg.out)
        self.opt = torch.optim.Adam(self.unet.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps,
                                    **({"fused": True} if self.speed.fused_adam else {}))
        self.iteration = 0
        self._prepare_out(resume, overwrite)
        self.real_features = self._precompute_real()
        self.memory = self._plan_checkpointing()

    # --- output folder, checkpoints -------------------------------------------------------------------
    def _prepare_out(self, resume: bool, overwrite: bool) -> None:
        """Every rank checks the folder; only the main process writes, after all have checked."""
        run_file = self.out / "run.json"
        if run_file.exists() and not overwrite:
            old = json.loads(run_file.read_text())
            if not resume:
                raise MMDLibError(f"the output folder {str(self.out)!r} already holds a run (iteration "
                                  f"{self._saved_iteration()} of {old.get('iterations')}); pass --resume to continue "
                                  f"it, --overwrite to replace it, or choose another --out. Nothing was changed.")
            mine = self.cfg.run_identity()
            diff = {k: (old["identity"].get(k), v) for k, v in mine.items() if old["identity"].get(k) != v}
            if diff:
                raise MMDLibError(f"the output folder {str(self.out)!r} holds a different run; these settings differ "
                                  f"(saved, requested): {diff}. Use another --out, or --overwrite. Nothing was changed.")
            self._load_checkpoint()
        self.procs.barrier()
        if self.procs.main:
            if overwrite:
                for name in ("run.json", "checkpoint.pt", "log.csv", "finetuned", "samples"):
                    p = self.out / name
                    shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            self.out.mkdir(parents=True, exist_ok=True)
            record = {"identity": self.cfg.run_identity(), "iterations": self.cfg.iterations, "timesteps": self.steps}
            (self.out / "run.json").write_text(json.dumps(record, indent=1))
            self._truncate_log()
        self.procs.barrier()

    def _saved_iteration(self) -> int:
        ckpt = self.out / "checkpoint.pt"
        return torch.load(ckpt, map_location="cpu", weights_only=False)["iteration"] if ckpt.exists() else 0

    def _load_checkpoint(self) -> None:
        ckpt_path = self.out / "checkpoint.pt"
        if not ckpt_path.exists():
            return
        ckpt = torch.load(ckpt_path, map_location=self.device, weights_only=False)
        self.unet.load_state_dict(ckpt["unet"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.iteration = ckpt["iteration"]

    def save_checkpoint(self) -> None:
        if not self.procs.main:
            return
        atomic_save({"unet": self.unet.state_dict(), "optimizer": self.opt.state_dict(), "iteration": self.iteration},
                    self.out / "checkpoint.pt")

    def _truncate_log(self) -> None:
        log = self.out / "log.csv"
        if not log.exists():
            return
        rows = [r for r in csv.DictReader(log.open()) if int(r["iteration"]) <= self.iteration]
        with log.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["iteration", "loss", "grad_norm", "seconds"])
            w.writeheader()
            w.writerows(rows)

    def _log(self, row: dict) -> None:
        if not self.procs.main:
            return
        log = self.out / "log.csv"
        new = not log.exists()
        with log.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    # --- the method -------------------------------------------------------------------------------------
    @torch.no_grad()
    def _precompute_real(self) -> torch.Tensor | None:
        """Real features carry no gradient: embed the whole dataset once if they fit in 1 GiB (CIFAR-10's
        50k x 2048 Inception features do), else per batch."""
        if len(self.dataset) * self.extractor.dim * 4 > 2**30:
            return None
        loader = DataLoader(self.dataset, batch_size=500, num_workers=self.cfg.workers)
        with self.speed.autocast(self.device):
            return torch.cat([self.extractor(x.to(self.device)).float() for x, _ in loader])

    def _plan_checkpointing(self) -> dict:
        """How many sampler steps to recompute in backward. "auto" measures the bytes autograd saves for one
        step and for the features at this process's batch, and checkpoints the fewest steps whose
        estimated peak fits in the memory left (``memory_gib``, else what the device has free) after the
        gradients and Adam's two moments."""
        n, policy = len(self.steps), self.cfg.checkpointing
        if policy != "auto":
            return {"policy": policy, "steps": n, "checkpointed": n if policy == "all" else 0}
        params = (*self.unet.parameters(), *self.extractor.parameters())
        share = self.cfg.batch_size // self.procs.world
        x = noise(stream_seeds("memory-plan", 0, range(share)), self.model.sample_shape,
                  device=self.device).requires_grad_()
        stochastic = is_stochastic(self.cfg.sampler, self.cfg.eta)
        with self.speed.autocast(self.device):
            step, x0 = saved_bytes(lambda: SAMPLERS[self.cfg.sampler](self.unet, x, self.steps[:1],
                                                                       self.model.alphas_cumprod, **self._sampler_kw),
                                   exclude=params)
            feats, _ = saved_bytes(lambda: self.extractor(to_unit(x0.float())), exclude=params)
        state = x.nbytes * (2 if stochastic else 1)  # a checkpointed step keeps its input (and its noise)
        trainable = sum(p.numel() * p.element_size() for p in self.unet.parameters() if p.requires_grad)
        available = available_bytes(self.device, self.cfg.memory_gib) - 3 * trainable  # grads + Adam's moments
        k = plan_checkpointing(n, step, state, feats, available)
        gib = 2.0**-30
        return {"policy": "auto", "steps": n, "checkpointed": k, "step_gib": step * gib, "features_gib": feats * gib,
                "available_gib": available * gib, "estimate_gib": chain_peak(n, k, step, state, feats) * gib}

    @property
    def checkpoint_steps(self) -> int:
        """How many sampler steps (the first ones, from x_T) are recomputed in backward."""
        return self.memory["checkpointed"]

    @property
    def _sampler_kw(self) -> dict:
        return sampler_kwargs(self.cfg.sampler, self.cfg.eta)

    def sample(self, seeds: list[int]) -> torch.Tensor:
        """x_0 in [-1, 1] through the short chain (differentiable): each sample's generator draws its x_T,
        then its in-chain noise."""
        return sample_seeded(self.net, seeds, self.model.sample_shape, self.steps, self.model.alphas_cumprod,
                             self.cfg.sampler, device=self.device, checkpoint=self.checkpoint_steps, **self._sampler_kw)

    def loss(self, it: int, real_idx: list[int], real_images: torch.Tensor | None) -> torch.Tensor:
        """Unbiased MMD^2 (eq. 7) on the global batch (kernel sums in float64). Each process generates its
        share of the batch; features are all-gathered with their gradient, so every process computes the
        same estimate as one process with the whole batch would."""
        part = (self.procs.rank, self.procs.world)
        with self.speed.autocast(self.device):
            f_gen = self.extractor(to_unit(self.sample(_noise_seeds(self.cfg, it, part)).float()))
            if self.real_features is not None:  # real_idx is the global batch's
                f_real = self.real_features[torch.as_tensor(real_idx, device=self.real_features.device)]
            else:  # real_images are this rank's share
                with torch.no_grad():
                    f_real = self.procs.gather_with_grad(self.extractor(real_images.to(self.device)).float())
        return mmd2_unbiased(self.procs.gather_with_grad(f_gen.float()), f_real, self.cfg.kernel)

    def step(self, real_idx: list[int] | None, real_images: torch.Tensor | None) -> tuple[float, float]:
        """One iteration (loss, backward, clipping, Adam); returns (loss, gradient norm). Under "auto"
        checkpointing, running out of memory switches to checkpointing every step and retries once."""
        try:
            return self._step(real_idx, real_images)
        except torch.OutOfMemoryError as e:
            if self.memory["policy"] != "auto" or self.checkpoint_steps == len(self.steps):
                raise MMDLibError(f"out of memory at iteration {self.iteration} (batch {self.cfg.batch_size}, "
                                  f"{self.checkpoint_steps} of {len(self.steps)} steps checkpointed); use "
                                  f"--checkpointing all or a smaller --batch-size.") from e
        # outside the except block, so the failed iteration's graph is gone
        self.opt.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.memory["checkpointed"] = len(self.steps)
        if self.progress:
            tqdm.write("out of memory: now checkpointing every sampler step")
        return self._step(real_idx, real_images)

    def _step(self, real_idx, real_images) -> tuple[float, float]:
        loss = self.loss(self.iteration, real_idx, real_images)
        if not torch.isfinite(loss):
            raise MMDLibError(f"the loss became {loss.item()} at iteration {self.iteration}; stopped. The last "
                              f"good state is {self.out / 'checkpoint.pt'} (iteration {self._saved_iteration()}). "
                              f"Lower --lr or check the data.")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.procs.average_gradients(self.unet.parameters())
        gnorm = torch.nn.utils.clip_grad_norm_(self.unet.parameters(), self.cfg.grad_clip)
        if not torch.isfinite(gnorm):
            raise MMDLibError(f"the gradient norm became {gnorm.item()} at iteration {self.iteration}; stopped "
                              f"without stepping. The last good state is {self.out / 'checkpoint.pt'}.")
        self.opt.step()
        self.iteration += 1
        return loss.item(), gnorm.item()

    def save_grid(self, name: str) -> Path | None:
        """64 samples from fixed noise (the "grid" stream: the same at every call and in every run), on the
        main process."""
        if not self.procs.main:
            return None
        with torch.no_grad():
            x = to_unit(self.sample(stream_seeds("grid", 0, range(64))).float())
        return save_grid(x, self.out / "samples" / f"{name}.png")

    def run(self) -> Path:
        """Finetune up to cfg.iterations, checkpointing and logging; export the pipeline; return its folder."""
        cfg = self.cfg
        if self.iteration == 0:
            self.save_grid("iter_000000")
        batches = _IterationBatches(len(self.dataset), cfg.batch_size, cfg.seed, self.iteration, cfg.iterations)
        if self.real_features is None:  # load this rank's real images; their features are computed per batch
            mine = _IterationBatches(len(self.dataset), cfg.batch_size, cfg.seed, self.iteration, cfg.iterations,
                                     part=(self.procs.rank, self.procs.world))
            loader = DataLoader(self.dataset, batch_sampler=mine, num_workers=cfg.workers)
            stream = ((None, x) for x, _ in loader)
        else:
            stream = ((idx, None) for idx in batches)
        bar = tqdm(total=cfg.iterations, initial=self.iteration, desc=f"MMD-DDM {cfg.timesteps} steps",
                   disable=not self.progress)
        if self.progress and self.memory["policy"] == "auto" and self.checkpoint_steps:
            bar.write(f"checkpointing {self.checkpoint_steps} of {len(self.steps)} sampler steps (estimated "
                      f"{self.memory['estimate_gib']:.1f} GiB of activations, {self.memory['available_gib']:.1f} GiB "
                      f"available)")
        for idx, real in stream:
            t0 = time.perf_counter()
            loss, gnorm = self.step(idx, real)
            self._log({"iteration": self.iteration, "loss": f"{loss:.6g}", "grad_norm": f"{gnorm:.4g}",
                       "seconds": f"{time.perf_counter() - t0:.4f}"})
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            if self.iteration % cfg.save_every == 0 or self.iteration == cfg.iterations:
                self.save_checkpoint()
            if self.iteration % cfg.sample_every == 0 or self.iteration == cfg.iterations:
                self.save_grid(f"iter_{self.iteration:06d}")
        bar.close()
        path = self.out / "finetuned"
        if self.procs.main:
            save_pipeline(self.unet, path, cfg.timesteps, self.model.alphas_cumprod, cfg.schedule,
                          meta={"finetune": dataclasses.asdict(self.cfg)}, sampler=cfg.sampler, eta=cfg.eta)
        self.procs.barrier()
        return path


def finetune(model: LoadedModel, dataset: Dataset, config: FinetuneConfig, **kw) -> Path:
    """Finetune ``model`` on ``dataset`` with ``config``; returns the exported DDIMPipeline folder."""
    return Finetuner(model, dataset, config, **kw).run()
