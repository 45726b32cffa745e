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
    monkeypatch.setattr("mmdlib.data.get_dataset", lambda *a, **k: TensorImages(
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
    for bad, msg in (({"n": 1}, "n must be >= 2"), ({"seeds": 0}, "seeds must be >= 1"),
                     ({"features": ("vgg",)}, "unknown feature space 'vgg'"), ({"sampler": "euler"}, "unknown sampler"),
                     ({"sampler": "ddpm", "eta": 0.3}, "applies to the ddim sampler only"),
                     ({"budgets": (5, 0)}, "budgets must be sampling step counts >= 1, got \[5, 0\]"),
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
