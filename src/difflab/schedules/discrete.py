"""Discrete-time DDPM schedules (T steps) as a view of a continuous schedule.

Time is the step index t = 0..T-1 (t = 0 least noisy).  Between integer steps log(alpha-bar) is interpolated
linearly in t, so a sampler may query any real t in [0, T-1] and get the noise level the network sees there.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Schedule, as_tensor


class DiscreteSchedule(Schedule):
    """A DDPM schedule given by its table alpha-bar_t, t = 0..T-1 (Ho et al. 2020, section 2)."""

    discrete = True

    def __init__(self, betas: Tensor, name: str = "custom", params: dict[str, Any] | None = None):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.ndim != 1 or len(betas) < 2:
            raise ValueError(f"betas must be a 1-D table of at least 2 steps, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta_t must lie in (0, 1)")
        self.name = name
        self.params = dict(params or {})
        self.T = len(betas)
        self.t_min = 0.0
        self.t_max = float(self.T - 1)
        self._betas = betas
        self._log_abar = torch.cumsum(torch.log1p(-betas), 0)  # log alpha-bar_t, strictly decreasing

    # ---- the DDPM tables (a view of the same numbers) -------------------------------------------------
    @property
    def betas(self) -> Tensor:
        """beta_t, t = 0..T-1 (paper index t+1)."""
        return self._betas

    @property
    def alphas(self) -> Tensor:
        """alpha_t = 1 - beta_t (DDPM notation, not the signal scale)."""
        return 1.0 - self._betas

    @property
    def alphas_cumprod(self) -> Tensor:
        """alpha-bar_t = prod_{s<=t} (1 - beta_s)."""
        return torch.exp(self._log_abar)

    @property
    def alphas_cumprod_prev(self) -> Tensor:
        """alpha-bar_{t-1}, with alpha-bar_{-1} = 1."""
        return torch.cat([self._log_abar.new_ones(1), self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> Tensor:
        """beta-tilde_t = (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t) beta_t (Ho et al. eq. 7); 0 at t = 0."""
        return (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod) * self._betas

    @property
    def posterior_mean_coefs(self) -> tuple[Tensor, Tensor]:
        """Coefficients (c0, ct) of mu-tilde_t = c0 x_0 + ct x_t (Ho et al. eq. 7)."""
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        c0 = abar_prev.sqrt() * self._betas / (1.0 - abar)
        ct = self.alphas.sqrt() * (1.0 - abar_prev) / (1.0 - abar)
        return c0, ct

    # ---- continuous-time view ------------------------------------------------------------------------
    def log_alpha_bar(self, t: Tensor) -> Tensor:
        """log alpha-bar(t), linear in t between integer steps; t is clamped to [0, T-1]."""
        t = as_tensor(t)
        tt = t.to(torch.float64).clamp(0.0, self.t_max)
        i0 = tt.floor().long().clamp(max=self.T - 2)
        w = tt - i0
        table = self._log_abar.to(tt.device)
        return ((1.0 - w) * table[i0] + w * table[i0 + 1]).to(t.dtype)

    def log_snr(self, t: Tensor) -> Tensor:
        la = self.log_alpha_bar(t).to(torch.float64)
        return (la - torch.log(-torch.expm1(la))).to(as_tensor(t).dtype)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        lam = as_tensor(lam)
        la = -F.softplus(-lam.to(torch.float64))  # = logsigmoid(lam); F.logsigmoid is ~1000x slower on 2 CPU threads
        table = self._log_abar.to(la.device)
        # table is decreasing: search in its negation, which increases.
        i = torch.searchsorted(-table, -la.contiguous()).sub(1).clamp(0, self.T - 2)
        w = (la - table[i]) / (table[i + 1] - table[i])
        return (i + w).clamp(0.0, self.t_max).to(lam.dtype)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t: Tensor) -> Tensor:
        la = self.log_alpha_bar(t)
        return torch.sqrt(-torch.expm1(la))

    def config(self) -> dict[str, Any]:
        if self.name == "custom":
            return {"kind": "custom", "betas": self._betas.tolist()}
        return {"kind": self.name, "T": self.T, **self.params}


def linear(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteSchedule:
    """beta_t = beta_1 + (t-1)/(T-1) (beta_T - beta_1) (Ho et al. 2020)."""
    _check(T, beta_start, beta_end)
    return DiscreteSchedule(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), "linear",
                            {"beta_start": beta_start, "beta_end": beta_end})


def quadratic(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DiscreteSchedule:
    """beta_t = [sqrt(beta_1) + (t-1)/(T-1) (sqrt(beta_T) - sqrt(beta_1))]^2."""
    _check(T, beta_start, beta_end)
    b = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64) ** 2
    return DiscreteSchedule(b, "quadratic", {"beta_start": beta_start, "beta_end": beta_end})


def sigmoid(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, r: float = 6.0) -> DiscreteSchedule:
    """beta_t = beta_1 + (beta_T - beta_1) / (1 + exp(r (1 - 2 (t-1)/(T-1))))."""
    _check(T, beta_start, beta_end)
    u = torch.linspace(0.0, 1.0, T, dtype=torch.float64)
    b = beta_start + (beta_end - beta_start) * torch.sigmoid(-r * (1.0 - 2.0 * u))
    return DiscreteSchedule(b, "sigmoid", {"beta_start": beta_start, "beta_end": beta_end, "r": r})


def cosine(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DiscreteSchedule:
    """alpha-bar_t = f(t)/f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2), beta_t clipped at max_beta (Nichol & Dhariwal 2021, eq. 17)."""
    if T < 2:
        raise ValueError(f"T must be at least 2, got {T}")
    if not (s >= 0 and 0 < max_beta < 1):
        raise ValueError(f"cosine needs s >= 0 and 0 < max_beta < 1, got s={s}, max_beta={max_beta}")
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = (1 - abar[1:] / abar[:-1]).clamp(min=1e-12, max=max_beta)
    return DiscreteSchedule(betas, "cosine", {"s": s, "max_beta": max_beta})


def _check(T: int, beta_start: float, beta_end: float) -> None:
    if T < 2:
        raise ValueError(f"T must be at least 2, got {T}")
    if not (0 < beta_start < 1 and 0 < beta_end < 1):
        raise ValueError(f"betas must lie in (0, 1), got beta_start={beta_start}, beta_end={beta_end}")
