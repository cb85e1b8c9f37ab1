"""Closed-form Gaussian pieces of the variational bound: KL divergences and (discretised) Gaussian likelihoods."""
from __future__ import annotations

import math

import torch
from torch import Tensor

LOG2 = math.log(2.0)


def normal_kl(mean1: Tensor, logvar1: Tensor | float, mean2: Tensor, logvar2: Tensor | float) -> Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats (Ho et al. 2020, eq. 5 terms)."""
    logvar1, logvar2 = torch.as_tensor(logvar1).to(mean1), torch.as_tensor(logvar2).to(mean1)
    return 0.5 * (logvar2 - logvar1 - 1.0 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor | float) -> Tensor:
    """Elementwise log N(x; mean, e^(2 log_scale)) in nats (a density, for continuous data)."""
    log_scale = torch.as_tensor(log_scale).to(x)
    return -0.5 * math.log(2 * math.pi) - log_scale - 0.5 * ((x - mean) * torch.exp(-log_scale)) ** 2


def _log_ndtr_diff(a: Tensor, b: Tensor) -> Tensor:
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails (uses Phi(b) - Phi(a) = Phi(-a) - Phi(-b) when a > 0)."""
    flip = a > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    l_hi, l_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    out = l_hi + torch.log(-torch.expm1((l_lo - l_hi).clamp(max=-1e-30)))
    # a bin far narrower than the scale: midpoint rule log(pdf(mid) (b - a))
    mid = 0.5 * (a + b)
    narrow = -0.5 * math.log(2 * math.pi) - 0.5 * mid**2 + torch.log(b - a)
    return torch.where(torch.isfinite(out) & ((b - a) > 1e-4), out, narrow)


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor | float, bins: int = 256) -> Tensor:
    """Elementwise log P(x) of the Gaussian N(mean, e^(2 log_scale)) integrated over x's bin (Ho et al. 2020, eq. 13).

    ``x`` holds values on the grid of ``bins`` levels spanning [-1, 1] (8-bit data: bins = 256, width 2/255);
    each bin is [x - 1/(bins-1), x + 1/(bins-1)], except the edge bins, which extend to -inf and +inf.
    """
    log_scale = torch.as_tensor(log_scale).to(x)
    h = 1.0 / (bins - 1)  # half the bin width
    inv = torch.exp(-log_scale)
    a = (x - h - mean) * inv
    b = (x + h - mean) * inv
    low, high = x < -1.0 + h, x > 1.0 - h
    a = torch.where(low, torch.full_like(a, -math.inf), a)
    b = torch.where(high, torch.full_like(b, math.inf), b)
    mid = _log_ndtr_diff(torch.where(low | high, torch.zeros_like(a), a), torch.where(low | high, torch.ones_like(b), b))
    return torch.where(low, torch.special.log_ndtr(b), torch.where(high, torch.special.log_ndtr(-a), mid))


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum over every dimension but the first: [B, ...] -> [B]."""
    return x.flatten(1).sum(1)


def bits_per_dim(nll_nats: Tensor | float, dims: int) -> Tensor | float:
    """Negative log-likelihood in nats per example -> bits per dimension: nll / (dims ln 2)."""
    return nll_nats / (dims * LOG2)


__all__ = ["normal_kl", "gaussian_log_likelihood", "discretized_gaussian_log_likelihood", "sum_except_batch",
           "bits_per_dim", "LOG2"]
