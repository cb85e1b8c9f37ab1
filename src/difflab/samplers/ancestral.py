"""DDPM ancestral sampling and DDIM, on any sub-sequence of noise levels, for any schedule (native coordinates).

Between consecutive levels t > s the forward process has x_t | x_s ~ N(alpha_{t|s} x_s, sigma_{t|s}^2 I) with
alpha_{t|s} = alpha_t / alpha_s and sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2 (Kingma et al. 2021,
eq. 3-4); for a DDPM table and s = t - 1 these are sqrt(1 - beta_t) and beta_t.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from ._common import Callback, levels, randn_like, report, steps


def _pair(lv: Any, i: int) -> tuple[float, float, float, float, float]:
    """alpha_t, sigma_t, alpha_s, sigma_s and sigma_{t|s}^2 between level i (t) and level i+1 (s)."""
    at, st, as_, ss = lv.alpha[i], lv.sigma_native[i], lv.alpha[i + 1], lv.sigma_native[i + 1]
    var_ts = max(st**2 - (at / as_) ** 2 * ss**2, 0.0)
    return at, st, as_, ss, var_ts


def sample_ddpm(model: Any, x: Tensor, sigmas: Tensor, *, cond: Any = None, generator: torch.Generator | None = None,
                progress: bool = False, callback: Callback | None = None,
                variance: Literal["beta_tilde", "beta"] | Callable[..., Any] = "beta_tilde") -> Tensor:
    """Ancestral sampling from the posterior q(x_s | x_t, x_0-hat) (Ho et al. 2020, eq. 6-7 and Alg. 2; sigma^2 = beta-tilde or beta).

    ``variance`` may also be a callable f(x_t, t, s, beta_{t|s}, beta-tilde_{t|s}, cond) -> sigma^2 (float or a
    tensor broadcastable to x), e.g. learned or Analytic-DPM variances from :mod:`difflab.likelihood`.
    """
    if not callable(variance) and variance not in ("beta_tilde", "beta"):
        raise ValueError(f"variance must be 'beta_tilde', 'beta' or a callable, got {variance!r}")
    lv = levels(model, x, sigmas)
    n = len(lv.sigma) - 1
    for i in steps(n, progress):
        x0 = model(x, lv.t[i], cond)
        report(callback, lv, i, x, x0)
        if lv.sigma[i + 1] == 0:
            return x0
        at, st, as_, ss, var_ts = _pair(lv, i)
        mean = (at / as_) * ss**2 / st**2 * x + as_ * var_ts / st**2 * x0
        var_tilde = var_ts * ss**2 / st**2
        if callable(variance):
            var = variance(x, lv.t[i], lv.t[i + 1], var_ts, var_tilde, cond)
        else:
            var = var_tilde if variance == "beta_tilde" else var_ts
        x = mean + torch.as_tensor(var, dtype=x.dtype, device=x.device).sqrt() * randn_like(x, generator)
    return x


def sample_ddim(model: Any, x: Tensor, sigmas: Tensor, *, cond: Any = None, generator: torch.Generator | None = None,
                progress: bool = False, callback: Callback | None = None, eta: float = 0.0) -> Tensor:
    """DDIM update x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z, c^2 = eta^2 beta-tilde (Song et al. 2021a, eq. 12 and 16)."""
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    lv = levels(model, x, sigmas)
    n = len(lv.sigma) - 1
    for i in steps(n, progress):
        x0 = model(x, lv.t[i], cond)
        report(callback, lv, i, x, x0)
        if lv.sigma[i + 1] == 0:
            return x0
        at, st, as_, ss, var_ts = _pair(lv, i)
        eps = (x - at * x0) / st
        c2 = eta**2 * var_ts * ss**2 / st**2
        x = as_ * x0 + math.sqrt(max(ss**2 - c2, 0.0)) * eps
        if c2 > 0:
            x = x + math.sqrt(c2) * randn_like(x, generator)
    return x
