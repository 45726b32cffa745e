import numpy as np
import pytest
import torch

import mmdlib


def brute_force_mmd2(x: np.ndarray, y: np.ndarray, k) -> float:
    """The unbiased MMD^2 as a plain double loop (Gretton et al. 2012, Lemma 6)."""
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


NUMPY_KERNELS = {
    "linear": ({}, lambda a, b: a @ b),
    "cubic": ({}, lambda a, b: (a @ b / len(a) + 1) ** 3),
    "rbf": ({"sigma": 1.7}, lambda a, b: np.exp(-np.sum((a - b) ** 2) / (2 * 1.7**2))),
    "rbf-default": ({}, lambda a, b: np.exp(-np.sum((a - b) ** 2) / len(a))),
}


@pytest.mark.parametrize("name", list(NUMPY_KERNELS))
def test_matches_numpy_brute_force(name):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.3, 1.2, size=(11, 5))
    kw, k = NUMPY_KERNELS[name]
    got = mmdlib.mmd2_unbiased(torch.from_numpy(x), torch.from_numpy(y), kernel=name.split("-")[0], **kw)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.item(), brute_force_mmd2(x, y, k), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["linear", "cubic", "rbf"])
def test_gradcheck(name):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: mmdlib.mmd2_unbiased(a, b, name), (x, y))


@pytest.mark.parametrize("name", ["linear", "cubic", "rbf"])
def test_same_distribution_near_zero_shifted_positive(name):
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(2000, 16, generator=g), torch.randn(2000, 16, generator=g)
    same = mmdlib.mmd2_unbiased(x, y, name).item()
    shifted = mmdlib.mmd2_unbiased(x, y + 0.5, name).item()
    assert abs(same) < 0.05 * shifted
    assert shifted > 0


def test_float32_2048d_features_agree_with_float64():
    # Inception-like: 2048-d, non-negative, large norms; the estimate is a small difference of large sums.
    g = torch.Generator().manual_seed(3)
    x = torch.rand(128, 2048, generator=g) * 2
    y = torch.rand(128, 2048, generator=g) * 2 + 0.01
    for name in ["linear", "cubic", "rbf"]:
        lo = mmdlib.mmd2_unbiased(x, y, name).item()
        hi = mmdlib.mmd2_unbiased(x.double(), y.double(), name).item()
        assert np.isfinite(lo) and abs(lo - hi) <= 1e-6 * max(1.0, abs(hi)), (name, lo, hi)
    bf = mmdlib.mmd2_unbiased(x.bfloat16(), y.bfloat16(), "cubic")
    assert bf.dtype == torch.float64 and torch.isfinite(bf)


def test_unknown_kernel_lists_known():
    x = torch.randn(4, 3)
    with pytest.raises(mmdlib.MMDLibError, match="unknown kernel 'gauss'; known kernels: linear, cubic, rbf"):
        mmdlib.mmd2_unbiased(x, x, "gauss")


def test_bad_kernel_option_is_named():
    x = torch.randn(4, 3)
    with pytest.raises(mmdlib.MMDLibError, match=r"kernel 'cubic' does not take options \['sigma'\]"):
        mmdlib.mmd2_unbiased(x, x, "cubic", sigma=1.0)
    with pytest.raises(mmdlib.MMDLibError, match="sigma must be > 0, got -1"):
        mmdlib.mmd2_unbiased(x, x, "rbf", sigma=-1)


@pytest.mark.parametrize("m,n,bad", [(1, 4, "fx has 1 sample"), (4, 1, "fy has 1 sample")])
def test_needs_two_samples_each_side(m, n, bad):
    with pytest.raises(mmdlib.MMDLibError, match=bad):
        mmdlib.mmd2_unbiased(torch.randn(m, 3), torch.randn(n, 3))


def test_width_mismatch_and_rank():
    with pytest.raises(mmdlib.MMDLibError, match="feature widths differ: fx has 3, fy has 5"):
        mmdlib.mmd2_unbiased(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(mmdlib.MMDLibError, match=r"fx must be a 2-D tensor .* got shape \(4, 3, 2\)"):
        mmdlib.mmd2_unbiased(torch.randn(4, 3, 2), torch.randn(4, 6))
