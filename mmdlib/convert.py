"""The paper's base models from their original checkpoints: converters to diffusers folders.

Two formats (``FORMATS``):

- ``ddpm``: the PyTorch port of the DDPM checkpoints (Ho et al. 2020) that the DDIM code base and the
  official MMD-DDM code load (keys ``temb.dense.0.weight``, ``down.1.attn.0.q.weight``, ``mid.block_1...``):
  a ``UNet2DModel``; linear betas 1e-4..0.02 over 1000 steps.
- ``improved-diffusion``: openai/improved-diffusion's UNet (keys ``input_blocks.1.0.in_layers.0.weight``):
  an ``ImprovedUNet2DModel`` (``mmdlib.unets``: a fixed head count, legacy q/k/v order, and the network fed
  t * 1000 / T as ``rescale_timesteps`` does); cosine betas over 4000 steps. A learned variance (6 output
  channels) is dropped: channels 0..C-1 are eps, which every mmdlib sampler and DDIM use.

Everything the weights determine (widths, blocks per level, where attention sits, in/out channels, scale-shift
norm) is read from the state dict; what they do not (image size, head count, GroupNorm groups, dropout, the
schedule) comes from the format's defaults or the caller.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from .cache import cached, check_finite, file_hash
from .errors import MMDLibError, unreadable
from .export import save_pipeline, write_folder
from .schedules import SCHEDULES, alphas_cumprod


@dataclasses.dataclass(frozen=True)
class Format:
    size: int  # image size when not given
    schedule: str  # betas (schedules.SCHEDULES)
    T: int
    dropout: float  # the training dropout (not in the weights): what finetuning in train mode uses
    marker: str  # a key every checkpoint of the format has


FORMATS = {
    "ddpm": Format(size=32, schedule="linear", T=1000, dropout=0.1, marker="temb.dense.0.weight"),
    "improved-diffusion": Format(size=64, schedule="cosine", T=4000, dropout=0.0, marker="time_embed.0.weight"),
}


def _is_state(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj) and \
        any(torch.is_tensor(v) for v in obj.values())


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, which weights were taken) from a checkpoint file: a bare state dict, a ``module.``-prefixed
    one, the DDIM code's list of states whose last element is the EMA state, or a dict holding an ``ema``
    state. The EMA weights are taken wherever the file has them."""
    path = Path(path)
    if not path.is_file():
        raise MMDLibError(f"no checkpoint file at {str(path)!r}.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, empty, not a torch file, or pickled objects beyond tensors and containers
        raise unreadable(path, "a checkpoint", e) from None
    if isinstance(obj, (list, tuple)):
        states = [i for i, o in enumerate(obj) if _is_state(o)]
        if not states:
            raise MMDLibError(f"{str(path)!r} holds a list with no state dict in it.")
        # the DDIM code saves [model, optimizer, epoch, step, ema]: with EMA on, the last is the EMA state
        taken = ("the EMA weights (the last of its list of states, as the DDIM code saves them)" if len(obj) >= 5
                 and states[-1] == len(obj) - 1 and states[-1] != 0 else f"the state at index {states[-1]} of its list")
        obj = obj[states[-1]]
    elif isinstance(obj, dict) and not _is_state(obj):
        key = next((k for k in ("ema", "ema_model", "state_dict", "model") if _is_state(obj.get(k))), None)
        if key is None:
            raise MMDLibError(f"{str(path)!r} holds a dict without weights (keys: {', '.join(list(obj)[:8])}).")
        taken = "the EMA weights (its 'ema' entry)" if key.startswith("ema") else f"its {key!r} entry (not EMA)"
        obj = obj[key]
    elif _is_state(obj):
        taken = "the file's only weights (a bare state dict: EMA or not is not recorded in it)"
    else:
        raise MMDLibError(f"{str(path)!r} holds a {type(obj).__name__}, not model weights.")
    state = {k.removeprefix("module."): v for k, v in obj.items() if torch.is_tensor(v)}
    return state, taken


def detect_format(state: dict) -> str:
    for name, f in FORMATS.items():
        if f.marker in state:
            return name
    raise MMDLibError(f"the weights are in no known format (known: {', '.join(FORMATS)}; first keys: "
                      f"{', '.join(list(state)[:5])}).")


def _levels(state: dict, pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


def _linear(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], w.shape[1])  # a 1x1 conv (or conv1d) weight as a Linear's


class _Placed(dict):
    """The converted tensors by diffusers name, and (``used``) the source names they came from."""

    def __init__(self):
        super().__init__()
        self.used: set[str] = set()


def _take(state: dict, src: str, out: _Placed, dst: str, fn=lambda w: w) -> None:
    for p in ("weight", "bias"):
        if f"{src}.{p}" in state:
            out[f"{dst}.{p}"] = fn(state[f"{src}.{p}"]) if p == "weight" else state[f"{src}.{p}"]
            out.used.add(f"{src}.{p}")


def unet_for(fmt: str, size: int, channels: int, widths, blocks: int, attn, dropout: float = 0.0,
             scale_shift: bool = True, heads: int = 4, timestep_scale: float = 1.0):
    """The empty diffusers network of format ``fmt`` (``widths``: channels per level; ``attn``: whether each
    level has attention, the up path mirroring the down path as both originals do)."""
    common = dict(sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=list(widths),
                  layers_per_block=blocks, down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
                  up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
                  norm_num_groups=32, act_fn="silu", attention_head_dim=None, dropout=dropout)
    if fmt == "ddpm":  # DDPM: GroupNorm(32, eps 1e-6), sin-then-cos features over half - 1, asymmetric down padding
        from diffusers import UNet2DModel

        return UNet2DModel(**common, norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1, downsample_padding=0)
    from .unets import ImprovedUNet2DModel

    return ImprovedUNet2DModel(**common, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
                               resnet_time_scale_shift="scale_shift" if scale_shift else "default",
                               attention_heads=heads, timestep_scale=timestep_scale)


def _ddpm(state: dict, size: int, dropout: float):
    levels = _levels(state, r"down\.(\d+)\.")
    blocks = _levels(state, r"down\.0\.block\.(\d+)\.")
    attn = [f"down.{i}.attn.0.q.weight" in state for i in levels]
    widths = [state[f"down.{i}.block.0.conv1.weight"].shape[0] for i in levels]
    if any("conv_shortcut" in k for k in state):
        raise MMDLibError("this ddpm checkpoint uses 3x3 shortcut convolutions, which UNet2DModel does not have.")
    if state["conv_in.weight"].shape[1] != state["conv_out.weight"].shape[0]:
        raise MMDLibError("this ddpm checkpoint's input and output channels differ; an eps model has them equal.")
    L = len(levels)
    unet = unet_for("ddpm", size, state["conv_in.weight"].shape[1], widths, len(blocks), attn, dropout)
    out = _Placed()
    for a, b in (("temb.dense.0", "time_embedding.linear_1"), ("temb.dense.1", "time_embedding.linear_2"),
                 ("conv_in", "conv_in"), ("norm_out", "conv_norm_out"), ("conv_out", "conv_out")):
        _take(state, a, out, b)

    def resnet(src, dst):
        for a, b in (("norm1", "norm1"), ("conv1", "conv1"), ("temb_proj", "time_emb_proj"), ("norm2", "norm2"),
                     ("conv2", "conv2"), ("nin_shortcut", "conv_shortcut")):
            _take(state, f"{src}.{a}", out, f"{dst}.{b}")

    def attention(src, dst):
        _take(state, f"{src}.norm", out, f"{dst}.group_norm")
        for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
            _take(state, f"{src}.{a}", out, f"{dst}.{b}", _linear)

    for i in levels:
        j = L - 1 - i  # up.{i} sits at level i; diffusers' up_blocks run from the lowest level up
        for b in blocks:
            resnet(f"down.{i}.block.{b}", f"down_blocks.{i}.resnets.{b}")
            if attn[i]:
                attention(f"down.{i}.attn.{b}", f"down_blocks.{i}.attentions.{b}")
        for b in range(len(blocks) + 1):
            resnet(f"up.{i}.block.{b}", f"up_blocks.{j}.resnets.{b}")
            if f"up.{i}.attn.{b}.q.weight" in state:
                attention(f"up.{i}.attn.{b}", f"up_blocks.{j}.attentions.{b}")
        _take(state, f"down.{i}.downsample.conv", out, f"down_blocks.{i}.downsamplers.0.conv")
        _take(state, f"up.{i}.upsample.conv", out, f"up_blocks.{j}.upsamplers.0.conv")
    resnet("mid.block_1", "mid_block.resnets.0")
    attention("mid.attn_1", "mid_block.attentions.0")
    resnet("mid.block_2", "mid_block.resnets.1")
    return unet, out


def _improved(state: dict, size: int, dropout: float, heads: int, timestep_scale: float):
    # input_blocks: [conv_in], then per level `blocks` x [ResBlock (+ attention)] and a Downsample (not last)
    level, levels = [], []  # per level: (input block index, has attention) of each ResBlock
    for k in range(1, max(_levels(state, r"input_blocks\.(\d+)\.")) + 1):
        if f"input_blocks.{k}.0.op.weight" in state:
            levels.append(level)
            level = []
        else:
            level.append((k, f"input_blocks.{k}.1.qkv.weight" in state))
    levels.append(level)
    blocks = len(levels[0])
    if any(len(lv) != blocks for lv in levels) or any(len({a for _, a in lv}) != 1 for lv in levels):
        raise MMDLibError("this improved-diffusion checkpoint has levels with different block counts or with "
                          "attention on only some blocks of a level, which UNet2DModel cannot express.")
    widths = [state[f"input_blocks.{lv[0][0]}.0.out_layers.3.weight"].shape[0] for lv in levels]
    attn = [lv[0][1] for lv in levels]
    scale_shift = state["input_blocks.1.0.emb_layers.1.weight"].shape[0] == 2 * widths[0]
    L = len(levels)
    unet = unet_for("improved-diffusion", size, state["input_blocks.0.0.weight"].shape[1], widths, blocks, attn,
                    dropout, scale_shift, heads, timestep_scale)  # eps only: a learned variance is dropped below
    out = _Placed()
    c = unet.config.in_channels
    for a, b in (("time_embed.0", "time_embedding.linear_1"), ("time_embed.2", "time_embedding.linear_2"),
                 ("input_blocks.0.0", "conv_in"), ("out.0", "conv_norm_out")):
        _take(state, a, out, b)
    out["conv_out.weight"], out["conv_out.bias"] = state["out.2.weight"][:c], state["out.2.bias"][:c]
    out.used.update({"out.2.weight", "out.2.bias"})

    def resnet(src, dst):
        if f"{src}.skip_connection.weight" in state and state[f"{src}.skip_connection.weight"].shape[-1] != 1:
            raise MMDLibError("this improved-diffusion checkpoint uses 3x3 skip convolutions, which UNet2DModel "
                              "does not have.")
        for a, b in (("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_layers.1", "time_emb_proj"),
                     ("out_layers.0", "norm2"), ("out_layers.3", "conv2"), ("skip_connection", "conv_shortcut")):
            _take(state, f"{src}.{a}", out, f"{dst}.{b}")

    def attention(src, dst):
        _take(state, f"{src}.norm", out, f"{dst}.group_norm")
        w, bias = _linear(state[f"{src}.qkv.weight"]), state[f"{src}.qkv.bias"]
        C = w.shape[1]
        # legacy order: the 3C rows are [head 0: q, k, v | head 1: q, k, v | ...], each C / heads wide
        w, bias = w.reshape(heads, 3, C // heads, C), bias.reshape(heads, 3, C // heads)
        for n, name in enumerate(("to_q", "to_k", "to_v")):
            out[f"{dst}.{name}.weight"], out[f"{dst}.{name}.bias"] = w[:, n].reshape(C, C), bias[:, n].reshape(C)
        out.used.update({f"{src}.qkv.weight", f"{src}.qkv.bias"})
        _take(state, f"{src}.proj_out", out, f"{dst}.to_out.0", _linear)

    for i, lv in enumerate(levels):
        for b, (k, a) in enumerate(lv):
            resnet(f"input_blocks.{k}.0", f"down_blocks.{i}.resnets.{b}")
            if a:
                attention(f"input_blocks.{k}.1", f"down_blocks.{i}.attentions.{b}")
        if i < L - 1:
            _take(state, f"input_blocks.{lv[-1][0] + 1}.0.op", out, f"down_blocks.{i}.downsamplers.0.conv")
    resnet("middle_block.0", "mid_block.resnets.0")
    attention("middle_block.1", "mid_block.attentions.0")
    resnet("middle_block.2", "mid_block.resnets.1")
    # output_blocks: per level from the lowest, blocks + 1 x [ResBlock (+ attention) (+ Upsample, last, not level 0)]
    k = 0
    for j in range(L):
        for b in range(blocks + 1):
            resnet(f"output_blocks.{k}.0", f"up_blocks.{j}.resnets.{b}")
            if attn[L - 1 - j]:
                attention(f"output_blocks.{k}.1", f"up_blocks.{j}.attentions.{b}")
            if b == blocks and j < L - 1:
                _take(state, f"output_blocks.{k}.{2 if attn[L - 1 - j] else 1}.conv", out,
                      f"up_blocks.{j}.upsamplers.0.conv")
            k += 1
    return unet, out


def convert_state(state: dict, fmt: str, size: int | None = None, heads: int = 4, dropout: float | None = None,
                  schedule: str | None = None, T: int | None = None, rescale_timesteps: bool = True):
    """(a diffusers UNet with the converted weights, its alphas_cumprod) for a state dict in format ``fmt``.
    ``heads``: improved-diffusion's head count (4 in its ImageNet-64 model; not in the weights). ``schedule``
    and ``T``: the betas (``schedules.SCHEDULES``) and their count, the format's by default.
    ``rescale_timesteps`` (improved-diffusion): the network sees t * 1000 / T, as its checkpoints were trained."""
    if fmt not in FORMATS:
        raise MMDLibError(f"unknown checkpoint format {fmt!r}; known: {', '.join(FORMATS)}.")
    f = FORMATS[fmt]
    schedule, T = schedule or f.schedule, int(T or f.T)
    if schedule not in SCHEDULES:
        raise MMDLibError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}.")
    if f.marker not in state:
        found = next((n for n, g in FORMATS.items() if g.marker in state), None)
        raise MMDLibError(f"these weights are not in the {fmt} format (no {f.marker!r})"
                          + (f"; they look like {found!r}." if found else "."))
    size, dropout = size or f.size, f.dropout if dropout is None else dropout
    try:
        unet, out = (_ddpm(state, size, dropout) if fmt == "ddpm" else
                     _improved(state, size, dropout, heads, 1000 / T if rescale_timesteps else 1.0))
    except (KeyError, IndexError, RuntimeError, ValueError) as e:
        raise MMDLibError(f"the {fmt} weights are incomplete or of an unexpected shape ({type(e).__name__}: "
                          f"{e}).") from None
    unused = sorted(set(state) - out.used)
    if unused:  # weights the network would silently lose
        raise MMDLibError(f"the {fmt} weights hold {len(unused)} tensors this converter does not place (e.g. "
                          f"{', '.join(unused[:3])}): a variant of the architecture it does not know.")
    missing, unexpected = set(unet.state_dict()) - set(out), set(out) - set(unet.state_dict())
    if missing or unexpected:
        raise MMDLibError(f"the {fmt} weights do not fill the network: missing {sorted(missing)[:4]}, "
                          f"unexpected {sorted(unexpected)[:4]}.")
    try:
        unet.load_state_dict(out, strict=True)
    except RuntimeError as e:
        raise MMDLibError(f"the {fmt} weights have unexpected shapes: {str(e).splitlines()[-1].strip()}") from None
    return unet.eval(), alphas_cumprod(SCHEDULES[schedule](T))


def convert(src: str | Path, out: str | Path, fmt: str | None = None, size: int | None = None, heads: int = 4,
            dropout: float | None = None, schedule: str | None = None, T: int | None = None,
            rescale_timesteps: bool = True, verbose: bool = True) -> Path:
    """Convert the checkpoint file ``src`` into a pipeline folder ``out`` that ``mmdlib.load_model`` loads and
    ``diffusers.DiffusionPipeline.from_pretrained`` samples (DDIM, 5 steps by default); settings as
    ``convert_state``'s, ``fmt`` None detects the format. ``mmdlib.json`` records the source file's SHA-256
    and which weights were taken."""
    state, taken = read_checkpoint(src)
    check_finite(state, f"the checkpoint {str(src)!r}")
    fmt = fmt or detect_format(state)
    unet, ac = convert_state(state, fmt, size, heads, dropout, schedule, T, rescale_timesteps)
    if verbose:
        print(f"{Path(src).name}: {fmt} format; took {taken}; {sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M "
              f"parameters, T = {len(ac)}")
    meta = {"converted_from": {"file": Path(src).name, "sha256": file_hash(src), "format": fmt, "weights": taken,
                               "heads": heads if fmt == "improved-diffusion" else None,
                               "dropout": unet.config.dropout}}
    return save_pipeline(unet, out, alphas_cumprod=ac, meta=meta)


def convert_to_folder(src: str | Path, out: str | Path, overwrite: bool = False, **settings) -> Path:
    """``convert`` into ``out`` whole or not at all (``export.write_folder``): a non-empty ``out`` is replaced
    only with ``overwrite`` and only when convert wrote it (its mmdlib.json records ``converted_from``)."""
    return write_folder(out, lambda tmp: convert(src, tmp, **settings), overwrite, "converted_from")


def converted(src: str | Path, fmt: str | None = None, size: int | None = None, heads: int = 4,
              dropout: float | None = None) -> Path:  # the format's schedule
    """The converted folder of checkpoint file ``src`` under $MMDLIB_CACHE/converted, keyed by the file's
    SHA-256 and the settings: converted on first use only."""
    key = {"sha256": file_hash(src), "format": fmt, "size": size, "heads": heads, "dropout": dropout}
    return cached("converted", key, lambda tmp: convert(src, tmp / "model", fmt, size, heads, dropout)) / "model"
