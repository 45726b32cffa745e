"""The metrics against independent computations: FID against scipy, KID against the unbiased MMD^2."""
import numpy as np
import pytest
import scipy.linalg
import torch

import mmdlib
from mmdlib.metrics import fid_from_features, kid_from_features


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
