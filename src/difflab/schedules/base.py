"""The continuous-time schedule contract: x_t = alpha(t) x_0 + sigma(t) eps."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch
from torch import Tensor


def as_tensor(t: Tensor | float, like: Tensor | None = None) -> Tensor:
    """Return ``t`` as a floating tensor (float64 unless ``like`` gives a dtype/device)."""
    if isinstance(t, Tensor):
        return t if t.is_floating_point() else t.to(torch.get_default_dtype())
    if like is not None:
        return torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return torch.as_tensor(t, dtype=torch.float64)


class Schedule(ABC):
    """A Gaussian forward process q(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I) for t in [t_min, t_max].

    Subclasses define ``log_snr`` = log(alpha^2 / sigma^2) (= -gamma(t) in VDM notation), which must be
    strictly decreasing in t, and its inverse.  ``alpha`` and ``sigma`` default to the variance-preserving
    pair alpha^2 = sigmoid(logSNR), sigma^2 = sigmoid(-logSNR); non-VP schedules (VE, sub-VP) override them.
    """

    t_min: float = 0.0
    t_max: float = 1.0
    #: True when time is the discrete DDPM step index (t = 0..T-1, extended to real values).
    discrete: bool = False
    #: True when alpha(t)^2 + sigma(t)^2 = 1 for every t (the default alpha/sigma pair); VE and sub-VP set False.
    variance_preserving: bool = True

    @abstractmethod
    def log_snr(self, t: Tensor) -> Tensor:
        """lambda(t) = log(alpha(t)^2 / sigma(t)^2), strictly decreasing in t."""

    @abstractmethod
    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of :meth:`log_snr`."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable description; ``difflab.schedules.from_config`` rebuilds the schedule."""

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale alpha(t) (VP: sqrt(sigmoid(lambda)))."""
        return torch.sigmoid(self.log_snr(as_tensor(t))).sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale sigma(t) (VP: sqrt(sigmoid(-lambda)))."""
        return torch.sigmoid(-self.log_snr(as_tensor(t))).sqrt()

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha(t), sigma(t)) in one call."""
        return self.alpha(t), self.sigma(t)

    def sigma_ve(self, t: Tensor) -> Tensor:
        """Noise level of the scaled variable x_t / alpha(t): sigma/alpha = exp(-lambda/2) (Karras et al. 2022)."""
        return torch.exp(-0.5 * self.log_snr(as_tensor(t)))

    def t_from_sigma_ve(self, s: Tensor) -> Tensor:
        """Time at which sigma(t)/alpha(t) = s (s > 0)."""
        s = as_tensor(s)
        return self.t_from_log_snr(-2.0 * torch.log(s))

    def sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Drift coefficient f(t) and squared diffusion g(t)^2 of the forward SDE dx = f x dt + g dW (Song et al. 2021).

        f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2, so that the SDE has exactly these marginals.
        """
        t = as_tensor(t).detach().clone().requires_grad_(True)
        with torch.enable_grad():
            log_alpha = torch.log(self.alpha(t))
            var = self.sigma(t) ** 2
            f = torch.autograd.grad(log_alpha.sum(), t, retain_graph=True)[0]
            dvar = torch.autograd.grad(var.sum(), t)[0]
        g2 = dvar - 2.0 * f * var.detach()
        return f.detach(), g2.detach()

    @property
    def prior_std(self) -> float:
        """Std of the prior N(0, prior_std^2 I) at t_max: sqrt(alpha(t_max)^2 + sigma(t_max)^2), the marginal of unit-variance data (Song et al. 2021, sec. 3.4).

        Exactly 1 for variance-preserving schedules; sqrt(1 + sigma_max^2) for VE.  The same prior is used by the
        ODE likelihood and the prior term of the variational bound, so sampling and likelihood agree.
        """
        if self.variance_preserving:
            return 1.0
        with torch.no_grad():
            a, s = self.alpha_sigma(torch.tensor(float(self.t_max), dtype=torch.float64))
        return math.sqrt(float(a) ** 2 + float(s) ** 2)

    def sample_prior(self, shape: Sequence[int], generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """x_T ~ N(0, prior_std^2 I) of ``shape`` in native coordinates at t_max, the starting point of every sampler.

        The noise is drawn on the generator's device (the CPU for ``None``) and then moved to ``device``, so a seed
        gives the same x_T on every device; for VP schedules it is exactly ``torch.randn(shape, generator=...)``.
        """
        where = generator.device if generator is not None else torch.device("cpu")
        x = torch.randn(tuple(shape), generator=generator, dtype=dtype, device=where)
        std = self.prior_std
        if std != 1.0:
            x = x * std
        return x if device is None else x.to(device)

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Closed-form forward process x_t = alpha(t) x_0 + sigma(t) eps (Ho et al. 2020, eq. 4); t has shape [B]."""
        a, s = self.alpha_sigma(t)
        return append_dims(a, x0.ndim).to(x0) * x0 + append_dims(s, x0.ndim).to(x0) * eps

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kind")
        return f"{type(self).__name__}({args})"


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dimensions so a [B] tensor broadcasts against a [B, ...] tensor of ``ndim`` dims."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))
