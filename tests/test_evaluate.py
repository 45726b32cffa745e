import numpy as np
import pytest
import scipy.linalg
import torch
from helpers import make_tiny_unet

import mmdlib
from mmdlib.evaluate import EvalConfig, evaluate, fid_from_features, generate, kid_from_features, reference_features
from mmdlib.report import space_table, table
from mmdlib.models import LoadedModel


def test_fid_matches_a_scipy_reference():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 6)), rng.normal(0.4, 1.3, size=(300, 6))
    m1, m2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid_from_features(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, rel=1e-6)


def test_kid_is_the_unbiased_cubic_mmd_on_subsets():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 8, generator=g, dtype=torch.float64), torch.randn(50, 8, generator=g, dtype=torch.float64) + 1
    kid, _ = kid_from_features(a, b, subsets=1, subset_size=50)
    assert kid == pytest.approx(mmdlib.mmd2_unbiased(a, b, "cubic").item(), rel=1e-9)


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


def test_reference_features_are_cached(monkeypatch):
    f1 = reference_features("digits", "test", "digits-a")
    monkeypatch.setattr("mmdlib.evaluate.embed", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    f2 = reference_features("digits", "test", "digits-a")
    assert f1.shape == (360, mmdlib.get_feature_extractor("digits-a").dim) and torch.equal(f1, f2)


def test_evaluate_returns_a_plain_dict_and_a_table():
    m = LoadedModel(make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny")
    res = evaluate(m, dataset="digits", split="test", budgets=(1, 2), spaces=("digits-b",), n=40, seeds=(0, 1),
                   progress=False)
    assert set(res) == {1, 2} and set(res[1]["digits-b"]) >= {"fid", "fid_std", "kid", "kid_std", "precision", "recall"}
    row = res[2]["digits-b"]
    assert len(row["fid_per_seed"]) == 2 and res[1]["digits-b"]["fid_std"] > 0
    assert row["fid"] == pytest.approx(np.mean(row["fid_per_seed"])) and row["fid_std"] == pytest.approx(
        np.std(row["fid_per_seed"], ddof=1))
    t = table({"DDIM": res}, "digits-b")
    assert list(t.columns) == ["|T|=1", "|T|=2"] and t.loc["DDIM", "|T|=2"] == f"{row['fid']:.2f} ± {row['fid_std']:.2f}"
    s = space_table({"at 1": res[1], "at 2": res[2]}, ["digits-b"], "tiny", metric="kid", digits=4)
    assert list(s.columns) == ["KID (digits-b)"] and s.columns.name == "tiny" and list(s.index) == ["at 1", "at 2"]
    assert s.loc["at 2", "KID (digits-b)"] == f"{row['kid']:.4f} ± {row['kid_std']:.4f}"
    # the same scores from a config object, and seeds=2 means evaluation seeds 0 and 1
    cfg = EvalConfig(dataset="digits", split="test", budgets=(1, 2), spaces=("digits-b",), n=40, seeds=2)
    assert evaluate(m, cfg, progress=False) == res


def test_inception_space_adds_the_inception_score_and_precision_recall(tmp_path, monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_isc import isc_features_to_metric

    from helpers import write_random_inception_weights
    from mmdlib.data import TensorImages

    # 30 real images, in a cache of this test's own: Inception at 299x299 is slow on a CPU
    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("mmdlib.data.get_dataset", lambda *a, **k: TensorImages(
        mmdlib.digits_dataset("test").images[:30]))
    write_random_inception_weights(tmp_path / "w.pth")
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=str(tmp_path / "w.pth"))
    m = LoadedModel(make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny")
    res = evaluate(m, dataset="digits", split="test", budgets=(1,), spaces=("inception",), n=20, seeds=1,
                   weights_path=tmp_path / "w.pth", progress=False)[1]["inception"]
    assert set(res) >= {"fid", "kid", "precision", "recall", "is"} and all(np.isfinite(res[k]) for k in res if
                                                                           k != "fid_per_seed")
    # the Inception Score from our float path equals torch-fidelity's own uint8 path
    x = generate(m.unet, 20, [0], m.alphas_cumprod, (1, 8, 8), seed=0)
    logits = net(torch.round(x * 255).to(torch.uint8).expand(-1, 3, -1, -1))[1]
    assert res["is"] == pytest.approx(isc_features_to_metric(logits)["inception_score_mean"], rel=1e-4)


def test_dataset_images_fast_path_equals_item_by_item():
    from mmdlib.data import TensorImages
    from mmdlib.evaluate import dataset_images

    ds = TensorImages(torch.randint(0, 256, (20, 1, 8, 8), dtype=torch.uint8))
    slow = torch.stack([ds[i][0] for i in range(20)])
    assert torch.equal(dataset_images(ds), slow) and slow.max() <= 1
    picked = dataset_images(ds, n=5, seed=3)
    idx = torch.randperm(20, generator=torch.Generator().manual_seed(3))[:5]
    assert torch.equal(picked, slow[idx])


def test_evaluation_settings_are_checked_before_any_work(monkeypatch):
    monkeypatch.setattr("mmdlib.evaluate.reference_features", lambda *a, **k: pytest.fail("work before the check"))
    m = LoadedModel(make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny")
    for bad, msg in (({"n": 1}, "n must be >= 2"), ({"seeds": 0}, "seeds must be >= 1"),
                     ({"spaces": ("vgg",)}, "unknown feature space 'vgg'"), ({"sampler": "euler"}, "unknown sampler"),
                     ({"sampler": "ddpm", "eta": 0.3}, "applies to the ddim sampler only"),
                     ({"budgets": (5, 0)}, "budgets must be sampling step counts >= 1, got \[5, 0\]"),
                     ({"budgets": (5, 1001)}, "budget must be an integer in 1..T=1000, got 1001"),
                     ({"precision": "fp16"}, "unknown evaluation precision 'fp16'")):
        with pytest.raises(mmdlib.MMDLibError, match=msg):
            evaluate(m, **{"dataset": "digits", "split": "test", "spaces": ("digits-b",), **bad}, progress=False)


def test_reference_features_are_keyed_by_the_extractors_weights(monkeypatch):
    # the smoke classifiers and the real ones (or two Inception weight files) never share cached features
    fx = mmdlib.get_feature_extractor("digits-a")
    f1 = reference_features("digits", "test", "digits-a", fx)
    with torch.no_grad():
        fx.net.head.bias.add_(1.0)  # a different network under the same name (the head is not in the features)
        fx.net.fc[1].bias.add_(0.5)
    fx._weights_hash = None
    f2 = reference_features("digits", "test", "digits-a", fx)
    assert not torch.equal(f1, f2)
    with pytest.raises(mmdlib.MMDLibError, match="the extractor given is 'digits-a', not the space 'digits-b'"):
        reference_features("digits", "test", "digits-b", fx)
