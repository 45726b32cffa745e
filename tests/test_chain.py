"""What every sampler's chain shares: per-sample noise, the network's eps at a time, the times and alpha_bar a
chain steps through, and the loop that recomputes its first steps in backward."""
import pytest
import torch

import mmdlib
from mmdlib import chain


def test_noise_is_per_sample_whatever_the_batch():
    whole = chain.noise([3, 4, 5], (1, 2, 2))
    assert torch.equal(torch.cat([chain.noise([3], (1, 2, 2)), chain.noise([4, 5], (1, 2, 2))]), whole)
    assert torch.equal(whole[0], torch.randn(1, 2, 2, generator=torch.Generator().manual_seed(3)))
    with pytest.raises(mmdlib.MMDLibError, match="got 2 generators for a batch of 3"):
        chain.randn((3, 1), chain.generators([1, 2]))


def test_the_network_gets_integer_or_real_time_and_eps_is_its_first_channels():
    seen = []

    def model(x, t):
        seen.append(t)
        return torch.cat([x * 0.5, x + 9], 1)  # a learned variance's 2C channels

    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(chain.predict_eps(model, x, 7), x * 0.5)
    t = torch.tensor(7.25, dtype=torch.float64, requires_grad=True)
    chain.predict_eps(model, x, t)
    assert seen[0].dtype == torch.long and seen[0].tolist() == [7, 7]
    assert seen[1].dtype == torch.float64 and seen[1].tolist() == [7.25, 7.25] and seen[1].requires_grad


def test_times_descend_from_x_T_and_alpha_bar_ends_at_one():
    ac = mmdlib.alphas_cumprod(mmdlib.linear_betas())
    ts, a = chain.times([0, 500], ac)
    assert ts == [500, 0] and a == [float(ac[500]), float(ac[0]), 1.0]
    ts, a = chain.times(torch.tensor([0.0, 499.5], dtype=torch.float64), ac)
    assert [t.item() for t in ts] == [499.5, 0.0] and a[-1] == 1.0
    assert float(ac[500]) < a[0].item() < float(ac[499])  # between its integers
    with pytest.raises(mmdlib.MMDLibError, match="alphas_cumprod must be a 1-D tensor"):
        chain.times([0], torch.tensor([0.5, 1.5]))
    with pytest.raises(mmdlib.MMDLibError, match="noise must be a tensor"):
        chain.check_noise(torch.randn(3))


def test_the_loop_recomputes_the_first_k_steps_and_draws_outside_them(monkeypatch):
    recomputed, drawn = [], []
    monkeypatch.setattr(chain, "_checkpoint", lambda fn, i, *a, **k: recomputed.append(i) or fn(i, *a))

    def step(i, x, z):
        return (x + z,)

    x = torch.zeros(2, requires_grad=True)
    out = chain.run(step, (x,), 4, 2, draw=lambda i, x: drawn.append(i) or (torch.full_like(x, i),))
    assert recomputed == [0, 1] and drawn == [0, 1, 2, 3] and out[0].tolist() == [6.0, 6.0]
    assert [chain.checkpointed(c, 4) for c in (True, False, 2, 9)] == [4, 0, 2, 4]
    with pytest.raises(mmdlib.MMDLibError, match="checkpoint must be True, False or a number of steps >= 0"):
        chain.checkpointed(-1, 4)


def test_the_scalar_helpers_take_floats_and_tensors_alike():
    for f, ref in ((chain.sqrt, 2.0), (chain.expm1, 6.38905609893065), (chain.log, 1.3862943611198906)):
        v = 4.0 if f is not chain.expm1 else 2.0
        assert f(v) == pytest.approx(ref) and f(torch.tensor(v)).item() == pytest.approx(ref)
    assert chain.nonneg(-1.0) == 0.0 and chain.nonneg(torch.tensor(-1.0)).item() == 0.0
