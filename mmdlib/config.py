"""Run settings, the one source of defaults for the CLI, the presets, the notebooks and papermill:
``FinetuneConfig`` (paper Sec. IV-A: what a finetune learns, how it runs, what it writes) and ``EvalConfig``
(how a model is scored). A config checks its values (``check``) and never touches the hardware: whether a
device exists is asked when a run starts (``devices.pick_device``).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from .data import check_root
from .devices import check_device_name
from .errors import MMDLibError
from .features import ADM_STATISTICS, FEATURES
from .mmd import KERNELS
from .sampling import SAMPLERS, get_sampler, resolve_spacing
from .schedules import TIMESTEP_SPACINGS
from .speed import COMPILE, PRECISIONS
from .streams import MAX_INDEX, MAX_SEED, stream_seed, stream_seeds

CHECKPOINTING = ("auto", "all", "none")  # gradient checkpointing: which sampler steps backward recomputes
TIMESTEP_LR = 0.05  # Adam's lr for learnt timesteps' logits (benchmarks/RESULTS.md: the sweep that chose it)
EVAL_PRECISIONS = ("fp32", "bf16")
# the fewest samples every metric is defined on: the Inception Score splits them into 10 parts (metrics.METRICS'
# is_splits) and precision/recall take each sample's 3 nearest neighbours among the others (prc_neighbours)
MIN_EVAL_N = 10


def _setting(default, group: str, identity: bool | None = None):
    """A ``FinetuneConfig`` field in its group: "method" (what is learnt), "execution" (how it runs) or
    "output" (what is written). ``identity``: whether two runs that differ in it are different runs (by
    default the method settings are and the others are not), which ``--resume`` and the cache keys check."""
    identity = group == "method" if identity is None else identity
    return dataclasses.field(default=default, metadata={"group": group, "identity": identity})


# settings added after 0.1.0, left out of a run's identity while off, so runs from before keep theirs (and
# timestep_lr while the timesteps are not learnt)
OFF_SINCE_0_1 = {"dropout": None, "flip": False, "learn_timesteps": False, "freeze_weights": False}


def _known(field: str, value, known, what: str = "") -> None:
    if value not in known:
        raise MMDLibError(f"unknown {field}{what} {value!r}; known: {', '.join(known)}.")


@dataclasses.dataclass
class FinetuneConfig:
    """Every finetuning setting and its default (the paper's, Sec. IV-A); the named presets
    (``mmdlib.presets``) start from it."""

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
    dropout: float | None = _setting(None, "method")
    flip: bool = _setting(False, "method")  # real images mirrored at random (the official code does)
    # learn where the chain steps (timesteps.LearnedTimesteps, from the spacing in force) with the same loss
    learn_timesteps: bool = _setting(False, "method")
    timestep_lr: float = _setting(TIMESTEP_LR, "method")  # Adam's learning rate for the timesteps' logits
    freeze_weights: bool = _setting(False, "method")  # learn the timesteps alone (the LD3/GITS family, on the MMD)
    seed: int = _setting(0, "method")
    # execution: the same math however it runs, except numeric precision, which changes the numbers
    checkpointing: str = _setting("auto", "execution")  # recompute sampler steps in backward: "auto", "all", "none"
    memory_gib: float | None = _setting(None, "execution")  # what "auto" checkpointing may use
    precision: str = _setting("auto", "execution", identity=True)  # numeric: "fp32" or "bf16" (autocast)
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
            _known(field, getattr(self, field), known)
        if self.batch_size < 2:
            raise MMDLibError(f"batch size {self.batch_size} is too small: the unbiased MMD^2 needs at least 2 "
                              f"samples per side; use --batch-size 2 or more (the paper uses 128).")
        for field in ("iterations", "save_every", "sample_every"):
            if getattr(self, field) < 1:
                raise MMDLibError(f"{field} must be >= 1, got {getattr(self, field)}.")
        for field, known in (("precision", PRECISIONS), ("compile", COMPILE), ("checkpointing", CHECKPOINTING)):
            _known(field, getattr(self, field), known, " setting")
        if self.memory_gib is not None and not 0 < self.memory_gib < math.inf:
            raise MMDLibError(f"memory_gib must be a finite number > 0 (GiB the run may use), got {self.memory_gib}.")
        if not 0 < self.lr < math.inf:
            raise MMDLibError(f"learning rate must be a finite number > 0, got {self.lr}.")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise MMDLibError(f"adam_betas must be two numbers in [0, 1), got {tuple(self.adam_betas)}.")
        if not 0 < self.adam_eps < math.inf:
            raise MMDLibError(f"adam_eps must be a finite number > 0, got {self.adam_eps}.")
        if self.workers < 0:
            raise MMDLibError(f"workers must be >= 0 (0 loads real images in the main process), got {self.workers}.")
        check_device_name(self.device)
        check_root(self.dataset, self.data_root)
        if not 0 < self.grad_clip < math.inf:
            raise MMDLibError(f"grad_clip (the largest gradient norm) must be a finite number > 0, got "
                              f"{self.grad_clip}; the paper's code clips at 0.5.")
        get_sampler(self.sampler).options(self.eta)
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise MMDLibError(f"dropout must be None (eval mode, no dropout) or a probability in [0, 1), got "
                              f"{self.dropout}.")
        if not 0 < self.timestep_lr < math.inf:
            raise MMDLibError(f"timestep_lr must be a finite number > 0, got {self.timestep_lr}.")
        if self.freeze_weights and not self.learn_timesteps:
            raise MMDLibError("freeze_weights leaves nothing to learn unless learn_timesteps is on: pass "
                              "--learn-timesteps too (the timesteps alone), or drop --freeze-weights.")
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
        if not self.learn_timesteps:
            del d["timestep_lr"]
        return d


@dataclasses.dataclass
class EvalConfig:
    """Every evaluation setting, with the digits defaults: FID/KID/precision/recall (and IS where the space
    has a classifier) of ``n`` samples per budget and evaluation seed, in each feature space of ``features``,
    against ``dataset``/``split``."""

    dataset: str = "digits"
    split: str = "all"
    data_root: str | None = None
    budgets: tuple[int, ...] = (5, 10, 20)
    features: tuple[str, ...] = ("digits-a", "digits-b")  # the feature spaces scored in
    n: int = 5000  # generated samples per budget and seed
    seeds: tuple[int, ...] = (0, 1, 2)  # evaluation seeds (an int k means 0..k-1); mean and std over them
    sampler: str = "ddim"
    eta: float = 0.0
    timestep_spacing: str = "auto"  # which |tau| timesteps a budget visits: the sampler's own, or TIMESTEP_SPACINGS
    precision: str = "fp32"  # numeric; "bf16": sample and embed under bf16 autocast (faster on GPUs, not exact)
    timesteps: tuple[float, ...] | None = None  # explicit (e.g. learnt) timesteps, for the one budget they make
    reference: str | None = None  # an ADM reference batch (.npz): FID and sFID against its statistics

    def __post_init__(self):
        if isinstance(self.seeds, int) and not isinstance(self.seeds, bool):
            if not 1 <= self.seeds <= MAX_SEED + 1:
                raise MMDLibError(f"seeds must be between 1 and {MAX_SEED + 1} (the number of evaluation seeds, used "
                                  f"as seeds 0..k-1; each is its own stream of samples), got {self.seeds}.")
            self.seeds = tuple(range(self.seeds))
        self.seeds, self.budgets = tuple(int(s) for s in self.seeds), tuple(int(b) for b in self.budgets)
        self.features = (self.features,) if isinstance(self.features, str) else tuple(self.features)
        if self.timesteps is not None:
            self.timesteps = tuple(float(t) if not float(t).is_integer() else int(t) for t in self.timesteps)

    @property
    def spacing(self) -> str:
        """The timestep spacing in force: ``timestep_spacing``, with "auto" resolved to the sampler's own."""
        return resolve_spacing(self.sampler, self.timestep_spacing)

    def check(self) -> "EvalConfig":
        """Refuse bad values with a message naming the value and what is allowed, before any work."""
        if self.n < MIN_EVAL_N:
            raise MMDLibError(f"n must be >= {MIN_EVAL_N} generated samples per budget and seed (the Inception Score "
                              f"splits them into 10 parts; precision and recall need 3 neighbours each), got {self.n}; "
                              f"published scores use 5,000 to 50,000.")
        if not self.seeds or not self.budgets or not self.features:
            raise MMDLibError("seeds, budgets and features must each name at least one value.")
        if min(self.budgets) < 1:
            raise MMDLibError(f"budgets must be sampling step counts >= 1, got {list(self.budgets)}.")
        for s in self.features:
            _known("feature space", s, FEATURES)
        _known("evaluation precision", self.precision, EVAL_PRECISIONS)
        check_root(self.dataset, self.data_root)
        get_sampler(self.sampler).options(self.eta)
        resolve_spacing(self.sampler, self.timestep_spacing)  # a known spacing
        if self.timesteps is not None and self.budgets != (len(self.timesteps),):
            raise MMDLibError(f"explicit timesteps make one budget, {len(self.timesteps)}; budgets are "
                              f"{list(self.budgets)}.")
        for seed in self.seeds:
            stream_seeds("eval", seed, [0, self.n - 1])
        if self.reference is not None:
            if not Path(self.reference).is_file():
                raise MMDLibError(f"reference {str(self.reference)!r} is not a file (an ADM reference batch, .npz).")
            if not set(self.features) & set(ADM_STATISTICS):
                raise MMDLibError(f"a reference batch holds statistics for {', '.join(ADM_STATISTICS)}; none of them "
                                  f"is among the features {', '.join(self.features)}.")
        return self
