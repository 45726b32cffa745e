"""An independent reference for the ``ddpm`` checkpoint format: the DDPM UNet (Ho et al. 2020, Appendix B;
the PyTorch port the DDIM code base loads) as a plain functional forward pass over a state dict in the
original key layout, with its architecture given explicitly (never read from the keys, as the converter
does), and random weights in that layout."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


SMALL = dict(ch_mult=(1, 2, 2), blocks=2, attn=(1,))  # a small architecture the tests use


def random_state(ch=32, ch_mult=(1, 2, 2), blocks=2, attn=(1,), in_ch=3, out_ch=3, seed=0) -> dict:
    """Random weights named as the original checkpoints name them (``attn``: the levels with attention)."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def conv(name, o, i, k=3):
        state[f"{name}.weight"] = torch.randn(o, i, k, k, generator=g) / math.sqrt(i * k * k)
        state[f"{name}.bias"] = 0.1 * torch.randn(o, generator=g)

    def linear(name, o, i):
        state[f"{name}.weight"] = torch.randn(o, i, generator=g) / math.sqrt(i)
        state[f"{name}.bias"] = 0.1 * torch.randn(o, generator=g)

    def norm(name, c):
        state[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        state[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)

    def block(name, i, o):
        norm(f"{name}.norm1", i), conv(f"{name}.conv1", o, i), linear(f"{name}.temb_proj", o, 4 * ch)
        norm(f"{name}.norm2", o), conv(f"{name}.conv2", o, o)
        if i != o:
            conv(f"{name}.nin_shortcut", o, i, 1)

    def attention(name, c):
        norm(f"{name}.norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", c, c, 1)

    linear("temb.dense.0", 4 * ch, ch), linear("temb.dense.1", 4 * ch, 4 * ch)
    conv("conv_in", ch, in_ch)
    widths, c = [ch * m for m in ch_mult], ch
    for i, w in enumerate(widths):
        for j in range(blocks):
            block(f"down.{i}.block.{j}", c, w)
            c = w
            if i in attn:
                attention(f"down.{i}.attn.{j}", w)
        if i != len(widths) - 1:
            conv(f"down.{i}.downsample.conv", w, w)
    block("mid.block_1", c, c), attention("mid.attn_1", c), block("mid.block_2", c, c)
    skips = [ch] + widths  # the channels of what each level's last up block concatenates
    for i in reversed(range(len(widths))):
        w = widths[i]
        for j in range(blocks + 1):
            block(f"up.{i}.block.{j}", c + (w if j < blocks else skips[i]), w)
            c = w
            if i in attn:
                attention(f"up.{i}.attn.{j}", w)
        if i != 0:
            conv(f"up.{i}.upsample.conv", w, w)
    norm("norm_out", c), conv("conv_out", out_ch, c)
    return state


def forward(state: dict, x: torch.Tensor, t: torch.Tensor, ch_mult=(1, 2, 2), blocks=2, attn=(1,)) -> torch.Tensor:
    """eps(x, t) of the DDPM UNet with ``state``'s weights (eval mode: no dropout)."""
    S = state
    ch = S["conv_in.weight"].shape[0]

    def lin(h, n):
        return F.linear(h, S[f"{n}.weight"], S[f"{n}.bias"])

    def conv(h, n, stride=1, pad=1):
        return F.conv2d(h, S[f"{n}.weight"], S[f"{n}.bias"], stride, pad)

    def gn(h, n):
        return F.group_norm(h, 32, S[f"{n}.weight"], S[f"{n}.bias"], eps=1e-6)

    def res(h, n, emb):
        r = conv(F.silu(gn(h, f"{n}.norm1")), f"{n}.conv1") + lin(F.silu(emb), f"{n}.temb_proj")[:, :, None, None]
        r = conv(F.silu(gn(r, f"{n}.norm2")), f"{n}.conv2")
        return (conv(h, f"{n}.nin_shortcut", pad=0) if f"{n}.nin_shortcut.weight" in S else h) + r

    def att(h, n):
        B, C, H, W = h.shape
        hn = gn(h, f"{n}.norm")
        q, k, v = (conv(hn, f"{n}.{p}", pad=0).reshape(B, C, H * W) for p in "qkv")
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(C), dim=-1)  # [B, query, key]
        return h + conv(torch.einsum("bij,bcj->bci", w, v).reshape(B, C, H, W), f"{n}.proj_out", pad=0)

    half = ch // 2  # sinusoidal features, sin then cos, frequencies 10000^(-i / (half - 1))
    a = t.float()[:, None] * torch.exp(-math.log(10000) * torch.arange(half) / (half - 1))[None]
    emb = lin(F.silu(lin(torch.cat([a.sin(), a.cos()], 1), "temb.dense.0")), "temb.dense.1")
    hs = [conv(x, "conv_in")]
    for i in range(len(ch_mult)):
        for j in range(blocks):
            h = res(hs[-1], f"down.{i}.block.{j}", emb)
            hs.append(att(h, f"down.{i}.attn.{j}") if i in attn else h)
        if i != len(ch_mult) - 1:
            hs.append(conv(F.pad(hs[-1], (0, 1, 0, 1)), f"down.{i}.downsample.conv", stride=2, pad=0))
    h = res(att(res(hs[-1], "mid.block_1", emb), "mid.attn_1"), "mid.block_2", emb)
    for i in reversed(range(len(ch_mult))):
        for j in range(blocks + 1):
            h = res(torch.cat([h, hs.pop()], 1), f"up.{i}.block.{j}", emb)
            h = att(h, f"up.{i}.attn.{j}") if i in attn else h
        if i != 0:
            h = conv(F.interpolate(h, scale_factor=2.0, mode="nearest"), f"up.{i}.upsample.conv")
    return conv(F.silu(gn(h, "norm_out")), "conv_out")
