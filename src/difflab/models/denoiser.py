"""The one model contract: a denoiser maps (x_t, t, cond) to the x_0 prediction under a schedule.

Networks may be trained to predict eps, x_0, v or the score; the conversion between those parametrisations
happens here and nowhere else.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal, get_args

import torch
from torch import Tensor, nn

from ..schedules import Schedule, append_dims, as_tensor

Prediction = Literal["eps", "x0", "v", "score", "flow", "edm"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)
SIGMA_DATA = 0.5  # EDM's default data std for images in [-1, 1] (Karras et al. 2022, Table 1)


def edm_scalings(alpha: Tensor, sigma: Tensor, sigma_data: float | Tensor = SIGMA_DATA) -> tuple[Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in) of EDM's preconditioning at s = sigma / alpha (Karras et al. 2022, Table 1), acting on
    y = x_t / alpha: D = c_skip y + c_out F(c_in y).  c_skip = sd^2/(s^2+sd^2), c_out = s sd/sqrt(s^2+sd^2), c_in = 1/sqrt(s^2+sd^2)."""
    s = sigma / alpha
    root = torch.sqrt(s**2 + sigma_data**2)
    return sigma_data**2 / (s**2 + sigma_data**2), s * sigma_data / root, 1.0 / root


def x0_from(prediction: Prediction, out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor,
            sigma_data: float | Tensor = SIGMA_DATA) -> Tensor:
    """x_0 implied by a network output of the given kind at x_t = alpha x_0 + sigma eps (alpha, sigma broadcastable)."""
    if prediction == "eps":
        return (x - sigma * out) / alpha
    if prediction == "x0":
        return out
    if prediction == "v":  # v = alpha eps - sigma x_0 (Salimans & Ho 2022); general (non-VP) inverse
        return (alpha * x - sigma * out) / (alpha**2 + sigma**2)
    if prediction == "score":  # score = -eps / sigma
        return (x + sigma**2 * out) / alpha
    if prediction == "flow":  # u = eps - x_0, the velocity dx_t/dt of the linear path (Liu et al. 2023); any schedule
        return (x - sigma * out) / (alpha + sigma)
    if prediction == "edm":  # D = c_skip y + c_out F, y = x / alpha (Karras et al. 2022, eq. 7)
        skip, c_out, _ = edm_scalings(alpha, sigma, sigma_data)
        return skip * (x / alpha) + c_out * out
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def target_for(prediction: Prediction, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor,
               sigma_data: float | Tensor = SIGMA_DATA) -> Tensor:
    """Regression target of a network of the given kind, for data x_0 noised with eps."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return alpha * eps - sigma * x0
    if prediction == "score":
        return -eps / sigma
    if prediction == "flow":
        return eps - x0
    if prediction == "edm":  # F target (x_0 - c_skip y) / c_out = (s x_0 - sd^2 eps) / (sd sqrt(s^2 + sd^2)) (Karras et al. 2022, eq. 8)
        s = sigma / alpha
        return (s * x0 - sigma_data**2 * eps) / (sigma_data * torch.sqrt(s**2 + sigma_data**2))
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def x0_error_factor(prediction: Prediction, alpha: Tensor, sigma: Tensor,
                    sigma_data: float | Tensor = SIGMA_DATA) -> Tensor:
    """c with ||out - target||^2 = c ||D - x_0||^2: the squared derivative of the prediction with respect to x_0 at fixed x_t."""
    snr = (alpha / sigma) ** 2
    if prediction == "eps":
        return snr
    if prediction == "x0":
        return torch.ones_like(snr)
    if prediction == "v":
        return (alpha**2 + sigma**2) ** 2 / sigma**2
    if prediction == "score":
        return snr / sigma**2
    if prediction == "flow":
        return ((alpha + sigma) / sigma) ** 2
    if prediction == "edm":
        return 1.0 / edm_scalings(alpha, sigma, sigma_data)[1] ** 2
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def eps_from_x0(x: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """eps = (x_t - alpha x_0) / sigma."""
    return (x - alpha * x0) / sigma


class Denoiser(nn.Module):
    """D(x_t, t, cond) -> x_0 prediction, wrapping a network ``net(x_t, t[, cond])`` that predicts ``prediction``.

    ``t`` is the schedule's own time (the step index 0..T-1 for DDPM schedules, [0, 1] for continuous ones),
    a tensor of shape [B].  ``eps`` and ``score`` give the same prediction in other parametrisations.

    ``prediction="edm"`` is EDM's preconditioning on any schedule (Karras et al. 2022, Table 1): the network sees
    c_in x_t / alpha, unit-variance for data of std ``sigma_data`` (a buffer, saved with the weights), and its
    output F enters D = c_skip y + c_out F.  Its noise input stays the schedule's time t (EDM's c_noise for VP
    is 999 t; any monotone function of sigma serves), so every network and time embedding works unchanged.
    """

    def __init__(self, net: Callable[..., Tensor], schedule: Schedule, prediction: Prediction = "eps",
                 sigma_data: float = SIGMA_DATA):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data!r}")
        self.net = net  # an nn.Module is registered as a submodule; a plain function is kept as an attribute
        self.schedule = schedule
        self.prediction: Prediction = prediction
        if prediction == "edm":
            self.register_buffer("sigma_data", torch.tensor(float(sigma_data), dtype=torch.float64))

    def _sigma_data(self, x: Tensor) -> Tensor | float:
        sd = getattr(self, "sigma_data", None)
        return SIGMA_DATA if sd is None else sd.to(x.dtype)

    def raw(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """The network's own output at (x_t, t) (for ``edm``, of the scaled input c_in x_t / alpha)."""
        t = _batch_t(t, x)
        if self.prediction == "edm":
            a, s = self.coefficients(t, x)
            x = x / torch.sqrt(s**2 + (a * self._sigma_data(x)) ** 2)  # c_in y = x / sqrt(sigma^2 + alpha^2 sd^2)
        return self.net(x, t) if cond is None else self.net(x, t, cond)

    def target(self, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The network's regression target for data x_0 noised with eps (:func:`target_for` with this model's sigma_data)."""
        return target_for(self.prediction, x0, eps, alpha, sigma, self._sigma_data(x0))

    def coefficients(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """alpha(t), sigma(t) shaped to broadcast against x, in x's dtype."""
        t = _batch_t(t, x)
        a, s = self.schedule.alpha_sigma(t)
        return append_dims(a.to(x.dtype), x.ndim), append_dims(s.to(x.dtype), x.ndim)

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        a, s = self.coefficients(t, x)
        return x0_from(self.prediction, self.raw(x, t, cond), x, a, s, self._sigma_data(x))

    def eps(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """eps prediction (exact for eps-networks, converted otherwise)."""
        if self.prediction == "eps":
            return self.raw(x, t, cond)
        a, s = self.coefficients(t, x)
        return eps_from_x0(x, self(x, t, cond), a, s)

    def score(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """grad_x log p_t(x) = -eps / sigma."""
        _, s = self.coefficients(t, x)
        return -self.eps(x, t, cond) / s


class ConsistencyDenoiser(Denoiser):
    """Consistency function f(x_t, t) -> the PF-ODE endpoint x_0, in the Denoiser contract, with the boundary
    parametrisation f = c_skip(s) y + c_out(s) F (Song et al. 2023, eq. 7 and app. C), y = x / alpha, s = sigma / alpha.

    c_skip = sigma_data^2 / ((s - s_min)^2 + sigma_data^2), c_out = sigma_data (s - s_min) / sqrt(s^2 + sigma_data^2),
    s_min = the schedule's smallest level, so f = y exactly there. F is EDM's preconditioned output (Karras et al. 2022,
    eq. 7) of the network read as ``prediction``: F = (D - c_skip^EDM y) / c_out^EDM (for sigma_data = 1 on a VP
    schedule, F = -v), so a student started from a denoiser's weights begins as that denoiser away from s_min.
    ``sigma_data`` is a buffer, saved with the weights.
    """

    def __init__(self, net: Callable[..., Tensor], schedule: Schedule, prediction: Prediction = "v",
                 sigma_data: float = 0.5):
        super().__init__(net, schedule, prediction, sigma_data)
        if prediction != "edm":
            self.register_buffer("sigma_data", torch.tensor(float(sigma_data), dtype=torch.float64))
        t_min = torch.tensor(float(schedule.t_min), dtype=torch.float64)
        self.sigma_min = float(schedule.sigma_ve(t_min))

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        a, sg = self.coefficients(t, x)
        d = x0_from(self.prediction, self.raw(x, t, cond), x, a, sg, self.sigma_data.to(x.dtype))
        s, y, sd = sg / a, x / a, self.sigma_data.to(x.dtype)
        skip_edm, out_edm = sd**2 / (s**2 + sd**2), s * sd / torch.sqrt(s**2 + sd**2)
        e = (s - self.sigma_min).clamp(min=0)
        skip, out = sd**2 / (e**2 + sd**2), sd * e / torch.sqrt(s**2 + sd**2)
        return skip * y + (out / out_edm) * (d - skip_edm * y)


class Clamped(nn.Module):
    """D(x_t, t, cond) clamped to the data range [lo, hi] ("clip_denoised", Ho et al. 2020; every sampler accepts it)."""

    def __init__(self, model: Callable[..., Tensor], lo: float = -1.0, hi: float = 1.0):
        super().__init__()
        self.model, self.lo, self.hi = model, lo, hi
        self.schedule = model.schedule

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.model(x, t, cond).clamp(self.lo, self.hi)


class Thresholded(nn.Module):
    """Dynamic thresholding of D (Saharia et al. 2022, sec. 2.3): per sample s = max(1, quantile_p |x_0|), x_0 = clip(x_0, -s, s) / s."""

    def __init__(self, model: Callable[..., Tensor], p: float = 0.995, max_value: float = math.inf):
        super().__init__()
        if not 0.0 < p <= 1.0:
            raise ValueError(f"threshold percentile p must lie in (0, 1], got {p}")
        self.model, self.p, self.max_value = model, p, max_value  # max_value: s <= it (diffusers' sample_max_value)
        self.schedule = model.schedule

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        x0 = self.model(x, t, cond)
        flat = x0.abs().flatten(1)
        s = torch.quantile(flat.to(torch.float32 if flat.dtype in (torch.float16, torch.bfloat16) else flat.dtype),
                           self.p, dim=1).clamp(min=1.0, max=max(self.max_value, 1.0)).to(x0.dtype)
        s = s.reshape(-1, *([1] * (x0.ndim - 1)))
        return torch.maximum(torch.minimum(x0, s), -s) / s


def _batch_t(t: Tensor | float, x: Tensor) -> Tensor:
    t = as_tensor(t, like=x)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return t


def from_eps(net: Callable[..., Tensor], schedule: Schedule) -> Denoiser:
    """Denoiser from a network predicting eps (Ho et al. 2020)."""
    return Denoiser(net, schedule, "eps")


def from_x0(net: Callable[..., Tensor], schedule: Schedule) -> Denoiser:
    """Denoiser from a network predicting x_0."""
    return Denoiser(net, schedule, "x0")


def from_v(net: Callable[..., Tensor], schedule: Schedule) -> Denoiser:
    """Denoiser from a network predicting v = alpha eps - sigma x_0 (Salimans & Ho 2022)."""
    return Denoiser(net, schedule, "v")


def from_score(net: Callable[..., Tensor], schedule: Schedule) -> Denoiser:
    """Denoiser from a network predicting the score grad log p_t(x_t) (Song et al. 2021)."""
    return Denoiser(net, schedule, "score")


def from_flow(net: Callable[..., Tensor], schedule: Schedule) -> Denoiser:
    """Denoiser from a network predicting the flow velocity u = eps - x_0 (Lipman et al. 2023; Liu et al. 2023)."""
    return Denoiser(net, schedule, "flow")


def from_edm(net: Callable[..., Tensor], schedule: Schedule, sigma_data: float = SIGMA_DATA) -> Denoiser:
    """Denoiser from a raw network F under EDM's preconditioning (Karras et al. 2022, eq. 7)."""
    return Denoiser(net, schedule, "edm", sigma_data)


__all__ = ["Denoiser", "ConsistencyDenoiser", "Clamped", "Thresholded", "Prediction", "PREDICTIONS", "SIGMA_DATA", "from_eps", "from_x0", "from_v", "from_score", "x0_from",
           "target_for", "eps_from_x0", "edm_scalings", "x0_error_factor", "from_flow", "from_edm"]
