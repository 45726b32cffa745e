import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

import mmdlib
from mmdlib.schedules import alpha_bar, check_timesteps


def test_linear_betas_match_numpy_and_diffusers():
    b = mmdlib.linear_betas(1000)
    assert b.dtype == torch.float64 and b.shape == (1000,)
    np.testing.assert_allclose(b.numpy(), np.linspace(1e-4, 0.02, 1000), rtol=0, atol=1e-15)
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    np.testing.assert_allclose(mmdlib.alphas_cumprod(b).numpy(), sched.alphas_cumprod.numpy(), rtol=1e-5)
    np.testing.assert_allclose(mmdlib.alphas_cumprod(b).numpy(), np.cumprod(1 - np.linspace(1e-4, 0.02, 1000)))


@pytest.mark.parametrize("budget", [1, 2, 5, 10, 20, 50, 100, 1000])
def test_linear_subset_is_ddim_uniform_and_diffusers_leading(budget):
    steps = mmdlib.timestep_subset(budget, 1000, "linear")
    assert steps == list(range(0, 1000, 1000 // budget))  # budgets dividing T: the DDIM "uniform" formula
    sched = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="leading", steps_offset=0)
    sched.set_timesteps(budget)
    assert steps == sorted(sched.timesteps.tolist())


@pytest.mark.parametrize("budget", [3, 7, 15, 30, 300])
def test_linear_subset_keeps_the_budget_when_it_does_not_divide_T(budget):
    # range(0, T, T // budget) has budget + 1 entries here (15 -> 16 steps in the DDIM code); we keep budget.
    steps = mmdlib.timestep_subset(budget, 1000)
    assert steps == list(range(0, 1000, 1000 // budget))[:budget]
    sched = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="leading", steps_offset=0)
    sched.set_timesteps(budget)
    assert len(steps) == budget and steps == sorted(sched.timesteps.tolist())


def test_quadratic_subset_is_ddim_quad():
    # Golden values from the DDIM "quad" rule: floor(linspace(0, sqrt(0.8 T), S)^2).
    assert mmdlib.timestep_subset(5, 1000, "quadratic") == [0, 50, 200, 450, 800]
    steps = mmdlib.timestep_subset(20, 1000, "quadratic")
    assert steps == [int(s) for s in np.linspace(0, np.sqrt(800), 20) ** 2] and len(set(steps)) == 20


@pytest.mark.parametrize("budget", [0, -1, 1001, 2.5, True])
def test_budget_out_of_range(budget):
    with pytest.raises(mmdlib.MMDLibError, match=f"budget must be an integer in 1..T=1000, got {budget!r}"):
        mmdlib.timestep_subset(budget, 1000)


def test_unknown_spacing_lists_known():
    with pytest.raises(mmdlib.MMDLibError, match="unknown timestep spacing 'cosine'; known: linear, quadratic, trailing"):
        mmdlib.timestep_subset(5, 1000, "cosine")


def test_quadratic_repeats_are_refused():
    with pytest.raises(mmdlib.MMDLibError, match="quadratic spacing of 200 steps"):
        mmdlib.timestep_subset(200, 1000, "quadratic")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy 2 copy= notice, once per call
@pytest.mark.parametrize("T", [1000, 4000])
def test_trailing_spacing_is_what_every_diffusers_scheduler_visits(T):
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    schedulers = [S(num_train_timesteps=T, timestep_spacing="trailing")
                  for S in (DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler)]
    for budget in range(1, 60):
        steps = mmdlib.timestep_subset(budget, T, "trailing")
        assert len(steps) == budget and steps[-1] == T - 1
        for sched in schedulers:
            sched.set_timesteps(budget)
            assert sorted(sched.timesteps.tolist()) == steps, (type(sched).__name__, budget)


def test_alpha_bar_between_integers_is_the_table_at_them_and_differentiable_in_between():
    ac = mmdlib.alphas_cumprod(mmdlib.linear_betas())
    t = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(alpha_bar(t, ac), ac, rtol=1e-12, atol=0)
    # in between: log alpha_bar is linear, and the gradient is its slope (a finite difference checks it)
    t = torch.tensor([0.3, 17.5, 500.25, 998.9], dtype=torch.float64, requires_grad=True)
    a = alpha_bar(t, ac)
    lo = t.detach().floor().long()
    want = torch.exp(torch.log(ac[lo]) + (t.detach() - lo) * (torch.log(ac[lo + 1]) - torch.log(ac[lo])))
    torch.testing.assert_close(a.detach(), want, rtol=1e-12, atol=0)
    a.sum().backward()
    h = 1e-6
    fd = (alpha_bar(t.detach() + h, ac) - alpha_bar(t.detach() - h, ac)) / (2 * h)
    torch.testing.assert_close(t.grad, fd, rtol=1e-6, atol=0)


def test_real_valued_timesteps_are_checked_like_integers():
    with pytest.raises(mmdlib.MMDLibError, match="strictly ascending"):
        check_timesteps(torch.tensor([5.0, 3.0], dtype=torch.float64), 1000)
    with pytest.raises(mmdlib.MMDLibError, match="must lie in 0..999"):
        check_timesteps(torch.tensor([5.0, 999.5], dtype=torch.float64), 1000)
    with pytest.raises(mmdlib.MMDLibError, match="finite numbers"):
        check_timesteps(torch.tensor([5.0, float("nan")]), 1000)
    t = torch.tensor([0.5, 998.0], dtype=torch.float64, requires_grad=True)
    assert check_timesteps(t, 1000) is t  # kept as it is, gradient and all
