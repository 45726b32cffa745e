"""Scoring a model: every metric in every space, mean and spread over seeds, cached real features."""
import numpy as np
import pytest
import torch
from helpers import make_tiny_unet

import mmdlib
from mmdlib.config import EvalConfig
from mmdlib.evaluate import evaluate, reference_features
from mmdlib.generate import generate
from mmdlib.models import LoadedModel
from mmdlib.report import space_table, table


def test_reference_features_are_cached(monkeypatch):
    f1 = reference_features("digits", "test", "digits-a")
    monkeypatch.setattr("mmdlib.evaluate.embed", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    f2 = reference_features("digits", "test", "digits-a")
    assert f1.shape == (360, mmdlib.get_feature_extractor("digits-a").dim) and torch.equal(f1, f2)


def test_evaluate_returns_a_plain_dict_and_a_table():
    m = LoadedModel(make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny")
    res = evaluate(m, dataset="digits", split="test", budgets=(1, 2), features=("digits-b",), n=40, seeds=(0, 1),
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
    cfg = EvalConfig(dataset="digits", split="test", budgets=(1, 2), features=("digits-b",), n=40, seeds=2)
    assert evaluate(m, cfg, progress=False) == res


def test_inception_space_adds_the_inception_score_and_precision_recall(tmp_path, monkeypatch):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.metric_isc import isc_features_to_metric

    from helpers import write_random_inception_weights
    from mmdlib.data import TensorImages

    # 30 real images, in a cache of this test's own: Inception at 299x299 is slow on a CPU
    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("mmdlib.evaluate.get_dataset", lambda *a, **k: TensorImages(
        mmdlib.digits_dataset("test").images[:30]))
    write_random_inception_weights(tmp_path / "w.pth")
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=str(tmp_path / "w.pth"))
    m = LoadedModel(make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny")
    res = evaluate(m, dataset="digits", split="test", budgets=(1,), features=("inception",), n=20, seeds=1,
                   inception_weights=tmp_path / "w.pth", progress=False)[1]["inception"]
    assert set(res) >= {"fid", "kid", "precision", "recall", "is"} and all(np.isfinite(res[k]) for k in res if
                                                                           k != "fid_per_seed")
    # the Inception Score from our float path equals torch-fidelity's own uint8 path
    x = generate(m.unet, 20, [0], m.alphas_cumprod, (1, 8, 8), seed=0)
    logits = net(torch.round(x * 255).to(torch.uint8).expand(-1, 3, -1, -1))[1]
    assert res["is"] == pytest.approx(isc_features_to_metric(logits)["inception_score_mean"], rel=1e-4)


def test_evaluation_settings_are_checked_before_any_work(monkeypatch):
    monkeypatch.setattr("mmdlib.evaluate.reference_features", lambda *a, **k: pytest.fail("work before the check"))
    m = LoadedModel(make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny")
    for bad, msg in (({"n": 1}, "n must be >= 10"), ({"seeds": 0}, "seeds must be between 1 and 256"),
                     ({"features": ("vgg",)}, "unknown feature space 'vgg'"), ({"sampler": "euler"}, "unknown sampler"),
                     ({"sampler": "ddpm", "eta": 0.3}, "applies to the ddim sampler only"),
                     ({"budgets": (5, 0)}, r"budgets must be sampling step counts >= 1, got \[5, 0\]"),
                     ({"budgets": (5, 1001)}, "budget must be an integer in 1..T=1000, got 1001"),
                     ({"precision": "fp16"}, "unknown evaluation precision 'fp16'")):
        with pytest.raises(mmdlib.MMDLibError, match=msg):
            evaluate(m, **{"dataset": "digits", "split": "test", "features": ("digits-b",), **bad}, progress=False)


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


def adm_statistics(pool: np.ndarray, mixed_6_conv_nchw: np.ndarray) -> dict[str, np.ndarray]:
    """ADM's evaluator statistics, in numpy, from Inception's pool_3 [N, 2048] and mixed_6/conv activations (as
    torch lays them out, [N, C, 17, 17]): TensorFlow's NHWC tensor, its first 7 channels, reshaped per image."""
    spatial = np.transpose(mixed_6_conv_nchw, (0, 2, 3, 1))[..., :7].reshape(len(pool), -1)
    return {"mu": pool.mean(0), "sigma": np.cov(pool, rowvar=False),
            "mu_s": spatial.mean(0), "sigma_s": np.cov(spatial, rowvar=False)}


def test_an_adm_reference_batch_is_scored_against_in_adms_own_layout(tmp_path, monkeypatch, inception_weights):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    from mmdlib import metrics

    monkeypatch.setenv("MMDLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("mmdlib.evaluate.reference_features", lambda *a, **k: pytest.fail("read the dataset"))
    u8 = torch.round(mmdlib.digits_dataset("test").images[:8] * 255).to(torch.uint8).expand(-1, 3, -1, -1)
    # the reference batch, written without mmdlib: torch-fidelity's network, ADM's layout and statistics
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(inception_weights))
    with torch.no_grad():
        pool = net(u8)[0].double().numpy()
        x = (interpolate_bilinear_2d_like_tensorflow1x(u8.float(), size=(299, 299), align_corners=False) - 128) / 128
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c"):
            x = getattr(net, name)(x)
        conv = net.Mixed_6d.branch1x1(x).double().numpy()
    stats = adm_statistics(pool, conv)
    np.savez(tmp_path / "ref.npz", arr_0=u8.permute(0, 2, 3, 1).numpy(), **stats)
    # our spatial features are ADM's vector, element for element
    ours = mmdlib.get_feature_extractor("inception-spatial", weights_path=inception_weights)
    np.testing.assert_allclose(ours(u8.float() / 255).double().numpy(),
                               np.transpose(conv, (0, 2, 3, 1))[..., :7].reshape(8, -1), rtol=1e-5, atol=1e-5)
    # evaluate scores each Inception space against the file's statistics, never the dataset
    seen = {}
    real_score = metrics.score_statistics
    monkeypatch.setattr("mmdlib.evaluate.score_statistics",
                        lambda e, f, ref: seen.setdefault(e.name, (f, ref)) and real_score(e, f, ref))
    m = LoadedModel(make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny")
    res = evaluate(m, dataset="digits", split="test", budgets=(1,), features=("inception", "inception-spatial"), n=10,
                   seeds=1, inception_weights=inception_weights, reference=str(tmp_path / "ref.npz"), progress=False)[1]
    for space, (mu, sigma) in (("inception", ("mu", "sigma")), ("inception-spatial", ("mu_s", "sigma_s"))):
        f, ref = seen[space]
        assert np.array_equal(ref["mu"], stats[mu]) and np.array_equal(ref["sigma"], stats[sigma])
        assert res[space]["fid"] == pytest.approx(real_score(ours if space != "inception" else
                                                             mmdlib.get_feature_extractor("inception", weights_path=
                                                                                          inception_weights), f, ref)["fid"])
        assert "kid" not in res[space] and f.shape == (10, ours.dim if space != "inception" else 2048)
    assert set(res["inception"]) >= {"fid", "is"} and "is" not in res["inception-spatial"]


def test_fid_against_statistics_is_the_frechet_distance_to_them():
    from scipy import linalg

    from mmdlib.metrics import fid_from_statistics, statistics

    rng = np.random.default_rng(0)
    f = torch.from_numpy(rng.normal(size=(300, 5)).astype(np.float32))
    ref = {"mu": rng.normal(size=5), "sigma": np.cov(rng.normal(1, 2, size=(200, 5)), rowvar=False)}  # float64
    a = f.double().numpy()
    m, s = a.mean(0), np.cov(a, rowvar=False)
    expected = ((m - ref["mu"]) ** 2).sum() + np.trace(s + ref["sigma"] - 2 * linalg.sqrtm(s @ ref["sigma"]).real)
    assert fid_from_statistics(statistics(f), ref) == pytest.approx(expected, rel=1e-5)


def test_a_bad_reference_batch_gets_a_clear_message_before_any_sampling(tmp_path, monkeypatch):
    from mmdlib.metrics import reference_statistics

    np.savez(tmp_path / "other.npz", arr_0=np.zeros(3))
    np.savez(tmp_path / "shape.npz", mu=np.zeros(5), sigma=np.eye(5))
    np.savez(tmp_path / "nan.npz", mu_s=np.full(2023, np.nan), sigma_s=np.eye(2023))
    (tmp_path / "text.npz").write_text("not an archive")
    dims = {"inception": 2048, "inception-spatial": 2023}
    for path, msg in (("other.npz", "holds none of the statistics asked for .*its keys: arr_0"),
                      ("shape.npz", r"mu and sigma must be finite, of shapes \(2048,\)"),
                      ("nan.npz", "mu_s and sigma_s must be finite"), ("text.npz", "is not a NumPy .npz file")):
        with pytest.raises(mmdlib.MMDLibError, match=msg):
            reference_statistics(tmp_path / path, dims)
    monkeypatch.setattr("mmdlib.evaluate.get_feature_extractors", lambda *a, **k: pytest.fail("work before the check"))
    m = LoadedModel(make_tiny_unet(1, 8), mmdlib.alphas_cumprod(mmdlib.linear_betas()), "tiny")
    for features, path, msg in ((("inception",), "missing.npz", "is not a file"),
                                (("digits-b",), "other.npz", "none of them is among the features digits-b")):
        with pytest.raises(mmdlib.MMDLibError, match=msg):
            evaluate(m, dataset="digits", features=features, reference=str(tmp_path / path), progress=False)
