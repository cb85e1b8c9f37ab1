"""A learned noise schedule: gamma_eta(t) = -logSNR(t) as a monotone network with learned endpoints (Kingma et al. 2021, sec. 3.2, appendix H)."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import as_tensor
from .continuous import _Continuous
from .discrete import DiscreteSchedule


def _inv_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class LearnedSchedule(_Continuous, nn.Module):
    """Variance-preserving schedule with gamma(t) = gamma_0 + (gamma_1 - gamma_0) (g(t) - g(0)) / (g(1) - g(0)), t in [0, 1].

    g(t) = l1(t) + l3(sigmoid(l2(l1(t)))) / hidden with positive weights (softplus of free parameters), so g, and
    hence gamma, is strictly increasing (Kingma et al. 2021, appendix H); gamma_0 < gamma_1 are learned (gamma_1 =
    gamma_0 + softplus(.)).  alpha^2 = sigmoid(-gamma), sigma^2 = sigmoid(gamma).  As an nn.Module inside a
    Denoiser its parameters train and checkpoint with the network; ``config()`` holds the initial values only.
    """

    def __init__(self, gamma_min: float = -13.3, gamma_max: float = 5.0, hidden: int = 1024):
        nn.Module.__init__(self)
        if not gamma_min < gamma_max:
            raise ValueError(f"learned schedule needs gamma_min < gamma_max, got {gamma_min}, {gamma_max}")
        if not (isinstance(hidden, int) and hidden >= 1):
            raise ValueError(f"hidden must be an integer >= 1, got {hidden!r}")
        self.init = {"gamma_min": float(gamma_min), "gamma_max": float(gamma_max), "hidden": hidden}
        self.t_min, self.t_max = 0.0, 1.0
        self.gamma_0 = nn.Parameter(torch.tensor(float(gamma_min)))
        self.gamma_range = nn.Parameter(torch.tensor(_inv_softplus(gamma_max - gamma_min)))
        self.w1 = nn.Parameter(torch.tensor(_inv_softplus(1.0)))
        self.b1 = nn.Parameter(torch.tensor(0.0))
        u = torch.rand(hidden)
        w2 = 4.0 + 12.0 * torch.rand(hidden)
        self.w2 = nn.Parameter(torch.log(torch.expm1(w2)))
        self.b2 = nn.Parameter(-w2 * u)  # sigmoid centres spread over [0, 1]
        self.w3 = nn.Parameter(torch.full((hidden,), -1.0) + 0.1 * torch.randn(hidden))

    @property
    def gamma_min(self) -> float:
        """Current gamma(0) = -logSNR_max."""
        return float(self.gamma_0.detach())

    @property
    def gamma_max(self) -> float:
        """Current gamma(1) = -logSNR_min."""
        return float((self.gamma_0 + F.softplus(self.gamma_range)).detach())

    def _g(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """The monotone network g(t) and dg/dt for t [N], in t's dtype."""
        p = t.dtype
        w1, w2, w3 = (F.softplus(w).to(p) for w in (self.w1, self.w2, self.w3))
        u = w1 * t + self.b1.to(p)
        h = torch.sigmoid(u[:, None] * w2 + self.b2.to(p))  # [N, hidden]
        n = w2.shape[0]
        g = u + h @ w3 / n
        dg = w1 * (1.0 + (h * (1.0 - h) * w2) @ w3 / n)
        return g, dg

    def gamma_and_derivative(self, t: Tensor, grad_scale: Callable[[Tensor], Tensor] | None = None
                             ) -> tuple[Tensor, Tensor]:
        """gamma(t) and dgamma/dt (shape of t), differentiable in the parameters.

        ``grad_scale`` is applied to the normalised shape (g(t) - g(0)) / (g(1) - g(0)) and its derivative, not to the
        endpoints, so a caller can give the shape parameters a different gradient (the variance-minimising update).
        """
        t = as_tensor(t)
        if not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        flat = torch.cat([t.reshape(-1), t.new_tensor([0.0, 1.0])])
        g, dg = self._g(flat)
        span = g[-1] - g[-2]
        shape, dshape = (g[:-2] - g[-2]) / span, dg[:-2] / span
        if grad_scale is not None:
            shape, dshape = grad_scale(shape), grad_scale(dshape)
        g0 = self.gamma_0.to(t.dtype)
        r = F.softplus(self.gamma_range).to(t.dtype)
        return (g0 + r * shape).reshape(t.shape), (r * dshape).reshape(t.shape)

    def log_snr_and_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """lambda(t) = -gamma(t) and its t-derivative, with gradients to the parameters."""
        g, dg = self.gamma_and_derivative(t)
        return -g, -dg

    def log_snr(self, t: Tensor) -> Tensor:
        return -self.gamma_and_derivative(t)[0]

    @torch.no_grad()
    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of log_snr by bisection on [0, 1] (gamma is strictly increasing); values outside the range clamp."""
        lam = as_tensor(lam)
        lo, hi = torch.zeros_like(lam), torch.ones_like(lam)
        for _ in range(60 if lam.dtype == torch.float64 else 30):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > lam  # still too little noise: go later
            lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    @torch.no_grad()
    def discretize(self, T: int) -> DiscreteSchedule:
        return super().discretize(T)

    def config(self) -> dict[str, Any]:
        return {"kind": "learned", **self.init}

    def __repr__(self) -> str:
        return f"LearnedSchedule(gamma_min={self.gamma_min:.3f}, gamma_max={self.gamma_max:.3f}, hidden={self.init['hidden']})"


__all__ = ["LearnedSchedule"]
