"""The metrics against independent computations: FID against scipy, KID against the unbiased MMD^2, and every
metric against ``torch_fidelity.calculate_metrics`` on the same image folders."""
import numpy as np
import pytest
import scipy.linalg
import torch

import mmdlib
from mmdlib.features import get_feature_extractor
from mmdlib.metrics import METRICS, embed, fid_from_features, inception_score, kid_from_features


def test_fid_matches_a_scipy_reference():
    rng = np.random.default_rng(0)
    # float32 values (the metrics' input type, as torch-fidelity's), the reference in float64 on the same values
    a = rng.normal(size=(400, 6)).astype(np.float32).astype(np.float64)
    b = rng.normal(0.4, 1.3, size=(300, 6)).astype(np.float32).astype(np.float64)
    m1, m2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid_from_features(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, rel=1e-5)


def test_kid_is_the_unbiased_cubic_mmd_on_subsets():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 8, generator=g), torch.randn(50, 8, generator=g) + 1
    kid, _ = kid_from_features(a, b, subsets=1, subset_size=50)
    assert kid == pytest.approx(mmdlib.mmd2_unbiased(a.double(), b.double(), "cubic").item(), rel=1e-5)


def test_the_metrics_settings_are_torch_fidelitys_defaults():
    from torch_fidelity.defaults import DEFAULTS

    ours = {"kid_subsets": "kid_subsets", "kid_subset_size": "kid_subset_size", "kid_seed": "rng_seed",
            "prc_neighbours": "prc_neighborhood", "is_splits": "isc_splits", "is_seed": "rng_seed"}
    assert {k: METRICS[k] for k in ours} == {k: DEFAULTS[v] for k, v in ours.items()}
    assert kid_from_features.__defaults__ == (METRICS["kid_subsets"], METRICS["kid_subset_size"], METRICS["kid_seed"])
    assert (DEFAULTS["kid_kernel"], DEFAULTS["kid_kernel_poly_degree"], DEFAULTS["kid_kernel_poly_coef0"]) == ("poly", 3, 1)


def test_fid_kid_and_is_equal_torch_fidelitys_calculate_metrics_on_the_same_folders(tmp_path, inception_weights):
    from PIL import Image
    from torch_fidelity import calculate_metrics

    g = torch.Generator().manual_seed(0)
    sets = []
    for name, shift in (("a", 0.0), ("b", 0.25)):  # two sets of smooth random 8-bit images
        x = torch.nn.functional.interpolate(torch.rand(24, 3, 4, 4, generator=g), size=32, mode="bilinear")
        u8 = ((x * 0.75 + shift).clamp(0, 1) * 255).round().to(torch.uint8)
        (tmp_path / name).mkdir()
        for i, im in enumerate(u8):  # torch-fidelity reads a folder in sorted order: names keep ours
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(tmp_path / name / f"{i:03d}.png")
        sets.append(u8.float() / 255)
    extractor = get_feature_extractor("inception", weights_path=inception_weights)
    f1, f2 = (embed(extractor, x) for x in sets)
    size = 16  # below the default 1000 (24 images here); the same in both
    theirs = calculate_metrics(input1=str(tmp_path / "a"), input2=str(tmp_path / "b"), fid=True, kid=True,
                               isc=True, kid_subset_size=size, cuda=False, verbose=False,
                               feature_extractor_weights_path=str(inception_weights), save_cpu_ram=True)
    assert fid_from_features(f1, f2) == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)
    kid, kid_std = kid_from_features(f1, f2, subset_size=size)
    assert kid == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-6)
    assert kid_std == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-6)
    assert inception_score(extractor, f1)[0] == pytest.approx(theirs["inception_score_mean"], rel=1e-6)
