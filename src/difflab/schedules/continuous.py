"""Continuous-time schedules on t in [t_min, t_max] (Song et al. 2021; Nichol & Dhariwal 2021; Kingma et al. 2021)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .base import Schedule, as_tensor
from .discrete import DiscreteSchedule


class _Continuous(Schedule):
    def discretize(self, T: int) -> DiscreteSchedule:
        """DDPM view with T steps: alpha-bar_i = alpha(t_i)^2 / (alpha^2 + sigma^2) at t_i = (i+1)/T * t_max."""
        t = torch.arange(1, T + 1, dtype=torch.float64) / T * self.t_max
        abar = torch.sigmoid(self.log_snr(t))
        prev = torch.cat([abar.new_ones(1), abar[:-1]])
        return DiscreteSchedule((1 - abar / prev).clamp(1e-12, 0.999))


class VP(_Continuous):
    """VP SDE with beta(t) = beta_min + t (beta_max - beta_min): alpha-bar(t) = exp(-int_0^t beta) (Song et al. 2021, eq. 11).

    beta_min = beta_max = 2 gives the Ornstein-Uhlenbeck "DDPM SDE" x_t = e^{-t} x_0 + sqrt(1 - e^{-2t}) eps.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3, t_max: float = 1.0):
        if not (0 <= beta_min <= beta_max and beta_max > 0):
            raise ValueError(f"VP needs 0 <= beta_min <= beta_max, beta_max > 0, got {beta_min}, {beta_max}")
        if not (0 < t_min < t_max):
            raise ValueError(f"VP needs 0 < t_min < t_max, got {t_min}, {t_max}")
        self.beta_min, self.beta_max, self.t_min, self.t_max = beta_min, beta_max, t_min, t_max

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        t = as_tensor(t)
        return -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)

    def log_snr(self, t: Tensor) -> Tensor:
        la = self.log_alpha_bar(t)
        return la - torch.log(-torch.expm1(la))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return self._t_from_log_alpha_bar(-torch.nn.functional.softplus(-as_tensor(lam)))  # = logsigmoid, which is very slow on 2 CPU threads

    def _t_from_log_alpha_bar(self, la: Tensor) -> Tensor:
        """Solve beta_min t + (beta_max - beta_min) t^2 / 2 = -la for t >= 0."""
        d = self.beta_max - self.beta_min
        if d == 0:
            return -la / self.beta_min
        return 2 * -la / (self.beta_min + torch.sqrt(self.beta_min**2 - 2 * d * la))

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self.log_alpha_bar(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(self.log_alpha_bar(t)))

    def sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        beta = self.beta_min + as_tensor(t) * (self.beta_max - self.beta_min)
        return -0.5 * beta, beta

    def config(self) -> dict[str, Any]:
        return {"kind": "vp", "beta_min": self.beta_min, "beta_max": self.beta_max,
                "t_min": self.t_min, "t_max": self.t_max}


class GeometricVP(_Continuous):
    """Geometric VP SDE: sigma^2(t) = sigma2_min (sigma2_max / sigma2_min)^t, alpha^2 = 1 - sigma^2, so
    beta(t) = log(sigma2_max / sigma2_min) sigma^2 / (1 - sigma^2) and g^2 / sigma^2 is nearly constant in t
    (Vahdat et al. 2021, LSGM sec. 3.4: uniform t is then close to the likelihood weighting's importance sampling).
    """

    def __init__(self, sigma2_min: float = 3e-5, sigma2_max: float = 0.999, t_min: float = 1e-2, t_max: float = 1.0):
        if not 0 < sigma2_min < sigma2_max < 1:
            raise ValueError(f"geometric VP needs 0 < sigma2_min < sigma2_max < 1, got {sigma2_min}, {sigma2_max}")
        if not 0 <= t_min < t_max:
            raise ValueError(f"geometric VP needs 0 <= t_min < t_max, got {t_min}, {t_max}")
        self.sigma2_min, self.sigma2_max, self.t_min, self.t_max = sigma2_min, sigma2_max, t_min, t_max
        self._log_ratio = math.log(sigma2_max / sigma2_min)

    def _log_var(self, t: Tensor) -> Tensor:
        return math.log(self.sigma2_min) + as_tensor(t) * self._log_ratio

    def log_snr(self, t: Tensor) -> Tensor:
        lv = self._log_var(t)
        return torch.log(-torch.expm1(lv)) - lv

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        lv = -torch.nn.functional.softplus(as_tensor(lam))  # log sigma^2 = log sigmoid(-lambda)
        return (lv - math.log(self.sigma2_min)) / self._log_ratio

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(self._log_var(t)))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.exp(0.5 * self._log_var(t))

    def sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        var = torch.exp(self._log_var(t))
        beta = self._log_ratio * var / (1 - var)
        return -0.5 * beta, beta

    def config(self) -> dict[str, Any]:
        return {"kind": "geometric_vp", "sigma2_min": self.sigma2_min, "sigma2_max": self.sigma2_max,
                "t_min": self.t_min, "t_max": self.t_max}


class SubVP(VP):
    """Sub-VP SDE: alpha(t) = exp(-1/2 int beta), sigma(t) = 1 - exp(-int beta) (Song et al. 2021, eq. 29)."""

    variance_preserving = False

    def log_snr(self, t: Tensor) -> Tensor:
        la = self.log_alpha_bar(t)
        return la - 2.0 * torch.log(-torch.expm1(la))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        lam = as_tensor(lam)
        # log_snr is increasing in la = log alpha-bar < 0: bisection, then VP's closed-form inverse of la.
        lo = torch.full_like(lam, -200.0, dtype=torch.float64)
        hi = torch.full_like(lam, -1e-300, dtype=torch.float64)
        target = lam.to(torch.float64)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            up = (mid - 2.0 * torch.log(-torch.expm1(mid))) < target
            lo, hi = torch.where(up, mid, lo), torch.where(up, hi, mid)
        return self._t_from_log_alpha_bar(0.5 * (lo + hi)).to(lam.dtype)

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(self.log_alpha_bar(t))

    def sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        t = as_tensor(t)
        beta = self.beta_min + t * (self.beta_max - self.beta_min)
        return -0.5 * beta, beta * -torch.expm1(2.0 * self.log_alpha_bar(t))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "kind": "subvp"}


class VE(_Continuous):
    """VE SDE: alpha = 1, sigma(t) = sigma_min (sigma_max / sigma_min)^t (Song et al. 2021, eq. 9)."""

    variance_preserving = False

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not (0 < sigma_min < sigma_max):
            raise ValueError(f"VE needs 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.t_min, self.t_max = 0.0, 1.0

    def log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * torch.log(self.sigma(t))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        lam = as_tensor(lam)
        return (-0.5 * lam - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(as_tensor(t))

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** as_tensor(t)

    def sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        s = self.sigma(t)
        return torch.zeros_like(s), 2.0 * math.log(self.sigma_max / self.sigma_min) * s**2

    def config(self) -> dict[str, Any]:
        return {"kind": "ve", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class Cosine(_Continuous):
    """Cosine schedule in log-SNR form: lambda(t) = -2 log tan(pi/2 u(t)), u mapped so lambda spans [lambda_min, lambda_max].

    alpha-bar = cos^2(pi/2 u) as in Nichol & Dhariwal (2021); the log-SNR bounds replace their offset s
    (Kingma et al. 2021, appendix; Hoogeboom et al. 2023).
    """

    def __init__(self, log_snr_min: float = -20.0, log_snr_max: float = 20.0):
        if not log_snr_min < log_snr_max:
            raise ValueError(f"cosine needs log_snr_min < log_snr_max, got {log_snr_min}, {log_snr_max}")
        self.log_snr_min, self.log_snr_max = log_snr_min, log_snr_max
        self._a = math.atan(math.exp(-0.5 * log_snr_max))
        self._b = math.atan(math.exp(-0.5 * log_snr_min))
        self.t_min, self.t_max = 0.0, 1.0

    def log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * torch.log(torch.tan(self._a + as_tensor(t) * (self._b - self._a)))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (torch.atan(torch.exp(-0.5 * as_tensor(lam))) - self._a) / (self._b - self._a)

    def config(self) -> dict[str, Any]:
        return {"kind": "cosine", "log_snr_min": self.log_snr_min, "log_snr_max": self.log_snr_max}



class Flow(_Continuous):
    """The linear (rectified-flow) path x_t = (1 - t) x_0 + t eps: alpha = 1 - t, sigma = t (Lipman et al. 2023;
    Liu et al. 2023); lambda(t) = 2 log((1 - t) / t), so sigma/alpha = t / (1 - t) and t = sigmoid(-lambda / 2).

    t is kept in [t_min, t_max] inside (0, 1), where the log-SNR is finite (t_max = 1 - 1e-3: sigma/alpha = 999).
    """

    variance_preserving = False
    #: the path's own time range is [0, 1] (t = sigma); networks see 1000 t (models.networks.time_scale_for)
    time_span = 1.0

    def __init__(self, t_min: float = 1e-3, t_max: float = 1.0 - 1e-3):
        if not 0 < t_min < t_max < 1:
            raise ValueError(f"flow needs 0 < t_min < t_max < 1, got {t_min}, {t_max}")
        self.t_min, self.t_max = t_min, t_max

    def log_snr(self, t: Tensor) -> Tensor:
        t = as_tensor(t)
        return 2.0 * (torch.log1p(-t) - torch.log(t))

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-0.5 * as_tensor(lam))

    def alpha(self, t: Tensor) -> Tensor:
        return 1.0 - as_tensor(t)

    def sigma(self, t: Tensor) -> Tensor:
        return as_tensor(t).clone()

    def sigma_ve(self, t: Tensor) -> Tensor:
        t = as_tensor(t)
        return t / (1.0 - t)

    def t_from_sigma_ve(self, s: Tensor) -> Tensor:
        s = as_tensor(s)
        return s / (1.0 + s)

    def sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """f = d log alpha / dt = -1 / (1 - t), g^2 = d sigma^2/dt - 2 f sigma^2 = 2 t / (1 - t)."""
        t = as_tensor(t)
        return -1.0 / (1.0 - t), 2.0 * t / (1.0 - t)

    def config(self) -> dict[str, Any]:
        return {"kind": "flow", "t_min": self.t_min, "t_max": self.t_max}
