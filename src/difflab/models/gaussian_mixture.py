"""Gaussian mixtures with exact marginals and exact denoisers E[x_0 | x_t] under any schedule.

For data p(x_0) = sum_k w_k N(mu_k, Sigma_k) and x_t = alpha x_0 + sigma eps, the marginal is the mixture
sum_k w_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I) and the posterior mean is the responsibility-weighted sum
of the per-component Gaussian posterior means (Bishop 2006, eq. 2.116; Karras et al. 2022, eq. 2-3).
Each Sigma_k = U_k diag(l_k) U_k^T is diagonalised once, so C_k = alpha^2 Sigma_k + sigma^2 I is diagonal in
the same basis for every t: a denoiser call costs O(B K d^2) with no per-call factorisation.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ..schedules import Schedule, as_tensor
from .denoiser import Denoiser


class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, Sigma_k) in d dimensions; weights [K], means [K, d], covs [K, d, d] (SPD)."""

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor):
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        cov = torch.as_tensor(covs, dtype=torch.float64)
        if mu.ndim == 1:
            mu = mu[None]
        if cov.ndim == 2:
            cov = cov[None]
        K, d = mu.shape
        if w.shape != (K,) or cov.shape != (K, d, d):
            raise ValueError(f"shapes disagree: weights {tuple(w.shape)}, means {tuple(mu.shape)}, covs {tuple(cov.shape)}")
        if not bool((w > 0).all()):
            raise ValueError("mixture weights must be positive")
        cov = 0.5 * (cov + cov.transpose(-1, -2))
        lam, U = torch.linalg.eigh(cov)
        if not bool((lam > 0).all()):
            raise ValueError("every covariance must be positive definite")
        self.weights, self.means, self.covs = w / w.sum(), mu, cov
        self._lam, self._U = lam, U  # Sigma_k = U_k diag(lam_k) U_k^T

    @property
    def dim(self) -> int:
        """Dimension d of the data."""
        return self.means.shape[1]

    @property
    def mean(self) -> Tensor:
        """E[x] = sum_k w_k mu_k, shape [d]."""
        return self.weights @ self.means

    @property
    def cov(self) -> Tensor:
        """Cov[x] = sum_k w_k (Sigma_k + mu_k mu_k^T) - E[x] E[x]^T, shape [d, d]."""
        m = self.mean
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        return second - m[:, None] * m[None, :]

    def sample(self, n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
        """n independent draws, shape [n, d]."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[k] + torch.einsum("nij,nj->ni", self._U[k], self._lam[k].sqrt() * z)
        return x.to(dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) for x of shape [B, d] (log-sum-exp over components), shape [B]."""
        return self._log_prob_scaled(as_tensor(x).to(torch.float64), 1.0, 0.0)[0].to(as_tensor(x).dtype)

    def marginal(self, schedule: Schedule, t: float | Tensor) -> GaussianMixture:
        """Law of x_t = alpha(t) x_0 + sigma(t) eps: sum_k w_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I)."""
        a, s = (float(v) for v in schedule.alpha_sigma(as_tensor(float(t))))
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.weights, a * self.means, a**2 * self.covs + s**2 * eye)

    def posterior_mean(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """E[x_0 | x_t = x] for x [B, d] and per-example alpha, sigma [B] (or scalars); computed in float64."""
        x64 = x.to(torch.float64)
        _, resp, z, c = self._log_prob_scaled(x64, alpha, sigma)
        a = _col(alpha, x64)
        # per-component posterior mean mu_k + alpha Sigma_k C_k^{-1} (x - alpha mu_k), in the eigenbasis
        gain = a[:, :, None] * self._lam[None] / c  # [B, K, d]
        m = self.means[None] + torch.einsum("kij,bkj->bki", self._U, gain * z)
        return torch.einsum("bk,bki->bi", resp, m).to(x.dtype)

    def posterior_eps(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """E[eps | x_t = x] = sigma sum_k r_k C_k^{-1} (x - alpha mu_k), computed directly (accurate when alpha -> 0)."""
        x64 = x.to(torch.float64)
        _, resp, z, c = self._log_prob_scaled(x64, alpha, sigma)
        s = _col(sigma, x64)
        e = torch.einsum("kij,bkj->bki", self._U, z / c)
        return (s * torch.einsum("bk,bki->bi", resp, e)).to(x.dtype)

    def score(self, x: Tensor, schedule: Schedule, t: Tensor) -> Tensor:
        """grad_x log p_t(x) = -E[eps | x_t] / sigma(t) (Vincent 2011; Song et al. 2021)."""
        a, s = schedule.alpha_sigma(_batch(t, x))
        return -self.posterior_eps(x, a, s) / _col(s, x.to(torch.float64)).to(x.dtype)

    def denoiser(self, schedule: Schedule, prediction: Literal["x0", "eps"] = "x0") -> Denoiser:
        """Exact denoiser under ``schedule``: D(x_t, t) = E[x_0 | x_t] (net predicting x_0, or eps when asked)."""
        if prediction == "x0":
            def net(x: Tensor, t: Tensor) -> Tensor:
                a, s = schedule.alpha_sigma(_batch(t, x).to(torch.float64))
                return self.posterior_mean(x, a, s)
        elif prediction == "eps":
            def net(x: Tensor, t: Tensor) -> Tensor:
                a, s = schedule.alpha_sigma(_batch(t, x).to(torch.float64))
                return self.posterior_eps(x, a, s)
        else:
            raise ValueError(f"prediction must be 'x0' or 'eps', got {prediction!r}")
        return Denoiser(net, schedule, prediction)

    def _log_prob_scaled(self, x: Tensor, alpha: Tensor | float, sigma: Tensor | float
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """log p_t(x), responsibilities [B, K], eigen-coordinates z = U^T (x - alpha mu) [B, K, d], C diag [B, K, d]."""
        a, s = _col(alpha, x), _col(sigma, x)  # [B, 1]
        z = torch.einsum("kji,bkj->bki", self._U, x[:, None, :] - a[:, :, None] * self.means[None])
        c = a[:, :, None] ** 2 * self._lam[None] + s[:, :, None] ** 2  # [B, K, d]
        logn = -0.5 * ((z**2 / c).sum(-1) + torch.log(c).sum(-1) + self.dim * math.log(2 * math.pi))
        joint = torch.log(self.weights)[None] + logn
        lp = torch.logsumexp(joint, dim=1)
        return lp, torch.exp(joint - lp[:, None]), z, c  # (torch.softmax is very slow on CPU for K = 1)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={len(self.weights)}, d={self.dim})"


def _col(v: Tensor | float, x: Tensor) -> Tensor:
    """A scalar or [B] tensor as a float64 column [B, 1] matching x's batch."""
    v = torch.as_tensor(v, dtype=torch.float64, device=x.device).reshape(-1, 1)
    return v.expand(x.shape[0], 1)


def _batch(t: Tensor | float, x: Tensor) -> Tensor:
    t = as_tensor(t, like=x)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


__all__ = ["GaussianMixture"]
