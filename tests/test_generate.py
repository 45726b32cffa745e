"""Samples for metrics and figures: seeded per sample, 8-bit, bf16 only when asked."""
import pytest
import torch
from helpers import make_tiny_unet

import mmdlib
from mmdlib.generate import generate


def test_generate_is_seeded_per_sample_and_8_bit():
    model = make_tiny_unet(1, 8)
    ac = mmdlib.alphas_cumprod(mmdlib.linear_betas())
    a = generate(model, 6, [0, 500], ac, (1, 8, 8), batch_size=4, seed=3)
    b = generate(model, 6, [0, 500], ac, (1, 8, 8), batch_size=6, seed=3)
    torch.testing.assert_close(a, b, atol=1 / 255 + 1e-6, rtol=0)
    assert (a * 255 - (a * 255).round()).abs().max() < 1e-4 and a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, generate(model, 6, [0, 500], ac, (1, 8, 8), seed=4))


def test_bf16_generation_is_close_and_bad_precision_is_refused():
    model, ac, steps = make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), mmdlib.timestep_subset(5)
    a = generate(model, 16, steps, ac, (1, 8, 8))
    b = generate(model, 16, steps, ac, (1, 8, 8), precision="bf16")
    assert not torch.equal(a, b)  # autocast was on
    assert (a - b).abs().mean() < 0.02  # a few 8-bit levels at most, on average
    with pytest.raises(mmdlib.MMDLibError, match="unknown evaluation precision 'fp16'; known: fp32, bf16"):
        generate(model, 4, steps, ac, (1, 8, 8), precision="fp16")
