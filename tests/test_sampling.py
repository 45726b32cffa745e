import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler
from helpers import make_tiny_unet

import mmdlib
from mmdlib.schedules import TIMESTEP_SPACINGS

T = 1000
# every registered sampler, and DDIM with eta > 0 (its stochastic form): the conformance tests run over these
CONFORMANCE = [(name, {}) for name in mmdlib.SAMPLERS] + [("ddim", {"eta": 0.7})]
IDS = [name + ("-eta" if kw else "") for name, kw in CONFORMANCE]


def ddim_scheduler() -> DDIMScheduler:
    return DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", set_alpha_to_one=True, clip_sample=False,
                         timestep_spacing="leading", steps_offset=0)


@pytest.mark.parametrize("budget", [1, 5, 20])
def test_ddim_eta0_equals_diffusers_scheduler(tiny_unet, budget):
    sched = ddim_scheduler()
    sched.set_timesteps(budget)
    x_T = mmdlib.noise(range(4), (3, 8, 8))
    with torch.no_grad():
        got = mmdlib.ddim_sample(tiny_unet, x_T, mmdlib.timestep_subset(budget, T), sched.alphas_cumprod)
        x = x_T
        for t in sched.timesteps:
            x = sched.step(tiny_unet(x, t).sample, t, x, eta=0.0).prev_sample
    assert got.shape == x.shape
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)


def test_ddim_eta_positive_equals_diffusers_with_injected_noise(tiny_unet):
    sched = ddim_scheduler()
    sched.set_timesteps(5)
    x_T = mmdlib.noise(range(3), (3, 8, 8))
    with torch.no_grad():
        got = mmdlib.ddim_sample(tiny_unet, x_T, mmdlib.timestep_subset(5), sched.alphas_cumprod, eta=0.7,
                                 generator=torch.Generator().manual_seed(9))
        g, x = torch.Generator().manual_seed(9), x_T
        for i, t in enumerate(sched.timesteps):
            z = torch.randn(x.shape, generator=g) if i < len(sched.timesteps) - 1 else None
            x = sched.step(tiny_unet(x, t).sample, t, x, eta=0.7, variance_noise=z).prev_sample
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)


def test_ddpm_small_equals_diffusers_ddpm_scheduler(tiny_unet):
    steps = mmdlib.timestep_subset(5)
    sched = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", variance_type="fixed_small",
                          clip_sample=False)
    sched.set_timesteps(timesteps=steps[::-1])
    x_T = mmdlib.noise(range(3), (3, 8, 8))
    with torch.no_grad():
        got = mmdlib.ddpm_sample(tiny_unet, x_T, steps, sched.alphas_cumprod,
                                 generator=torch.Generator().manual_seed(5))
        g, x = torch.Generator().manual_seed(5), x_T
        for t in sched.timesteps:
            x = sched.step(tiny_unet(x, t).sample, t, x, generator=g).prev_sample
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_equals_numpy_reference_with_injected_noise(variance):
    # A fixed linear "model" so the numpy reference needs no network: eps(x, t) = 0.3 x + 0.001 t.
    def model(x, t):
        return 0.3 * x + 0.001 * t.to(x.dtype).view(-1, 1, 1, 1)

    ac = mmdlib.alphas_cumprod(mmdlib.linear_betas(T))
    steps = mmdlib.timestep_subset(10, T, "quadratic")
    x_T = mmdlib.noise(range(2), (1, 4, 4), dtype=torch.float64)
    got = mmdlib.ddpm_sample(model, x_T, steps, ac, variance=variance, generator=torch.Generator().manual_seed(1))

    a = ac.numpy()
    g, x = torch.Generator().manual_seed(1), x_T.numpy()
    for k in reversed(range(len(steps))):
        t, s = steps[k], (steps[k - 1] if k > 0 else None)
        a_t, a_s = a[t], (a[s] if s is not None else 1.0)
        beta = 1 - a_t / a_s
        eps = 0.3 * x + 0.001 * t
        x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        mean = np.sqrt(a_s) * beta / (1 - a_t) * x0 + np.sqrt(1 - beta) * (1 - a_s) / (1 - a_t) * x
        var = beta * (1 - a_s) / (1 - a_t) if variance == "small" else beta
        x = mean if s is None else mean + np.sqrt(var) * torch.randn(x.shape, generator=g, dtype=torch.float64).numpy()
    np.testing.assert_allclose(got.numpy(), x, rtol=1e-10, atol=1e-10)


def _grads(model, sampler, checkpoint, **kw):
    model.zero_grad()
    x_T = mmdlib.noise(range(3), (3, 8, 8)).requires_grad_()
    out = sampler(model, x_T, mmdlib.timestep_subset(4), mmdlib.alphas_cumprod(mmdlib.linear_betas()),
                  checkpoint=checkpoint, generator=mmdlib.generators([7, 8, 9]), **kw)
    (out.square().mean() + out.mean()).backward()
    return out.detach(), x_T.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_checkpoint_recomputes_exactly_the_first_k_steps(tiny_unet, monkeypatch):
    import mmdlib.chain as chain

    calls = []
    monkeypatch.setattr(chain, "_checkpoint", lambda fn, i, *a, **kw: calls.append(i) or fn(i, *a))
    _grads(tiny_unet, mmdlib.ddim_sample, 3)
    assert calls == [0, 1, 2]  # the first three of the four steps, from x_T (the largest timesteps)
    with pytest.raises(mmdlib.MMDLibError, match="checkpoint must be True, False or a number of steps >= 0"):
        _grads(tiny_unet, mmdlib.ddim_sample, -1)


def test_any_callable_model_and_learned_variance_output():
    ac = mmdlib.alphas_cumprod(mmdlib.linear_betas())
    x_T = mmdlib.noise([0, 1], (3, 4, 4))
    plain = mmdlib.ddim_sample(lambda x, t: 0.5 * x, x_T, [0, 500], ac)
    two_c = mmdlib.ddim_sample(lambda x, t: torch.cat([0.5 * x, 100 + x], 1), x_T, [0, 500], ac)
    torch.testing.assert_close(plain, two_c)


def test_bad_noise_generators_eta_variance():
    ac = mmdlib.alphas_cumprod(mmdlib.linear_betas())
    with pytest.raises(mmdlib.MMDLibError, match="noise must be a tensor"):
        mmdlib.ddim_sample(lambda x, t: x, torch.randn(5), [0], ac)
    with pytest.raises(mmdlib.MMDLibError, match="got 2 generators for a batch of 3"):
        mmdlib.ddim_sample(lambda x, t: x, torch.randn(3, 1, 2, 2), [0, 10], ac, eta=1.0,
                           generator=mmdlib.generators([1, 2]))
    for eta in (-0.1, 1.5, float("inf"), float("nan")):
        with pytest.raises(mmdlib.MMDLibError, match=r"eta must be a number in \[0, 1\]"):
            mmdlib.ddim_sample(lambda x, t: x, torch.randn(3, 1, 2, 2), [0], ac, eta=eta)
    with pytest.raises(mmdlib.MMDLibError, match="unknown DDPM variance 'medium'"):
        mmdlib.ddpm_sample(lambda x, t: x, torch.randn(3, 1, 2, 2), [0], ac, variance="medium")


def test_slerp_against_numpy():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 4, 4, generator=g, dtype=torch.float64)
    got = mmdlib.slerp(a, b, torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64))
    an, bn = a.numpy().ravel(), b.numpy().ravel()
    th = math.acos(an @ bn / np.linalg.norm(an) / np.linalg.norm(bn))
    ref = (math.sin(0.7 * th) * an + math.sin(0.3 * th) * bn) / math.sin(th)
    np.testing.assert_allclose(got[1].numpy().ravel(), ref, rtol=1e-10)
    torch.testing.assert_close(got[0], a)
    torch.testing.assert_close(got[2], b)


# The multistep solvers against diffusers' schedulers, configured as they are exported: order 2, data
# prediction, a first-order last step onto sigma = 0, "trailing" spacing.
SOLVERS = {
    "dpmpp2m": (mmdlib.dpmpp_2m_sample, lambda: DPMSolverMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", timestep_spacing="trailing", algorithm_type="dpmsolver++",
        solver_order=2, solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero")),
    "unipc": (mmdlib.unipc_sample, lambda: UniPCMultistepScheduler(
        num_train_timesteps=T, beta_schedule="linear", timestep_spacing="trailing", solver_type="bh2",
        solver_order=2, predict_x0=True, lower_order_final=True, final_sigmas_type="zero")),
}


@pytest.mark.parametrize("budget", [1, 2, 3, 5, 10, 20])
@pytest.mark.parametrize("name", SOLVERS)
def test_solvers_equal_diffusers_schedulers(name, budget):
    sampler, scheduler = SOLVERS[name]
    unet = make_tiny_unet().double()
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(budget), dtype=torch.float64)
    sched = scheduler()
    sched.set_timesteps(budget)
    steps = mmdlib.timestep_subset(budget, spacing="trailing")
    assert sorted(sched.timesteps.tolist()) == steps
    with torch.no_grad():
        ours = sampler(unet, x_T, steps, mmdlib.alphas_cumprod(mmdlib.linear_betas()))
        x = x_T.clone()
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
    # diffusers keeps sigmas and steps the sample in float32: ~1e-7 apart
    assert ((ours - x).norm() / x.norm()).item() <= 1e-5


def test_the_solvers_are_not_ddim_and_not_each_other():
    unet, ac = make_tiny_unet().double(), mmdlib.alphas_cumprod(mmdlib.linear_betas())
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = mmdlib.timestep_subset(5, spacing="trailing")
    with torch.no_grad():
        out = {name: mmdlib.get_sampler(name)(unet, x_T, steps, ac) for name in ("ddim", "dpmpp2m", "unipc")}
    for a, b in (("ddim", "dpmpp2m"), ("ddim", "unipc"), ("dpmpp2m", "unipc")):
        assert ((out[a] - out[b]).norm() / out[a].norm()).item() > 1e-3, (a, b)


@pytest.mark.parametrize("name,options", CONFORMANCE, ids=IDS)
class TestEverySampler:
    """What every sampler in the registry must do (the model: diffusers' SchedulerCommonTest)."""

    ac = mmdlib.alphas_cumprod(mmdlib.linear_betas())

    def run(self, name, options, model, seeds, timesteps, **kw):
        return mmdlib.get_sampler(name)(model, mmdlib.noise(seeds, (3, 8, 8), **kw), timesteps, self.ac,
                                        generator=mmdlib.generators(seeds), **options)

    def test_its_record_is_whole(self, name, options):
        s = mmdlib.get_sampler(name)
        assert s is mmdlib.SAMPLERS[name] and s.name == name and s.title and callable(s.plan) and callable(s.update)
        assert s.spacing in TIMESTEP_SPACINGS and s.spacing in s.spacings  # its own spacing can be exported
        assert s.options(options.get("eta", 0.0)) == ({"eta": options.get("eta", 0.0)} if s.eta else {})
        assert s.carried_tensors(options.get("eta")) == s.carried + s.stochastic(options.get("eta"))

    def test_one_step_returns_the_models_data_prediction(self, name, options, tiny_unet):
        x_T = mmdlib.noise([1, 2], (3, 8, 8))
        a = self.ac[600].float()
        with torch.no_grad():
            got = mmdlib.get_sampler(name)(tiny_unet, x_T, [600], self.ac, generator=mmdlib.generators([1, 2]),
                                           **options)
            want = (x_T - (1 - a).sqrt() * tiny_unet(x_T, torch.tensor([600, 600])).sample) / a.sqrt()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    def test_the_same_samples_whatever_the_batch_split(self, name, options, tiny_unet):
        steps, seeds = mmdlib.timestep_subset(5), list(range(100, 108))
        with torch.no_grad():
            whole = self.run(name, options, tiny_unet, seeds, steps)
            parts = [self.run(name, options, tiny_unet, s, steps) for s in (seeds[:4], seeds[4:])]
        torch.testing.assert_close(torch.cat(parts), whole, rtol=1e-5, atol=1e-5)

    def test_the_generator_matters_only_to_a_stochastic_chain(self, name, options, tiny_unet):
        steps, x_T = mmdlib.timestep_subset(4), mmdlib.noise([3], (3, 8, 8))
        with torch.no_grad():
            a, b = (mmdlib.get_sampler(name)(tiny_unet, x_T, steps, self.ac, generator=mmdlib.generators([s]),
                                             **options) for s in (5, 6))
        assert torch.equal(a, b) != mmdlib.get_sampler(name).stochastic(options.get("eta"))

    @pytest.mark.parametrize("checkpoint", [True, 1, 3])  # every step, or the first k (from x_T) of the 4
    def test_checkpointing_gives_the_same_output_and_gradients(self, name, options, tiny_unet, checkpoint):
        out0, gx0, gp0 = _grads(tiny_unet, mmdlib.get_sampler(name), False, **options)
        out1, gx1, gp1 = _grads(tiny_unet, mmdlib.get_sampler(name), checkpoint, **options)
        torch.testing.assert_close(out1, out0)
        torch.testing.assert_close(gx1, gx0, rtol=1e-5, atol=1e-6)
        assert gx0.abs().sum() > 0 and len(gp0) == len(list(tiny_unet.parameters()))
        for n in gp0:
            torch.testing.assert_close(gp1[n], gp0[n], rtol=1e-5, atol=1e-6, msg=n)
        assert sum(g.abs().sum() for g in gp0.values()) > 0

    def test_gradients_pass_gradcheck_in_float64(self, name, options):
        unet = make_tiny_unet(1, 4).double()
        x_T = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64,
                          requires_grad=True)
        steps = mmdlib.timestep_subset(3, spacing="trailing")
        sample = mmdlib.get_sampler(name)

        def chain(x):
            return sample(unet, x, steps, self.ac, generator=mmdlib.generators([4]), **options)

        assert torch.autograd.gradcheck(chain, (x_T,), eps=1e-6, atol=1e-6)

    @pytest.mark.parametrize("timesteps,msg", [([0, 400, 200], "strictly ascending, got \\[0, 400, 200\\]"),
                                               ([0, 0, 5], "strictly ascending"),
                                               ([0, 500, 1000], "must lie in 0..999 .* got \\[0, 500, 1000\\]"),
                                               ([-1, 5], "must lie in 0..999"), ([], "timesteps is empty")])
    def test_bad_timesteps_are_refused(self, name, options, timesteps, msg):
        with pytest.raises(mmdlib.MMDLibError, match=msg):
            mmdlib.get_sampler(name)(lambda x, t: x, torch.randn(2, 1, 2, 2), timesteps, self.ac, **options)


    def test_integer_valued_real_timesteps_give_the_integer_chain(self, name, options, tiny_unet):
        steps, seeds = mmdlib.timestep_subset(4, spacing="trailing"), [5, 6]
        with torch.no_grad():
            ints = self.run(name, options, tiny_unet, seeds, steps)
            reals = self.run(name, options, tiny_unet, seeds, torch.tensor(steps, dtype=torch.float64))
        torch.testing.assert_close(reals, ints, rtol=1e-6, atol=1e-6)

    def test_gradients_with_respect_to_real_valued_timesteps_pass_gradcheck(self, name, options):
        def model(x, t):  # float64 and smooth in t (diffusers' UNets embed t in float32)
            return 0.3 * torch.tanh(x) + 1e-3 * t.to(x.dtype).view(-1, 1, 1, 1) * x.mean((1, 2, 3), keepdim=True).cos()

        x_T = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        t = torch.tensor([150.3, 420.7, 777.1, 998.2], dtype=torch.float64, requires_grad=True)
        sample = mmdlib.get_sampler(name)

        def chain(t):
            return sample(model, x_T, t, self.ac, generator=mmdlib.generators([4, 5]), **options)

        assert torch.autograd.gradcheck(chain, (t,), eps=1e-6, atol=1e-7, rtol=1e-5)
        ends = torch.tensor([0.0, 420.0, 999.0], dtype=torch.float64, requires_grad=True)  # integers and both ends
        chain(ends).sum().backward()
        assert torch.isfinite(ends.grad).all() and (ends.grad != 0).all()
