"""Denoising losses: a training-noise distribution over t plus a weighting of the denoiser's regression error.

With a discrete schedule and uniform integer t this is L_simple (Ho et al. 2020, Algorithm 1); with a
continuous schedule and t ~ U[t_min, t_max] it is denoising score matching (Song et al. 2021, eq. 7), the
score network's error weighted by lambda(t) = sigma(t)^2.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from ..models.denoiser import Denoiser, Prediction, target_for
from ..schedules import Schedule
from ..utils.random import BatchRandom, batch_random

Weighting = Literal["uniform", "min_snr"]


def sample_t(schedule: Schedule, n: int, generator: torch.Generator | BatchRandom | None = None,
             device: torch.device | str = "cpu", antithetic: bool = False) -> Tensor:
    """Training times: uniform integers 0..T-1 for DDPM schedules, uniform on [t_min, t_max] otherwise.

    ``antithetic`` uses one uniform draw shifted over an even grid (low-discrepancy sampler, Kingma et al. 2021).
    """
    rng = batch_random(generator, n)
    u = rng.antithetic(n, torch.float32) if antithetic else rng.rand(n)
    if schedule.discrete:
        t = (u * (schedule.t_max + 1)).floor().clamp(max=schedule.t_max)
    else:
        t = schedule.t_min + u * (schedule.t_max - schedule.t_min)
    return t.to(device)


def loss_weight(prediction: Prediction, weighting: Weighting, log_snr: Tensor, sigma: Tensor,
                min_snr_gamma: float = 5.0) -> Tensor:
    """Per-example weight [B] on the mean squared error in the network's own target space.

    ``uniform``: 1 (L_simple), except score networks, weighted by sigma^2 (Song et al. 2021).
    ``min_snr``: the x0-space weight min(SNR, gamma) expressed in the target space (Hang et al. 2023;
    the v factor SNR + 1 assumes a variance-preserving schedule).
    """
    snr = torch.exp(log_snr)
    if weighting == "uniform":
        return sigma**2 if prediction == "score" else torch.ones_like(snr)
    if weighting == "min_snr":
        # mean squared error of the target = (this factor) x mean squared error of x0
        to_target = {"eps": snr, "x0": torch.ones_like(snr), "v": snr + 1, "score": snr / sigma**2}[prediction]
        return snr.clamp(max=min_snr_gamma) / to_target
    raise ValueError(f"unknown weighting {weighting!r}; choose uniform or min_snr")


def denoising_loss(model: Denoiser, x0: Tensor, cond: Any = None, *, t: Tensor | None = None,
                   eps: Tensor | None = None, generator: torch.Generator | BatchRandom | None = None,
                   weighting: Weighting = "uniform", min_snr_gamma: float = 5.0) -> Tensor:
    """Per-example loss [B]: w(t) * mean ||net(x_t, t) - target||^2 with x_t = alpha x0 + sigma eps."""
    sched = model.schedule
    if t is None:
        t = sample_t(sched, x0.shape[0], generator, x0.device)
    if eps is None:
        eps = batch_random(generator, x0.shape[0]).randn(x0.shape, x0.dtype).to(x0.device)
    a, s = model.coefficients(t, x0)
    xt = a * x0 + s * eps
    err = (model.raw(xt, t, cond) - target_for(model.prediction, x0, eps, a, s)) ** 2
    w = loss_weight(model.prediction, weighting, sched.log_snr(t).to(x0.dtype), s.flatten(), min_snr_gamma)
    return w * err.flatten(1).mean(1)


__all__ = ["sample_t", "loss_weight", "denoising_loss", "Weighting"]
