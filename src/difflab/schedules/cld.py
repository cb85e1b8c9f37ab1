"""Critically-damped Langevin diffusion (Dockhorn, Vahdat & Kreis 2022): a forward process on u = (x, v).

dx = M^-1 v beta(t) dt,  dv = (-x - Gamma M^-1 v) beta(t) dt + sqrt(2 Gamma beta(t)) dW  (eq. 5), with critical
damping Gamma^2 = 4 M, so the drift matrix A = [[0, M^-1], [-1, -Gamma M^-1]] is -kappa I + N with
kappa = Gamma / (2M) and N nilpotent: exp(S A) = e^{-kappa S} (I + S N) in the integrated time S = int_0^t beta.
The perturbation kernel (app. B.1) is then closed-form: mean e^{SA} (x_0, 0) and covariance
e^{SA} diag(0, gamma M) e^{SA}^T + 2 Gamma int_0^S e^{rA} e_v e_v^T e^{rA}^T dr, whose integrals are regularised
incomplete gamma functions (accurate for small S).  Kernel coefficients are computed in float64: the
conditional variance of v given x (the Cholesky factor L_vv, app. B.2) is a small difference near t = 0.

State layout: u = cat([x, v], dim=1), i.e. [B, 2C, H, W] for images and [B, 2D] for points.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..utils.config import ConfigError
from .base import append_dims, as_tensor


def _f64(t: Tensor | float) -> Tensor:
    return as_tensor(t).to(torch.float64).reshape(-1)


def _per_time(fn: Callable[[Tensor], Any], t: Tensor | float) -> Any:
    """fn evaluated once per distinct time of t [B] and gathered back (a sampler's batch shares one time)."""
    t = _f64(t)
    if t.numel() <= 1:
        return fn(t)
    tu, inv = torch.unique(t, return_inverse=True)
    out = fn(tu)
    return tuple(o[inv] for o in out) if isinstance(out, tuple) else out[inv]


@dataclasses.dataclass(frozen=True)
class CLD:
    """The CLD forward process with the paper's defaults: M = 0.25, Gamma = 1, beta = 4, gamma = 0.04, eps = 1e-5."""

    M: float = 0.25  # mass (M^-1 = 4)
    Gamma: float = 1.0  # friction; critical damping needs Gamma^2 = 4 M
    beta0: float = 4.0  # beta(t) = beta0 + beta1 t
    beta1: float = 0.0
    gamma: float = 0.04  # initial velocity v_0 ~ N(0, gamma M)
    eps: float = 1e-5  # t_min: training times t ~ U(eps, 1) and the end of the likelihood ODE
    components = ("x", "v")
    t_max = 1.0

    def __post_init__(self) -> None:
        if not (self.M > 0 and self.Gamma > 0 and self.gamma > 0 and 0 < self.eps < 1):
            raise ConfigError(f"CLD needs M, Gamma, gamma > 0 and 0 < eps < 1, got {self.config()}")
        if not math.isclose(self.Gamma ** 2, 4 * self.M, rel_tol=1e-9):
            raise ConfigError(f"CLD's closed-form kernel needs critical damping Gamma^2 = 4 M, got Gamma={self.Gamma}, "
                              f"M={self.M}")
        if self.beta0 <= 0 or self.beta0 + self.beta1 <= 0:
            raise ConfigError(f"CLD needs beta(t) = beta0 + beta1 t > 0 on [0, 1], got {self.beta0}, {self.beta1}")

    @property
    def t_min(self) -> float:
        return self.eps

    @property
    def kappa(self) -> float:
        """Decay rate of the double eigenvalue -kappa of A: Gamma / (2M) (= 2 by default)."""
        return self.Gamma / (2 * self.M)

    def config(self) -> dict[str, Any]:
        return {"kind": "cld", **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> "CLD":
        cfg = {k: v for k, v in cfg.items() if k != "kind"}
        try:
            return cls(**cfg)
        except TypeError as e:
            raise ConfigError(f"CLD config {cfg!r}: {e}") from None

    # --- time ---------------------------------------------------------------------------------------------------
    def beta(self, t: Tensor | float) -> Tensor:
        """beta(t) [B], float64."""
        return self.beta0 + self.beta1 * _f64(t)

    def integrated_beta(self, t: Tensor | float) -> Tensor:
        """S(t) = int_0^t beta = beta0 t + beta1 t^2 / 2 [B], float64."""
        t = _f64(t)
        return self.beta0 * t + 0.5 * self.beta1 * t ** 2

    # --- closed forms in the integrated time S ------------------------------------------------------------------
    def transition(self, S: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """exp(S A) = e^{-kappa S} [[1 + kappa S, S / M], [-S, 1 - kappa S]] as (xx, xv, vx, vv) [B]."""
        k, e = self.kappa, torch.exp(-self.kappa * S)
        return e * (1 + k * S), e * S / self.M, -e * S, e * (1 - k * S)

    def noise_cov(self, S: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """2 Gamma int_0^S e^{rA} e_v e_v^T e^{rA}^T dr as (xx, xv, vv) [B]: the covariance the noise adds over S."""
        k = self.kappa
        a = 2 * k
        x = (a * S).clamp_min(0)
        # I_n = int_0^S r^n e^{-a r} dr = n! / a^{n+1} P(n + 1, a S), P the regularised lower incomplete gamma
        i0, i1, i2 = (math.factorial(n) / a ** (n + 1) * torch.special.gammainc(torch.full_like(x, n + 1.0), x)
                      for n in range(3))
        c = 2 * self.Gamma
        return c * i2 / self.M ** 2, c * (i1 - k * i2) / self.M, c * (i0 - 2 * k * i1 + k ** 2 * i2)

    def cov_after(self, S: Tensor, xx0: Tensor | float, xv0: Tensor | float, vv0: Tensor | float
                  ) -> tuple[Tensor, Tensor, Tensor]:
        """Covariance after integrated time S from an initial per-dimension covariance (xx0, xv0, vv0)."""
        pxx, pxv, pvx, pvv = self.transition(S)
        nxx, nxv, nvv = self.noise_cov(S)
        xx = pxx ** 2 * xx0 + 2 * pxx * pxv * xv0 + pxv ** 2 * vv0 + nxx
        xv = pxx * pvx * xx0 + (pxx * pvv + pxv * pvx) * xv0 + pxv * pvv * vv0 + nxv
        vv = pvx ** 2 * xx0 + 2 * pvx * pvv * xv0 + pvv ** 2 * vv0 + nvv
        return xx, xv, vv

    # --- the perturbation kernel q(u_t | x_0), v_0 marginalised ------------------------------------------------
    def kernel_cov(self, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """(Sigma_xx, Sigma_xv, Sigma_vv) [B] of q(u_t | x_0) with v_0 ~ N(0, gamma M) (app. B.1), float64."""
        return _per_time(lambda tt: self.cov_after(self.integrated_beta(tt), 0.0, 0.0, self.gamma * self.M), t)

    def mean_coeff(self, t: Tensor | float) -> Tensor:
        """[B, 2]: E[x_t | x_0] = m_x x_0 and E[v_t | x_0] = m_v x_0 (float64)."""
        pxx, _, pvx, _ = _per_time(lambda tt: self.transition(self.integrated_beta(tt)), t)
        return torch.stack([pxx, pvx], dim=1)

    def cov(self, t: Tensor | float) -> Tensor:
        """[B, 2, 2] per-dimension covariance of q(u_t | x_0) (float64)."""
        xx, xv, vv = self.kernel_cov(t)
        return torch.stack([torch.stack([xx, xv], -1), torch.stack([xv, vv], -1)], -2)

    def cholesky(self, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """(L_xx, L_xv, L_vv) [B] with Sigma = L L^T, L lower triangular (app. B.2); L_vv^2 = det Sigma / Sigma_xx."""
        xx, xv, vv = self.kernel_cov(t)
        lxx = xx.sqrt()
        lxv = xv / lxx
        lvv = ((xx * vv - xv ** 2) / xx).clamp_min(0).sqrt()
        return lxx, lxv, lvv

    def ell(self, t: Tensor | float) -> Tensor:
        """l_t = 1 / L_vv = sqrt(Sigma_xx / det Sigma) [B]: the v-score of the kernel is -l_t eps_v (eq. 9)."""
        return 1.0 / self.cholesky(t)[2]

    def perturb(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """u_t = mu_t(x_0) + L_t eps, eps [B, 2C, ...] standard normal (app. B.2): the state [B, 2C, ...]."""
        m = self.mean_coeff(t)
        lxx, lxv, lvv = self.cholesky(t)
        ex, ev = self.split(eps)
        d = x0.ndim
        c = [append_dims(z, d).to(x0) for z in (m[:, 0], m[:, 1], lxx, lxv, lvv)]
        return self.join(c[0] * x0 + c[2] * ex, c[1] * x0 + c[3] * ex + c[4] * ev)

    # --- state layout, SDE, prior -------------------------------------------------------------------------------
    @staticmethod
    def split(u: Tensor) -> tuple[Tensor, Tensor]:
        """(x, v) halves of a state along axis 1."""
        if u.shape[1] % 2:
            raise ValueError(f"a CLD state has an even size along axis 1 (x then v), got shape {tuple(u.shape)}")
        return u.chunk(2, dim=1)

    @staticmethod
    def join(x: Tensor, v: Tensor) -> Tensor:
        return torch.cat([x, v], dim=1)

    def sde_matrices(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(F, G G^T) [B, 2, 2]: F = beta A, G G^T = diag(0, 2 Gamma beta) (eq. 5)."""
        b = self.beta(t)
        z = torch.zeros_like(b)
        F = torch.stack([torch.stack([z, b / self.M], -1), torch.stack([-b, -self.Gamma * b / self.M], -1)], -2)
        GG = torch.stack([torch.stack([z, z], -1), torch.stack([z, 2 * self.Gamma * b], -1)], -2)
        return F, GG

    def drift(self, u: Tensor, t: Tensor | float) -> Tensor:
        """f(u, t) = beta(t) (M^-1 v, -x - Gamma M^-1 v) (eq. 5); t a float or [B]."""
        x, v = self.split(u)
        b = append_dims(self.beta(t), u.ndim).to(u)
        return self.join(b * v / self.M, -b * (x + self.Gamma * v / self.M))

    def g2(self, t: Tensor | float) -> Tensor:
        """Squared diffusion of v: 2 Gamma beta(t) [B]."""
        return 2 * self.Gamma * self.beta(t)

    def sample_prior(self, shape: Sequence[int], generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """u_T ~ N(0, diag(1, M)) for data of ``shape`` [B, C, ...]: a state [B, 2C, ...] (drawn on the generator's device)."""
        where = generator.device if generator is not None else torch.device("cpu")
        shape = tuple(shape)
        z = torch.randn((shape[0], 2 * shape[1], *shape[2:]), generator=generator, dtype=dtype, device=where)
        x, v = self.split(z)
        u = self.join(x, v * math.sqrt(self.M))
        return u if device is None else u.to(device)

    def prior_log_prob(self, u: Tensor) -> Tensor:
        """log N(u; 0, diag(1, M)) summed per example [B]."""
        x, v = self.split(u)
        d = x[0].numel()
        return (-0.5 * x.flatten(1).pow(2).sum(1) - 0.5 * v.flatten(1).pow(2).sum(1) / self.M
                - d * math.log(2 * math.pi) - 0.5 * d * math.log(self.M))

    def v0_log_prob(self, v: Tensor) -> Tensor:
        """log N(v_0; 0, gamma M) summed per example [B]: the velocity prior of the likelihood bound (app. B.4)."""
        var = self.gamma * self.M
        return -0.5 * v.flatten(1).pow(2).sum(1) / var - 0.5 * v[0].numel() * math.log(2 * math.pi * var)

    # --- Gaussian data: the exact marginals and v-score (tests, benchmarks) ----------------------------------
    def gaussian_marginal(self, t: Tensor | float, mean: float = 0.0, var: float = 1.0
                          ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor, Tensor]]:
        """For x_0 ~ N(mean, var) per dimension: (E x_t, E v_t, (cov_xx, cov_xv, cov_vv)) [B] of p_t(u), float64."""
        def at(tt: Tensor) -> tuple[Tensor, ...]:
            S = self.integrated_beta(tt)
            pxx, _, pvx, _ = self.transition(S)
            return (pxx * mean, pvx * mean, *self.cov_after(S, var, 0.0, self.gamma * self.M))

        mx, mv, xx, xv, vv = _per_time(at, t)
        return mx, mv, (xx, xv, vv)

    def gaussian_score(self, mean: float = 0.0, var: float = 1.0) -> Callable[[Tensor, Tensor], Tensor]:
        """The exact v-score grad_v log p_t(u) for data x_0 ~ N(mean, var) per dimension: score(u, t [B]) -> [B, C, ...]."""

        def score(u: Tensor, t: Tensor) -> Tensor:
            mx, mv, (xx, xv, vv) = self.gaussian_marginal(t, mean, var)
            det = xx * vv - xv ** 2
            x, v = self.split(u)
            c = [append_dims(z, u.ndim).to(u) for z in (mx, mv, xv / det, xx / det)]
            return c[2] * (x - c[0]) - c[3] * (v - c[1])

        return score

    def gaussian_log_prob(self, u: Tensor, t: Tensor | float, mean: float = 0.0, var: float = 1.0) -> Tensor:
        """log p_t(u) summed per example [B] for data x_0 ~ N(mean, var) per dimension."""
        mx, mv, (xx, xv, vv) = self.gaussian_marginal(t, mean, var)
        det = xx * vv - xv ** 2
        x, v = self.split(u)
        c = [append_dims(z, u.ndim).to(u) for z in (mx, mv, xx, xv, vv)]
        dx, dv = x - c[0], v - c[1]
        quad = ((c[4] * dx ** 2 - 2 * c[3] * dx * dv + c[2] * dv ** 2) / append_dims(det, u.ndim).to(u)).flatten(1)
        d = x[0].numel()
        return -0.5 * quad.sum(1) - d * math.log(2 * math.pi) - 0.5 * d * torch.log(det).to(u).expand(u.shape[0])


__all__ = ["CLD"]
