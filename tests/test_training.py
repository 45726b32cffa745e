"""What a run trains with and one guarded Adam step: refused blow-ups leave the weights as they were; a
checkpoint's contents restore the weights, the optimisers and the learnt timesteps."""
import pytest
import torch
from helpers import TinyFeatures, tiny_model

from mmdlib.config import FinetuneConfig
from mmdlib.training import Unstable, adam_step, make_parts, restore, state


def parts(**kw):
    cfg = FinetuneConfig(features="digits-a", budget=3, batch_size=4, device="cpu", **kw)
    return make_parts(tiny_model(), cfg, torch.device("cpu"), [0, 333, 666], TinyFeatures())


def test_frozen_weights_have_no_optimiser_and_learnt_timesteps_have_their_own():
    p = parts(learn_timesteps=True, freeze_weights=True, timestep_lr=0.3)
    assert p.opt is None and p.opt_t.defaults["lr"] == 0.3 and not any(q.requires_grad for q in p.unet.parameters())
    assert p.schedule().tolist() == [0.0, 333.0, 666.0] and p.objective.timesteps == [0, 333, 666]
    q = parts()
    assert q.schedule is None and q.opt_t is None and all(w.requires_grad for w in q.unet.parameters())


def test_a_checkpoints_contents_restore_weights_optimisers_and_schedule():
    a, b = parts(learn_timesteps=True), parts(learn_timesteps=True)
    weights, extra = list(a.unet.parameters()), list(a.schedule.parameters())
    loss = (a.objective(a.net, torch.randn(4, 16), [1, 2, 3, 4]))
    adam_step(loss, [a.opt, a.opt_t], weights, 1.0, torch.nn.utils.get_total_norm(weights).item(), extra)
    assert restore({**state(a), "iteration": 7}, b, lr=1e-4) == 7
    assert torch.equal(b.schedule(), a.schedule()) and b.opt.param_groups[0]["lr"] == 1e-4
    assert all(torch.equal(x, y) for x, y in zip(a.unet.parameters(), b.unet.parameters()))
    assert b.opt_t.state_dict()["state"].keys() == a.opt_t.state_dict()["state"].keys()


def test_an_unstable_step_is_refused_before_the_weights_change():
    p = parts()
    weights = list(p.unet.parameters())
    before = [w.detach().clone() for w in weights]
    norm = torch.nn.utils.get_total_norm(weights).item()
    with pytest.raises(Unstable, match="the loss became nan"):
        adam_step(torch.tensor(float("nan")), [p.opt], weights, 1.0, norm)
    loss = p.objective(p.net, torch.randn(4, 16), [1, 2, 3, 4]) * float("inf")
    with pytest.raises(Unstable, match="the loss became inf"):
        adam_step(loss, [p.opt], weights, 1.0, norm)
    assert all(torch.equal(w, b) for w, b in zip(weights, before))
    p.opt.param_groups[0]["lr"] = 1e6  # a step no sane run takes
    loss = p.objective(p.net, torch.randn(4, 16), [1, 2, 3, 4])
    with pytest.raises(Unstable, match="the weights' norm went from"):
        adam_step(loss, [p.opt], weights, 1.0, norm)
