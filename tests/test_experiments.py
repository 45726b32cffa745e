"""The notebooks' building blocks: cached runs and scores, nearest neighbours, the 2-D toy, the paper's
reported tables, figures, and the smoke switch."""
import dataclasses

import numpy as np
import pytest
import torch
from helpers import make_tiny_unet

import mmdlib
from mmdlib import analysis
from mmdlib import experiments as ex
from mmdlib import toy
from mmdlib.config import FinetuneConfig
from mmdlib.evaluate import evaluate
from mmdlib.export import save_pipeline
from mmdlib.finetune import Finetuner
from mmdlib.models import load_model


@pytest.fixture
def tiny_folder(tmp_path):
    return str(save_pipeline(make_tiny_unet(1, 8), tmp_path / "tiny", budget=2))


def tiny_cfg(folder, **kw):
    base = dict(model=folder, dataset="digits", split="test", features="digits-a", budget=2, batch_size=8,
                lr=1e-3, iterations=3, device="cpu")
    return FinetuneConfig(**{**base, **kw})


def direct_weights(cfg, out):
    """The same finetune run straight through the Finetuner (not through the cache)."""
    ft = Finetuner(load_model(cfg.model), mmdlib.digits_dataset(cfg.split), dataclasses.replace(cfg, out=str(out)),
                   progress=False)
    ft.run()
    return ft.unet.state_dict()


def test_a_cached_finetune_equals_a_direct_one_and_is_not_rerun(tiny_folder, tmp_path, monkeypatch):
    cfg = tiny_cfg(tiny_folder)
    run = ex.finetuned(cfg, progress=False)
    assert list(run.log()["iteration"]) == [1, 2, 3]
    work = ex._work_folder(ex._resolve(cfg)[3])  # where it ran: moved into the cache once done
    assert (run.folder / "finetuned" / "mmdlib.json").is_file() and not work.exists()
    want = direct_weights(cfg, tmp_path / "direct")
    assert all(torch.equal(v, want[k]) for k, v in run.model.unet.state_dict().items())

    monkeypatch.setattr(Finetuner, "run", lambda self: pytest.fail("a cached finetune was run again"))
    again = ex.finetuned(dataclasses.replace(cfg, save_every=1, checkpointing="all"), progress=False)  # same identity
    assert again.folder == run.folder


def test_an_interrupted_finetune_resumes_to_the_same_weights(tiny_folder, tmp_path):
    cfg = tiny_cfg(tiny_folder, iterations=4)
    # a run that stopped after 2 of 4 iterations, left in its run folder
    Finetuner(load_model(tiny_folder), mmdlib.digits_dataset("test"),
              dataclasses.replace(cfg, iterations=2, out=str(ex._work_folder(ex._resolve(cfg)[3]))),
              progress=False).run()
    run = ex.finetuned(cfg, progress=False)
    assert list(run.log()["iteration"]) == [1, 2, 3, 4]
    want = direct_weights(cfg, tmp_path / "direct")
    assert all(torch.equal(v, want[k]) for k, v in run.model.unet.state_dict().items())


def test_cached_scores_equal_evaluate_and_are_not_recomputed(tiny_folder, monkeypatch):
    run = ex.base(tiny_folder)
    kw = dict(dataset="digits", split="test", features=["digits-b"], n=40)
    got = ex.scores(run, budgets=[1, 2], seeds=2, progress=False, **kw)
    assert got == evaluate(run.model, budgets=[1, 2], seeds=[0, 1], progress=False, **kw)
    import mmdlib.evaluate

    monkeypatch.setattr(mmdlib.evaluate, "generate", lambda *a, **k: pytest.fail("cached scores were recomputed"))
    assert ex.scores(run, budgets=[1, 2], seeds=2, progress=False, **kw) == got
    # each (budget, seed) is cached alone: a subset is served from the cache too, in any order
    assert ex.scores(run, budgets=[2], seeds=[1], progress=False, **kw)[2]["digits-b"]["fid"] == \
        got[2]["digits-b"]["fid_per_seed"][1]


def test_nearest_real_images_match_brute_force_and_find_an_image_itself():
    real = mmdlib.digits_dataset("test").images.float()
    fx = mmdlib.get_feature_extractor("digits-b")
    with torch.no_grad():
        f_real = fx(real).double().numpy()
    queries = real[[3, 10, 50]] * 0.9  # dimmer copies: their nearest real image is the original
    d, idx = analysis.nearest_real(queries, "digits", "test", "digits-b", k=4)
    with torch.no_grad():
        f_q = fx(queries).double().numpy()
    brute = np.sqrt(((f_q[:, None] - f_real[None]) ** 2).sum(-1))
    assert idx[:, 0].tolist() == [3, 10, 50]
    assert np.array_equal(idx.numpy(), np.argsort(brute, 1)[:, :4])
    np.testing.assert_allclose(d.numpy(), np.sort(brute, 1)[:, :4], rtol=1e-6)

    nn = analysis.real_nearest_distance("digits", "test", "digits-b", n=20, seed=1)
    pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(1))[:20].numpy()
    full = np.sqrt(((f_real[pick, None] - f_real[None]) ** 2).sum(-1))
    full[np.arange(20), pick] = np.inf  # not itself
    np.testing.assert_allclose(nn.numpy(), full.min(1), rtol=1e-6)


@pytest.mark.slow
def test_the_toy_model_snaps_back_onto_the_ring_after_mmd_finetuning():
    data = toy.toy_data(4000)
    assert data.shape == (4000, 2) and abs(data.norm(dim=1).mean().item() - 1) < 0.01
    model, ac, losses = toy.train_toy(data)  # the theory chapter's settings
    steps = mmdlib.timestep_subset(5)

    def off_ring():
        with torch.no_grad():
            x = mmdlib.ddim_sample(model, torch.randn(1000, 2, generator=torch.Generator().manual_seed(9)), steps, ac)
        return (x.norm(dim=1) - 1).abs().mean().item()

    before = off_ring()
    mmd = toy.finetune_toy(model, data, ac, steps)
    assert np.mean(mmd[-20:]) < np.mean(mmd[:20])
    assert before > 0.3 and off_ring() < 0.25 * before  # the chapter shows 0.35 -> 0.03 (the data: 0.04)


def test_digit_logits_from_features_equal_the_classifier():
    fx = mmdlib.get_feature_extractor("digits-b")
    x = mmdlib.digits_dataset("test").images.float()[:50]
    with torch.no_grad():
        torch.testing.assert_close(fx.logits(fx(x)), fx.net(x), atol=1e-4, rtol=1e-4)


def test_the_smoke_switch_shrinks_the_embedded_default(monkeypatch):
    from mmdlib.pretrain import SMOKE_CONFIG, DigitsModelConfig, default_config

    monkeypatch.delenv("MMDLIB_SMOKE", raising=False)
    assert not mmdlib.smoke_test() and default_config() == DigitsModelConfig()
    monkeypatch.setenv("MMDLIB_SMOKE", "1")
    assert mmdlib.smoke_test() and default_config() == SMOKE_CONFIG


def test_the_data_floor_splits_the_real_images_in_halves_and_samples_once_per_draw(tiny_folder, monkeypatch):
    from mmdlib.generate import generate
    from mmdlib.metrics import fid_from_features

    run, calls = ex.base(tiny_folder), []
    monkeypatch.setattr(ex, "generate", lambda *a, **k: calls.append(k["seed"]) or generate(*a, **k))
    got = ex.data_floor(run, 2, "digits", "test", ("digits-a", "digits-b"), draws=2)
    assert calls == [0, 1]  # one set of samples per draw, embedded in both spaces
    real = mmdlib.digits_dataset("test").images
    x = {d: generate(run.model.unet, 180, mmdlib.timestep_subset(2), run.model.alphas_cumprod, (1, 8, 8), seed=d)
         for d in (0, 1)}
    for space in ("digits-a", "digits-b"):
        fx = mmdlib.get_feature_extractor(space)
        with torch.no_grad():
            f = fx(real).double()
        for d in (0, 1):
            perm = torch.randperm(360, generator=torch.Generator().manual_seed(d))
            a, b = f[perm[:180]], f[perm[180:]]
            assert got[space]["floor"][d] == pytest.approx(fid_from_features(a, b), rel=1e-4)
            with torch.no_grad():
                model = fid_from_features(fx(x[d]).double(), b)
            assert got[space]["model"][d] == pytest.approx(model, rel=1e-4)
            assert 0 < got[space]["floor"][d] < got[space]["model"][d]  # a random tiny model is far from the data
    calls.clear()
    assert ex.data_floor(run, 2, "digits", "test", ("digits-b",), draws=2) == {"digits-b": got["digits-b"]}
    assert calls == []  # cached
    monkeypatch.setattr(ex, "METRICS", {**ex.METRICS, "fid_features": "another"})  # the metrics' code changed
    ex.data_floor(run, 2, "digits", "test", ("digits-b",), draws=2)
    assert calls == [0, 1]  # computed again, as the scores are (a floor computed before 0.2's metrics was kept)


def test_the_nearest_distance_table_tells_copying_from_sampling():
    g = torch.Generator().manual_seed(0)
    real = torch.rand(1000, generator=g) + 1.0
    fresh = torch.rand(1000, generator=g) + 1.0  # as far from the data as real images are from each other
    copies = torch.full((1000,), 0.01)  # every sample a near copy
    t = analysis.nearest_distance_table({"fresh": fresh, "copies": copies}, real)
    share = t["share below real's 10th percentile"]
    assert list(t.index) == ["fresh", "copies", analysis.REAL_ROW]
    assert share["copies"] == 1.0 and abs(share["fresh"] - 0.1) < 0.03 and abs(share[analysis.REAL_ROW] - 0.1) < 0.01
    assert t.loc["copies", "median"] == pytest.approx(0.01) and t.loc[analysis.REAL_ROW, "median"] == pytest.approx(
        real.median().item())


def test_the_toy_model_is_trained_once_and_then_loaded_as_it_was(monkeypatch):
    data = toy.toy_data(300, seed=3)
    trained, ac, losses = toy.train_toy(data, iterations=20, batch=64, seed=3)
    first = toy.trained_toy(data, iterations=20, batch=64, seed=3)
    monkeypatch.setattr(toy, "train_toy", lambda *a, **k: pytest.fail("the cached toy model was trained again"))
    again, ac2, losses2 = toy.trained_toy(data, iterations=20, batch=64, seed=3)
    for got in (first[0], again):
        assert all(torch.equal(v, trained.state_dict()[k]) for k, v in got.state_dict().items())
    assert losses2 == losses and torch.equal(ac2, ac) and not again.training
    with pytest.raises(pytest.fail.Exception):  # other data: another entry
        toy.trained_toy(data[:200], iterations=20, batch=64, seed=3)


def test_a_cached_run_that_learnt_its_timesteps_is_scored_and_sampled_at_them(tiny_folder, monkeypatch):
    cfg = tiny_cfg(tiny_folder, iterations=2, learn_timesteps=True, timestep_lr=0.2)
    run = ex.finetuned(cfg, progress=False)
    learnt = run.learnt()
    assert learnt[0] == 0 and learnt[1] != 500 and ex.base(tiny_folder).learnt() is None
    seen = []
    real_grid = ex.grid_samples
    monkeypatch.setattr(ex, "grid_samples", lambda *a, **k: seen.append(k["timesteps"]) or real_grid(*a, **k))
    ex.same_noise_samples(run, 2, n=4)
    got = ex.scores(run, budgets=[2], dataset="digits", split="test", features=["digits-a"], n=20, seeds=1,
                    progress=False)
    assert seen == [learnt] and got[2]["digits-a"]["fid"] > 0
    assert ex.training_minutes([run]) == pytest.approx(run.log()["seconds"].sum() / 60)
    assert ex.seconds_per_iteration(tiny_cfg(tiny_folder), iterations=1) > 0
