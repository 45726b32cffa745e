"""Kernels and the unbiased MMD^2 estimator (paper eqs. 6-7; Gretton et al. 2012)."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .errors import MMDLibError


def linear_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = x . y (paper Sec. IV-G)."""
    return x @ y.T


def cubic_kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """k(x, y) = (x . y / d + 1)^3, KID's polynomial kernel (Binkowski et al. 2018; paper Sec. IV-G)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def rbf_kernel(x: torch.Tensor, y: torch.Tensor, sigma: float | None = None) -> torch.Tensor:
    """k(x, y) = exp(-|x - y|^2 / (2 sigma^2)); sigma defaults to sqrt(d / 2), i.e. exp(-|x - y|^2 / d)."""
    if sigma is None:
        sigma = math.sqrt(x.shape[1] / 2)
    if not sigma > 0:
        raise MMDLibError(f"rbf bandwidth sigma must be > 0, got {sigma!r}.")
    # |x - y|^2 = |x|^2 + |y|^2 - 2 x.y, clamped: cancellation can make it slightly negative.
    d2 = (x.square().sum(1)[:, None] + y.square().sum(1)[None, :] - 2 * x @ y.T).clamp_min(0)
    return torch.exp(-d2 / (2 * sigma**2))


KERNELS: dict[str, Callable[..., torch.Tensor]] = {"linear": linear_kernel, "cubic": cubic_kernel, "rbf": rbf_kernel}


def get_kernel(name: str) -> Callable[..., torch.Tensor]:
    """The kernel registered as ``name``."""
    if name not in KERNELS:
        raise MMDLibError(f"unknown kernel {name!r}; known kernels: {', '.join(KERNELS)}.")
    return KERNELS[name]


def _offdiag_mean(k: torch.Tensor) -> torch.Tensor:
    n = k.shape[0]
    return (k.sum() - k.diagonal().sum()) / (n * (n - 1))


def check_features(fx: torch.Tensor, fy: torch.Tensor) -> None:
    """Both 2-D, at least two rows each (the unbiased estimator drops i == j), same width."""
    for name, f in (("fx", fx), ("fy", fy)):
        if not torch.is_tensor(f) or f.dim() != 2:
            raise MMDLibError(f"{name} must be a 2-D tensor [samples, features], got shape "
                              f"{tuple(getattr(f, 'shape', ()))}.")
        if f.shape[0] < 2:
            raise MMDLibError(f"{name} has {f.shape[0]} sample(s); the unbiased MMD^2 needs at least 2 on each "
                              f"side (use a batch size >= 2).")
    if fx.shape[1] != fy.shape[1]:
        raise MMDLibError(f"feature widths differ: fx has {fx.shape[1]}, fy has {fy.shape[1]}; embed both with "
                          f"the same feature extractor.")


def mmd2_unbiased(fx: torch.Tensor, fy: torch.Tensor, kernel: str = "cubic", **kw) -> torch.Tensor:
    """Unbiased MMD^2 between samples fx [m, d] and fy [n, d] (paper eq. 7, with the k(y, y') term kept).

    1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j) - 2/(mn) sum_{i,j} k(x_i, y_j).
    Kernel sums are accumulated in float64 (float32 on MPS) whatever the feature dtype, so bf16 or
    2048-d features do not lose the small difference of large sums. Differentiable in fx and fy.
    """
    k = get_kernel(kernel)
    check_features(fx, fy)
    try:
        k(fx[:1].detach(), fy[:1].detach(), **kw)
    except TypeError as e:
        raise MMDLibError(f"kernel {kernel!r} does not take options {sorted(kw)}: {e}.") from None
    acc = torch.float32 if fx.device.type == "mps" else torch.float64
    x, y = fx.to(acc), fy.to(acc)
    return _offdiag_mean(k(x, x, **kw)) + _offdiag_mean(k(y, y, **kw)) - 2 * k(x, y, **kw).mean()
