"""Denoising losses: a training-noise distribution over t plus a weighting of the denoiser's regression error.

With a discrete schedule and uniform integer t this is L_simple (Ho et al. 2020, Algorithm 1); with a
continuous schedule and t ~ U[t_min, t_max] it is denoising score matching (Song et al. 2021, eq. 7), the
score network's error weighted by lambda(t) = sigma(t)^2.  EDM's recipe (Karras et al. 2022, sec. 5) is the
log-normal noise distribution with the ``edm`` weighting; SD3's (Esser et al. 2024) the logit-normal one.
"""
from __future__ import annotations

import math
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from ..models.denoiser import SIGMA_DATA, Denoiser, Prediction, x0_error_factor
from ..schedules import Schedule
from ..utils.random import BatchRandom, batch_random

Weighting = Literal["uniform", "min_snr", "edm", "soft_min_snr", "uncertainty"]
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)
NoiseDistribution = Literal["uniform", "lognormal", "logit_normal"]
NOISE_DISTRIBUTIONS: tuple[str, ...] = get_args(NoiseDistribution)
#: (mean, std) of log sigma: EDM's P_mean, P_std (Karras et al. 2022, Table 1); SD3's logit-normal m, s (Esser et al. 2024)
NOISE_DEFAULTS: dict[str, tuple[float, float]] = {"lognormal": (-1.2, 1.2), "logit_normal": (0.0, 1.0)}


def sample_t(schedule: Schedule, n: int, generator: torch.Generator | BatchRandom | None = None,
             device: torch.device | str = "cpu", antithetic: bool = False, noise: NoiseDistribution = "uniform",
             mean: float | None = None, std: float | None = None) -> Tensor:
    """Training times: uniform integers 0..T-1 for DDPM schedules, uniform on [t_min, t_max] otherwise.

    ``antithetic`` uses one uniform draw shifted over an even grid (low-discrepancy sampler, Kingma et al. 2021).
    ``noise="lognormal"``: log sigma ~ N(mean, std^2) for sigma = sigma(t)/alpha(t) (Karras et al. 2022, sec. 5),
    t = the schedule's inverse, clamped to [t_min, t_max].  ``"logit_normal"``: the flow time
    t_f = sigma / (alpha + sigma) ~ logit-normal(mean, std) (Esser et al. 2024, eq. 19); as logit t_f = log sigma for
    every schedule, it is the same draw with SD3's defaults (0, 1).
    """
    if noise not in NOISE_DISTRIBUTIONS:
        raise ValueError(f"unknown noise distribution {noise!r}; choose one of {', '.join(NOISE_DISTRIBUTIONS)}")
    rng = batch_random(generator, n)
    if noise != "uniform":
        m0, s0 = NOISE_DEFAULTS[noise]
        m, s = m0 if mean is None else mean, s0 if std is None else std
        if not (math.isfinite(m) and s > 0):
            raise ValueError(f"a {noise} noise distribution needs a finite mean and std > 0, got {m}, {s}")
        z = rng.antithetic(n) if antithetic else rng.rand(n, torch.float64)
        log_sigma = m + s * math.sqrt(2.0) * torch.erfinv(2.0 * z.clamp(1e-7, 1 - 1e-7) - 1.0)
        t = schedule.t_from_sigma_ve(torch.exp(log_sigma)).clamp(schedule.t_min, schedule.t_max)
        return t.float().to(device)
    u = rng.antithetic(n, torch.float32) if antithetic else rng.rand(n)
    if schedule.discrete:
        t = (u * (schedule.t_max + 1)).floor().clamp(max=schedule.t_max)
    else:
        t = schedule.t_min + u * (schedule.t_max - schedule.t_min)
    return t.to(device)


def x0_weight(weighting: Weighting, log_snr: Tensor, sigma_data: float = SIGMA_DATA, min_snr_gamma: float = 5.0) -> Tensor:
    """Weight on ||D - x_0||^2 at noise level sigma = exp(-log_snr / 2).

    ``min_snr``: min(SNR, gamma) (Hang et al. 2023); ``edm``: (sigma^2 + sd^2) / (sigma sd)^2 (Karras et al. 2022,
    eq. 8); ``soft_min_snr``: 1 / (sigma^2 + sd^2), k-diffusion's soft minimum of SNR and 1/sd^2 (Crowson et al. 2024);
    ``uncertainty``: the ``edm`` weight, which :func:`denoising_loss` divides by the learned exp(u(sigma)).
    """
    snr = torch.exp(log_snr)
    if weighting == "uncertainty":  # EDM2: EDM's lambda(sigma), divided by exp(u(sigma)) in denoising_loss
        weighting = "edm"
    if weighting == "min_snr":
        return snr.clamp(max=min_snr_gamma)
    s2 = torch.exp(-log_snr)
    if weighting == "edm":
        return (s2 + sigma_data**2) / (s2 * sigma_data**2)
    if weighting == "soft_min_snr":
        return 1.0 / (s2 + sigma_data**2)
    raise ValueError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


def loss_weight(prediction: Prediction, weighting: Weighting, log_snr: Tensor, sigma: Tensor,
                min_snr_gamma: float = 5.0, sigma_data: float = SIGMA_DATA) -> Tensor:
    """Per-example weight [B] on the mean squared error in the network's own target space.

    ``uniform``: 1 (L_simple), except score networks, weighted by sigma^2 (Song et al. 2021).  The other
    weightings are :func:`x0_weight` expressed in the target space (divided by :func:`x0_error_factor`); for an
    ``edm`` network the ``edm`` weight is exactly 1 there, the F-space loss of Karras et al. (2022, eq. 8).
    """
    if weighting == "uniform":
        return sigma**2 if prediction == "score" else torch.ones_like(log_snr)
    alpha = sigma * torch.exp(0.5 * log_snr)
    return x0_weight(weighting, log_snr, sigma_data, min_snr_gamma) / x0_error_factor(prediction, alpha, sigma, sigma_data)


class UncertaintyWeight(nn.Module):
    """EDM2's learned uncertainty u(sigma) (Karras et al. 2024, sec. 5 and app. B.2): a small MLP of Fourier features
    cos(2 pi (f c + phi)) sqrt(2) of c_noise = log(sigma) / 4 (f ~ N(0, 1), phi ~ U(0, 1), fixed buffers), its output
    layer zero so u = 0 at the start.  The loss w / exp(u) ||D - x_0||^2 + u is minimised at u(sigma) = log of the
    expected weighted loss at sigma, so every noise level contributes about equally."""

    def __init__(self, features: int = 64, hidden: int = 32, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(features, generator=g))
        self.register_buffer("phases", torch.rand(features, generator=g))
        self.mlp = nn.Sequential(nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, log_snr: Tensor) -> Tensor:
        """u at log-SNR lambda [B] (sigma = exp(-lambda / 2)) -> [B]."""
        c = (-0.125 * log_snr).to(self.freqs.dtype)  # log(sigma) / 4
        feats = math.sqrt(2.0) * torch.cos(2.0 * math.pi * (c[:, None] * self.freqs + self.phases))
        return self.mlp(feats).squeeze(-1)


def denoising_loss(model: Denoiser, x0: Tensor, cond: Any = None, *, t: Tensor | None = None,
                   eps: Tensor | None = None, generator: torch.Generator | BatchRandom | None = None,
                   weighting: Weighting = "uniform", min_snr_gamma: float = 5.0, noise: NoiseDistribution = "uniform",
                   noise_mean: float | None = None, noise_std: float | None = None,
                   sigma_data: float | None = None, uncertainty: UncertaintyWeight | None = None) -> Tensor:
    """Per-example loss [B]: w(t) * mean ||net(x_t, t) - target||^2 with x_t = alpha x0 + sigma eps, t ~ ``noise``.

    ``sigma_data`` of the ``edm`` / ``soft_min_snr`` weightings defaults to the model's (an ``edm`` denoiser) or 0.5.
    ``weighting="uncertainty"`` needs ``uncertainty`` (an :class:`UncertaintyWeight` trained with the network):
    w / exp(u) * mean error + u (Karras et al. 2024, eq. 21), w the ``edm`` weight.
    """
    if weighting == "uncertainty" and uncertainty is None:
        raise ValueError("weighting 'uncertainty' needs the learned u(sigma) module (uncertainty=UncertaintyWeight())")
    sched = model.schedule
    if t is None:
        t = sample_t(sched, x0.shape[0], generator, x0.device, noise=noise, mean=noise_mean, std=noise_std)
    if eps is None:
        eps = batch_random(generator, x0.shape[0]).randn(x0.shape, x0.dtype).to(x0.device)
    a, s = model.coefficients(t, x0)
    xt = a * x0 + s * eps
    err = (model.raw(xt, t, cond) - model.target(x0, eps, a, s)) ** 2
    sd = sigma_data if sigma_data is not None else float(getattr(model, "sigma_data", SIGMA_DATA))
    lam = sched.log_snr(t).to(x0.dtype)
    w = loss_weight(model.prediction, weighting, lam, s.flatten(), min_snr_gamma, sd)
    if weighting != "uncertainty":
        return w * err.flatten(1).mean(1)
    u = uncertainty(lam).to(x0.dtype)
    return w * torch.exp(-u) * err.flatten(1).mean(1) + u


__all__ = ["UncertaintyWeight", "sample_t", "x0_weight", "loss_weight", "denoising_loss", "Weighting", "WEIGHTINGS", "NoiseDistribution",
           "NOISE_DISTRIBUTIONS", "NOISE_DEFAULTS"]
