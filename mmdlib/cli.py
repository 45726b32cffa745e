"""Command line: ``python -m mmdlib {finetune,evaluate,demo,convert} --help``."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from . import devices
from .cache import atomic_write
from .config import EVAL_PRECISIONS, EvalConfig, FinetuneConfig
from .errors import Interrupted, MMDLibError
from .features import FEATURES, INCEPTION_SPACES
from .outputs import check_output_folder
from .presets import PRESETS, get_preset
from .runfolder import RunFolder, check_resume_overwrite
from .sampling import SAMPLERS

HELP = {
    "model": "base model: 'digits' (embedded), a paper model (cifar10, church, celeba64, imagenet64: downloaded and "
             "converted on first use), a hub id, a folder or an original checkpoint file",
    "dataset": "real data: digits, cifar10, celeba64, church, imagenet64, or a folder of images",
    "split": "dataset split: train, test or all",
    "data_root": "folder holding the dataset files (default data/<dataset>)",
    "features": f"feature space of the MMD loss: {', '.join(FEATURES)}",
    "kernel": "MMD kernel: cubic (paper default), linear, rbf",
    "budget": "the sampling budget |tau| to finetune for (diffusers' num_inference_steps)",
    "timestep_spacing": "which |tau| of the T timesteps: auto (the sampler's own: linear for ddim and ddpm, trailing "
                        "for dpmpp2m and unipc), linear (DDIM uniform), quadratic or trailing",
    "sampler": "sampler differentiated through: " + ", ".join(f"{s.name} ({s.title})" for s in SAMPLERS.values()),
    "eta": "DDIM eta in [0, 1] (0 = deterministic DDIM, the paper's setting; 1 = DDPM-like)",
    "batch_size": "generated and real images per iteration",
    "lr": "Adam learning rate",
    "adam_betas": "Adam betas",
    "adam_eps": "Adam epsilon",
    "iterations": "finetuning iterations",
    "dropout": "dropout through the chain while finetuning: none (the network in eval mode) or p (train mode, every "
               "dropout layer at p; the official code uses the model's training dropout, 0.1 for CIFAR-10 and CelebA)",
    "flip": "mirror the real images at random, yes or no (the official code does)",
    "learn_timesteps": "learn where the chain steps, with the same loss (from the spacing in force; the budget's "
                       "timesteps become real numbers, exported with the pipeline): yes or no",
    "timestep_lr": "Adam learning rate for the learnt timesteps' logits",
    "freeze_weights": "keep the network's weights and learn the timesteps alone (with --learn-timesteps): yes or no",
    "grad_clip": "maximum gradient norm",
    "checkpointing": "recompute sampler steps in the backward pass (less memory, same gradients): auto (the fewest "
                     "steps that fit in --memory-gib), all or none",
    "memory_gib": "GiB the run may use, for --checkpointing auto (default: 90%% of the GPU's free memory, half the "
                  "CPU's available memory)",
    "precision": "numeric precision: auto (bf16 autocast on CUDA, fp32 elsewhere), fp32 or bf16; the MMD is always "
                 "float64",
    "compile": "torch.compile the UNet: auto (on for CUDA), on or off",
    "seed": "seed of real batches and noise (results do not depend on batch split)",
    "out": "output folder: finetuned/ pipeline, checkpoint.pt, log.csv, samples/",
    "save_every": "write checkpoint.pt every N iterations",
    "sample_every": "write a sample grid every N iterations",
    "workers": "DataLoader workers for real images (at most the cores: more are capped)",
    "device": "auto, cpu, cuda, cuda:1, ...",
}


def yes_no(text: str) -> bool:
    """A command-line boolean: yes/no, true/false, on/off or 1/0."""
    value = {"yes": True, "true": True, "on": True, "1": True, "no": False, "false": False, "off": False, "0": False}
    if str(text).lower() not in value:
        raise argparse.ArgumentTypeError(f"expected yes or no, got {text!r}")
    return value[str(text).lower()]


def float_or_none(text: str) -> float | None:
    """A command-line number, or none."""
    if str(text).lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, got {text!r}") from None


# a config field's type (as its annotation reads) -> how its flag parses
PARSERS = {"int": int, "float": float, "str": str, "str | None": str, "bool": yes_no, "float | None": float_or_none}


class Renamed(argparse.Action):
    """A flag's earlier spelling: still accepted (until 0.3), with a note saying its new name."""

    def __init__(self, *args, new: str, **kw):
        super().__init__(*args, **kw)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is now spelt {self.new} (the old spelling goes in 0.3)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_renamed(group, new: str, *old: str, **kw) -> None:
    """Accept the earlier spellings ``old`` of the flag ``new`` (hidden from --help)."""
    group.add_argument(*old, action=Renamed, new=new, help=argparse.SUPPRESS, **kw)


RENAMED = {"budget": ["--timesteps", "--num-inference-steps"], "timestep_spacing": ["--schedule"]}  # finetune's


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per FinetuneConfig field. A flag not given takes its value from the preset (``--preset``, else
    the one named like ``--dataset``: ``digits`` when no dataset is given), or, for a dataset without a
    preset, from FinetuneConfig (the paper's settings): the presets and the config are the one source of
    defaults, shared with the demo and the notebooks."""
    p.add_argument("--preset", default=None, choices=list(PRESETS),
                   help="named settings the flags not given are taken from (default: the preset named like "
                        "--dataset, so digits without --dataset; a dataset without a preset takes the paper's "
                        "settings)")
    paper, digits = FinetuneConfig(), PRESETS["digits"].finetune
    groups = {"method": p.add_argument_group("method (what is learnt; part of a run's identity)"),
              "execution": p.add_argument_group("execution (how it runs: the same math; numeric precision changes "
                                                "numbers)"),
              "output": p.add_argument_group("output")}
    for f in dataclasses.fields(FinetuneConfig):
        flag, default, mine = "--" + f.name.replace("_", "-"), getattr(paper, f.name), getattr(digits, f.name)
        text = HELP[f.name] + ("" if default is None and mine is None else f" (default: {default})" if mine == default
                               else f" (the paper: {default}; digits preset: {mine})")
        group = groups[f.metadata["group"]]
        kw = (dict(type=float, nargs=len(default)) if isinstance(default, tuple) else dict(type=PARSERS[str(f.type)]))
        if f.type == "bool":  # a bare --flag says yes
            kw |= dict(nargs="?", const=True)
        group.add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=text, **kw)
        if f.name in RENAMED:
            add_renamed(group, flag, *RENAMED[f.name], dest=f.name, default=argparse.SUPPRESS, **kw)


def config_from_args(a: argparse.Namespace) -> FinetuneConfig:
    """The flags given, over the preset's settings (see ``add_config_flags``)."""
    given = {f.name: getattr(a, f.name) for f in dataclasses.fields(FinetuneConfig) if hasattr(a, f.name)}
    if "adam_betas" in given:
        given["adam_betas"] = tuple(given["adam_betas"])
    dataset = given.get("dataset", "digits")
    name = a.preset or (dataset if dataset in PRESETS else None)
    return dataclasses.replace(get_preset(name).finetune if name else FinetuneConfig(), **given)


def cmd_finetune(a: argparse.Namespace) -> None:
    from . import get_feature_extractor, load_model  # through the package, where tests stand in for them
    from .finetune import finetune, real_dataset

    cfg = config_from_args(a).check()
    check_resume_overwrite(a.resume, a.overwrite)
    given = {f for f in ("timestep_lr", "memory_gib") if hasattr(a, f)}  # flags given on the command line
    if "timestep_lr" in given and not cfg.learn_timesteps:
        raise MMDLibError("--timestep-lr is the learnt timesteps' learning rate; without --learn-timesteps yes it "
                          "would be ignored. Add --learn-timesteps yes, or drop it.")
    if "memory_gib" in given and cfg.checkpointing != "auto":
        raise MMDLibError(f"--memory-gib is what --checkpointing auto plans within; with --checkpointing "
                          f"{cfg.checkpointing} it would be ignored. Drop one of them.")
    if a.inception_weights is not None and cfg.features not in INCEPTION_SPACES:
        raise MMDLibError(f"--inception-weights is for the Inception spaces ({', '.join(INCEPTION_SPACES)}); the "
                          f"features are {cfg.features!r}.")
    if a.dinov2_weights is not None and cfg.features != "dinov2":
        raise MMDLibError(f"--dinov2-weights is for the dinov2 space; the features are {cfg.features!r}.")
    devices.pick_device(cfg.device)  # one this machine has, before any loading
    procs = devices.Processes(cfg.device)
    folder = RunFolder(cfg.out, main=procs.main)  # a usable --out, before any loading
    model = load_model(cfg.model)
    dataset = real_dataset(cfg, model, a.download)
    weights = a.inception_weights or a.dinov2_weights
    extractor = get_feature_extractor(cfg.features, **({"weights_path": weights} if weights else {}))
    path = finetune(model, dataset, cfg, folder=folder, extractor=extractor, resume=a.resume,
                    overwrite=a.overwrite, processes=procs)
    print(f"finetuned pipeline: {path}")


def cmd_evaluate(a: argparse.Namespace) -> None:
    from . import load_model
    from .evaluate import evaluate, results_file, results_json

    try:
        budgets = tuple(int(b) for b in a.budgets.split(","))
    except ValueError:
        raise MMDLibError(f"--budgets must be comma-separated integers, e.g. 5,10,20; got {a.budgets!r}.") from None
    cfg = EvalConfig(dataset=a.dataset, split=a.split, data_root=a.data_root, budgets=budgets,
                     features=tuple(a.features.split(",")), n=a.n, seeds=a.seeds, sampler=a.sampler, eta=a.eta,
                     timestep_spacing=a.timestep_spacing, precision=a.precision, reference=a.reference).check()
    out = results_file(a.out) if a.out else None
    model = load_model(a.model)
    res = evaluate(model, cfg, inception_weights=a.inception_weights, dinov2_weights=a.dinov2_weights,
                   download=a.download)
    text, undefined = results_json(res)
    if out is not None:
        atomic_write(out, lambda tmp: tmp.write_text(text))
    print(text)
    if undefined:
        raise MMDLibError(f"{len(undefined)} score(s) came out NaN or infinite ({', '.join(undefined[:3])}"
                          f"{', ...' if len(undefined) > 3 else ''}); they are written as null. The samples or "
                          f"the features were not finite: check the model.")


def cmd_demo(a: argparse.Namespace) -> None:
    from .demo import demo_folder, run_demo

    check_resume_overwrite(a.resume, a.overwrite)
    m = run_demo(a.out, budget=a.budget, iterations=a.iterations, n=a.n, seeds=a.seeds, overwrite=a.overwrite,
                 resume=a.resume, folder=demo_folder(a.out))
    print(json.dumps({k: m[k] for k in ("fid_before", "fid_after", "fid_many_steps", "many_steps", "gap_closed",
                                        "feature_space", "budget")}))


def cmd_convert(a: argparse.Namespace) -> None:
    from .convert import convert_to_folder

    out = convert_to_folder(a.src, check_output_folder(a.out), a.overwrite, fmt=a.format, size=a.size, heads=a.heads,
                            dropout=a.dropout, schedule=a.beta_schedule, T=a.num_train_timesteps,
                            rescale_timesteps=not a.no_rescale_timesteps)
    print(f"wrote {out}: mmdlib.load_model({str(out)!r}) or diffusers.DiffusionPipeline.from_pretrained")


def _finetune_parser(ft: argparse.ArgumentParser) -> None:
    add_config_flags(ft)
    ft.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    ft.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    ft.add_argument("--download", action="store_true", help="let torchvision download the dataset if missing")
    ft.add_argument("--inception-weights", default=None, help="local torch-fidelity Inception weights file, for the "
                    f"Inception spaces ({', '.join(INCEPTION_SPACES)}) offline")
    ft.add_argument("--dinov2-weights", default=None, help="local DINOv2 ViT-L/14 weights file, for dinov2 offline")
    ft.set_defaults(func=cmd_finetune)


def _evaluate_parser(ev: argparse.ArgumentParser) -> None:
    e = EvalConfig()  # the one source of evaluation defaults
    ev.add_argument("--model", default="digits", help=HELP["model"])
    ev.add_argument("--dataset", default=e.dataset, help="the real images scored against")
    ev.add_argument("--split", default=e.split, help="their split")
    ev.add_argument("--data-root", default=e.data_root, help=HELP["data_root"])
    ev.add_argument("--download", action="store_true", help="let torchvision download the dataset if missing")
    ev.add_argument("--budgets", default=",".join(map(str, e.budgets)), help="comma-separated sampling budgets")
    ev.add_argument("--features", default=",".join(e.features),
                    help="comma-separated feature spaces (inception adds the Inception Score; inception-spatial gives "
                         "sFID; clip gives FID_CLIP; dinov2 gives FD_DINOv2)")
    ev.add_argument("--n", type=int, default=e.n, help="generated samples per budget and seed (10 or more)")
    ev.add_argument("--seeds", type=int, default=len(e.seeds),
                    help="number of evaluation seeds k (1..256): seeds 0..k-1, mean and std reported")
    ev.add_argument("--sampler", default=e.sampler, help=", ".join(SAMPLERS))
    ev.add_argument("--eta", type=float, default=e.eta, help="DDIM eta in [0, 1] (ddim only)")
    ev.add_argument("--timestep-spacing", dest="timestep_spacing", default=e.timestep_spacing,
                    help=HELP["timestep_spacing"])
    add_renamed(ev, "--timestep-spacing", *RENAMED["timestep_spacing"], dest="timestep_spacing")
    ev.add_argument("--inception-weights", default=None, help="local torch-fidelity Inception weights file")
    ev.add_argument("--dinov2-weights", default=None, help="local DINOv2 ViT-L/14 weights file (for dinov2 offline)")
    ev.add_argument("--reference", default=None, help="an ADM reference batch (.npz with mu, sigma, mu_s, sigma_s, "
                    "e.g. VIRTUAL_imagenet64_labeled.npz): FID and sFID against its statistics, as published tables")
    ev.add_argument("--precision", default=e.precision, choices=list(EVAL_PRECISIONS),
                    help="numeric precision; bf16: sample and embed under bf16 autocast (faster on GPUs, not exact)")
    ev.add_argument("--out", default=None, help="also write the JSON here (a new file, or earlier results it "
                    "replaces; a score that is not finite is written as null)")
    ev.set_defaults(func=cmd_evaluate)


def _demo_parser(de: argparse.ArgumentParser) -> None:
    preset = PRESETS["digits"]
    de.add_argument("--out", required=True, help="output folder: metrics.json, base/, finetuned/, grids")
    de.add_argument("--budget", type=int, default=preset.finetune.budget, help=HELP["budget"])
    add_renamed(de, "--budget", *RENAMED["budget"], dest="budget", type=int)
    de.add_argument("--iterations", type=int, default=preset.finetune.iterations, help="finetuning iterations")
    de.add_argument("--n", type=int, default=preset.evaluation.n,
                    help="generated samples per budget and seed for the metrics")
    de.add_argument("--seeds", type=int, default=len(preset.evaluation.seeds),
                    help="evaluation seeds for the metrics (mean and std reported)")
    de.add_argument("--resume", action="store_true", help="continue an interrupted demo in --out")
    de.add_argument("--overwrite", action="store_true", help="replace a demo already in --out")
    de.set_defaults(func=cmd_demo)


def _convert_parser(co: argparse.ArgumentParser) -> None:
    from .convert import FORMATS
    from .schedules import SCHEDULES

    co.description = "Each format's defaults: " + "; ".join(
        f"{n}: size {f.size}, {f.schedule} betas over {f.T} steps, dropout {f.dropout}"
        for n, f in FORMATS.items()) + ". Everything else is read from the weights."
    co.add_argument("src", help="the checkpoint file (a state dict, a module.-prefixed one, or the DDIM code's list of "
                                "states, whose EMA weights are taken)")
    co.add_argument("--out", required=True, help="the folder to write (a diffusers pipeline)")
    co.add_argument("--format", choices=list(FORMATS), default=None, help="default: detected from the keys")
    co.add_argument("--size", type=int, default=None, help="image size (default: the format's)")
    co.add_argument("--heads", type=int, default=4, help="improved-diffusion's attention heads (not in the weights)")
    co.add_argument("--dropout", type=float, default=None,
                    help="the training dropout to record (default: the format's)")
    co.add_argument("--beta-schedule", choices=list(SCHEDULES), default=None,
                    help="the training noise schedule (default: the format's)")
    add_renamed(co, "--beta-schedule", "--schedule", dest="beta_schedule", choices=list(SCHEDULES))
    co.add_argument("--num-train-timesteps", type=int, default=None,
                    help="T, the training timesteps (default: the format's)")
    add_renamed(co, "--num-train-timesteps", "--timesteps", dest="num_train_timesteps", type=int)
    co.add_argument("--no-rescale-timesteps", action="store_true",
                    help="improved-diffusion: feed the network t, not t * 1000 / T")
    co.add_argument("--overwrite", action="store_true", help="replace a non-empty --out that convert wrote")
    co.set_defaults(func=cmd_convert)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(prog="python -m mmdlib", description="MMD-DDM: finetune diffusion models for few-step "
                                "sampling with an MMD loss (Aiello et al., IEEE Access 2024).")
    p.add_argument("--version", action="version", version=f"mmdlib {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _finetune_parser(sub.add_parser("finetune", help="finetune a model for a sampling budget"))
    _evaluate_parser(sub.add_parser("evaluate", help="FID/KID of a model across budgets",
                                    formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    _demo_parser(sub.add_parser("demo", help="the embedded offline default end to end (digits)",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter))
    _convert_parser(sub.add_parser("convert", help="an original DDPM-port or improved-diffusion checkpoint as a "
                                   "diffusers folder"))
    return p


# what Ctrl-C leaves, where the run does not say more itself (errors.Interrupted)
INTERRUPTED = {"finetune": "interrupted before the run started; nothing was written.",
               "demo": "interrupted; rerun the same command with --resume to continue (finished scores are cached).",
               "evaluate": "interrupted; nothing was written (--out is written when the evaluation completes).",
               "convert": "interrupted; nothing was written (--out is written whole or not at all)."}


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` asks for; bad input is one line and exit 2, Ctrl-C one line and exit 130."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MMDLibError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(str(e) if isinstance(e, Interrupted) and str(e) else INTERRUPTED[args.command], file=sys.stderr)
        return 130
    return 0
