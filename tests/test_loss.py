"""The MMD-DDM objective: eq. 7 on the chain's output, differentiable, checked by brute force."""
import pytest
import torch
from helpers import TinyFeatures, tiny_model

import mmdlib
from mmdlib.loss import MMDDDMLoss


def test_the_loss_is_eq_7_on_the_chains_output_and_differentiable():
    model, fx, seeds = tiny_model(), TinyFeatures(), list(range(10, 16))
    steps = mmdlib.timestep_subset(3)
    real = fx(mmdlib.digits_dataset("train").images[:5])
    loss = MMDDDMLoss(fx, shape=(1, 8, 8), timesteps=steps, alphas_cumprod=model.alphas_cumprod,
                      kernel="cubic")(model.unet, real, seeds)
    loss.backward()
    assert all(p.grad is not None for p in model.unet.parameters()) and model.unet.conv_in.weight.grad.abs().sum() > 0
    with torch.no_grad():  # independently: x_T from mmdlib.noise, the DDIM chain, and eq. 7 by brute force
        x = mmdlib.ddim_sample(model.unet, mmdlib.noise(seeds, (1, 8, 8)), steps, model.alphas_cumprod)
        X, Y = fx(((x + 1) / 2).clamp(0, 1)).double().numpy(), real.double().numpy()
    k = lambda a, b: (a @ b / a.size + 1) ** 3
    m, n = len(X), len(Y)
    xx = sum(k(X[i], X[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(Y[i], Y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(X[i], Y[j]) for i in range(m) for j in range(n)) / (m * n)
    assert loss.item() == pytest.approx(xx + yy - 2 * xy, rel=1e-5)



def test_the_loss_takes_the_samplers_options_and_refuses_others():
    model, fx, real = tiny_model(), TinyFeatures(), torch.rand(4, 16)
    settings = dict(shape=(1, 8, 8), timesteps=[0, 500], alphas_cumprod=model.alphas_cumprod)
    seeds = list(range(4))
    with torch.no_grad():
        plain = MMDDDMLoss(fx, **settings)(model.unet, real, seeds)
        noisy = MMDDDMLoss(fx, eta=1.0, **settings)(model.unet, real, seeds)
    assert plain.item() != noisy.item()
    with pytest.raises(mmdlib.MMDLibError, match="eta=0.5 applies to the ddim sampler only"):
        MMDDDMLoss(fx, sampler="unipc", eta=0.5, **settings)
