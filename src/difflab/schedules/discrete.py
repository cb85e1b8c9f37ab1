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

from ..utils.config import ConfigError
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


#: DDPM's linear table (Ho et al. 2020): beta from 1e-4 to 0.02 over T = 1000 steps.
DDPM_BETA_START, DDPM_BETA_END, DDPM_T = 1e-4, 0.02, 1000


def default_betas(kind: str, T: int, beta_start: float | None, beta_end: float | None) -> tuple[float, float]:
    """(beta_start, beta_end) for T steps: given values as they are; a missing one is DDPM's value times 1000/T.

    Scaling by 1000/T keeps sum(beta) and hence alpha-bar at the last step near its T = 1000 value for any T, as
    in the linear schedule of Nichol & Dhariwal (2021); with the unscaled values alpha-bar_T is 0.6 at T = 50, far
    from the N(0, I) prior.  The scaled beta_end = 20/T must stay below 1, so the defaults need T >= 21.
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise ConfigError(f"{kind} schedule: T must be an integer >= 2, got {T!r}")
    scale = DDPM_T / T  # exactly 1.0 at T = 1000: the DDPM table is unchanged bit for bit
    start = DDPM_BETA_START * scale if beta_start is None else beta_start
    end = DDPM_BETA_END * scale if beta_end is None else beta_end
    if (beta_start is None and start >= 1) or (beta_end is None and end >= 1):
        raise ConfigError(f"{kind} schedule with T={T}: the default betas scaled by 1000/T reach "
                          f"beta_end = 0.02 * 1000/{T} = {end:g} >= 1; use T >= 21 or give beta_start and beta_end")
    _check(kind, T, start, end)
    return start, end


def linear(T: int = 1000, beta_start: float | None = None, beta_end: float | None = None) -> DiscreteSchedule:
    """beta_t = beta_1 + (t-1)/(T-1) (beta_T - beta_1) (Ho et al. 2020); default endpoints 1e-4, 0.02 scaled by 1000/T."""
    beta_start, beta_end = default_betas("linear", T, beta_start, beta_end)
    return DiscreteSchedule(torch.linspace(beta_start, beta_end, T, dtype=torch.float64), "linear",
                            {"beta_start": beta_start, "beta_end": beta_end})


def quadratic(T: int = 1000, beta_start: float | None = None, beta_end: float | None = None) -> DiscreteSchedule:
    """beta_t = [sqrt(beta_1) + (t-1)/(T-1) (sqrt(beta_T) - sqrt(beta_1))]^2; default endpoints as :func:`linear`."""
    beta_start, beta_end = default_betas("quadratic", T, beta_start, beta_end)
    b = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64) ** 2
    return DiscreteSchedule(b, "quadratic", {"beta_start": beta_start, "beta_end": beta_end})


def sigmoid(T: int = 1000, beta_start: float | None = None, beta_end: float | None = None,
            r: float = 6.0) -> DiscreteSchedule:
    """beta_t = beta_1 + (beta_T - beta_1) / (1 + exp(r (1 - 2 (t-1)/(T-1)))); default endpoints as :func:`linear`."""
    beta_start, beta_end = default_betas("sigmoid", T, beta_start, beta_end)
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


def _check(kind: str, T: int, beta_start: float, beta_end: float) -> None:
    if not (0 < beta_start < 1 and 0 < beta_end < 1):
        raise ConfigError(f"{kind} schedule with T={T}: betas must lie in (0, 1), got beta_start={beta_start}, "
                          f"beta_end={beta_end}")
