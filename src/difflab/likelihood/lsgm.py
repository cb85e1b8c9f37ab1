"""The LSGM bound (Vahdat, Kreis & Kautz 2021, eq. 2 and appendix A) for a Gaussian encoder and a score prior.

The latent is z = z_eps, the encoder's z_0 ~ N(mu, e^logvar) diffused to the VP SDE's first time t_eps:
q(z | x) = N(alpha_eps mu, alpha_eps^2 e^logvar + sigma_eps^2).  The prior p(z) is the time-t_eps marginal of the
score model's SDE started from N(0, I) at t = 1.  Then -log p(x) <= rec + neg_entropy + ce with
rec = E_q[-log p(x | z)], neg_entropy = E_q[log q(z | x)] (closed form) and the cross entropy by denoising
score matching, conditioned on z_0 (LSGM eq. 5 with the constant of their appendix A):

    CE(q(z_eps | x) || p(z_eps)) = 1/2 int_eps^1 w(t) E ||n - eps_theta(z_t, t)||^2 dt
                                   + CE(q(z_1 | x) || N(0, I)) + D/2 log(sigma_eps^2 / sigma_1^2),

z_t = alpha_t z_0 + sigma_t n, with the likelihood weighting w(t) = g(t)^2 / sigma_t^2 = -d logSNR / dt.  It is
an equality when eps_theta is the exact eps of the diffused prior (so with eps_theta = sigma_t z_t the prior
is N(0, I) and the bound is the Normal-prior VAE's negative ELBO), and an upper bound on the cross entropy of
the SDE prior otherwise (Song et al. 2021, "Maximum likelihood training of score-based diffusion models", thm. 1).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ..models.denoiser import Denoiser
from ..schedules import Schedule, append_dims
from .gaussian import discretized_gaussian_log_likelihood, sum_except_batch

TimeSampling = Literal["ll_iw", "logsnr", "uniform"]
LOG_2PI = math.log(2 * math.pi)


def _scalar(sched: Schedule, t: float) -> tuple[float, float]:
    with torch.no_grad():
        a, s = sched.alpha_sigma(torch.tensor(float(t), dtype=torch.float64))
    return float(a), float(s)


def sample_time(sched: Schedule, u: Tensor, mode: TimeSampling = "ll_iw") -> tuple[Tensor, Tensor]:
    """t [n] on [t_eps, 1] from uniforms u [n], and the importance weight w(t) / r(t) of w = g^2 / sigma^2 (float64).

    ``ll_iw`` (LSGM sec. 3.4, for a VP SDE): r(t) proportional to d log sigma_t^2 / dt, i.e. sigma_t^2 log-uniform on
    [sigma_eps^2, sigma_1^2]; w / r = log(sigma_1^2 / sigma_eps^2) / alpha_t^2, which makes the integrand of a
    near-Normal latent (E||n - eps||^2 about D alpha_t^2) constant in t.  ``logsnr``: r proportional to w itself
    (logSNR uniform), w / r = logSNR(eps) - logSNR(1).  ``uniform``: t uniform on [eps, 1], weight (1 - eps) w(t).
    """
    u = u.to(torch.float64)
    t_lo, t_hi = float(sched.t_min), float(sched.t_max)
    lam_lo = float(sched.log_snr(torch.tensor(t_lo, dtype=torch.float64)))
    lam_hi = float(sched.log_snr(torch.tensor(t_hi, dtype=torch.float64)))
    if mode == "ll_iw":
        lv_lo, lv_hi = (2 * math.log(_scalar(sched, t)[1]) for t in (t_lo, t_hi))
        var = torch.exp(lv_lo + u * (lv_hi - lv_lo))  # sigma_t^2
        t = sched.t_from_log_snr(torch.log1p(-var) - torch.log(var)).clamp(t_lo, t_hi)
        return t, (lv_hi - lv_lo) / (1 - var)
    if mode == "logsnr":
        t = sched.t_from_log_snr(lam_lo - u * (lam_lo - lam_hi)).clamp(t_lo, t_hi)
        return t, torch.full_like(u, lam_lo - lam_hi)
    if mode == "uniform":
        t = t_lo + u * (t_hi - t_lo)
        _, g2 = sched.sde(t)
        return t, (t_hi - t_lo) * g2 / sched.sigma(t) ** 2
    raise ValueError(f"time sampling must be 'll_iw', 'logsnr' or 'uniform', got {mode!r}")


def latent_gaussian(sched: Schedule, mean: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(z_eps | x) = N(alpha_eps mu, alpha_eps^2 e^logvar + sigma_eps^2)."""
    a, s = _scalar(sched, sched.t_min)
    return a * mean, a * a * logvar.exp() + s * s


def neg_entropy(sched: Schedule, mean: Tensor, logvar: Tensor) -> Tensor:
    """E_q[log q(z_eps | x)] = -1/2 sum log(2 pi e v) per example [B]."""
    _, var = latent_gaussian(sched, mean, logvar)
    return -0.5 * sum_except_batch(torch.log(var) + LOG_2PI + 1.0)


def terminal_cross_entropy(sched: Schedule, mean: Tensor, logvar: Tensor) -> Tensor:
    """CE(q(z_1 | x) || N(0, I)) = 1/2 sum(log 2 pi + alpha_1^2 (mu^2 + e^logvar) + sigma_1^2) per example [B]."""
    a, s = _scalar(sched, sched.t_max)
    return 0.5 * sum_except_batch(LOG_2PI + a * a * (mean ** 2 + logvar.exp()) + s * s)


def ce_constant(sched: Schedule, dims: int) -> float:
    """D/2 log(sigma_eps^2 / sigma_1^2): -D int_eps^1 (f + g^2 / (2 sigma_t^2)) dt for a VP SDE."""
    _, s_lo = _scalar(sched, sched.t_min)
    _, s_hi = _scalar(sched, sched.t_max)
    return 0.5 * dims * (2 * math.log(s_lo) - 2 * math.log(s_hi))


def dsm_term(prior: Denoiser, z0: Tensor, t: Tensor, weight: Tensor, noise: Tensor) -> Tensor:
    """1/2 weight ||n - eps_theta(alpha_t z_0 + sigma_t n, t)||^2 per example [B] (the DSM integrand, LSGM eq. 5)."""
    a, s = prior.schedule.alpha_sigma(t)
    z_t = append_dims(a.to(z0.dtype), z0.ndim) * z0 + append_dims(s.to(z0.dtype), z0.ndim) * noise
    err = sum_except_batch((noise - prior.eps(z_t, t.to(z0.dtype))) ** 2)
    return 0.5 * weight.to(err.dtype) * err


def dsm_cross_entropy(prior: Denoiser, mean: Tensor, logvar: Tensor, u0: Tensor, noise: Tensor, t_u: Tensor,
                      mode: TimeSampling = "ll_iw") -> Tensor:
    """One-sample estimate of CE(q(z_eps | x) || p(z_eps)) per example [B] (module docstring): z_0 = mu + e^{logvar/2} u0,
    t from the uniforms ``t_u`` [B] by ``mode``, diffusion noise ``noise``."""
    sched = prior.schedule
    t, w = sample_time(sched, t_u, mode)
    z0 = mean + torch.exp(0.5 * logvar) * u0
    return (dsm_term(prior, z0, t.to(mean.device), w.to(mean.device), noise) + terminal_cross_entropy(sched, mean, logvar)
            + ce_constant(sched, mean[0].numel()))


def reconstruction(decoder: torch.nn.Module, x: Tensor, z: Tensor, bins: int = 256) -> Tensor:
    """-log p(x | z) per example [B] in nats under the discretised Gaussian decoder (Ho et al. 2020, eq. 13)."""
    mean = decoder(z)
    log_scale = decoder.log_scale.clamp(-7.0, 2.0)[None, :, None, None].expand_as(mean)
    return -sum_except_batch(discretized_gaussian_log_likelihood(x, mean, log_scale, bins))


def lsgm_bound(encoder: torch.nn.Module, decoder: torch.nn.Module, prior: Denoiser, x: Tensor, noise: dict[str, Tensor],
               mode: TimeSampling = "ll_iw", bins: int = 256) -> dict[str, Tensor]:
    """The LSGM negative bound per example [B] in nats: rec, neg_entropy, ce and nll = their sum (module docstring).

    ``noise``: "u_rec" (the latent of the reconstruction), "u0", "n" (latent-shaped) and "t_u" [B] uniforms.
    Also returns mean and logvar of q(z_0 | x).
    """
    mean, logvar = encoder(x)
    m, v = latent_gaussian(prior.schedule, mean, logvar)
    rec = reconstruction(decoder, x, m + v.sqrt() * noise["u_rec"], bins)
    ne = neg_entropy(prior.schedule, mean, logvar)
    ce = dsm_cross_entropy(prior, mean, logvar, noise["u0"], noise["n"], noise["t_u"], mode)
    return {"rec": rec, "neg_entropy": ne, "ce": ce, "nll": rec + ne + ce, "mean": mean, "logvar": logvar}


__all__ = ["TimeSampling", "sample_time", "latent_gaussian", "neg_entropy", "terminal_cross_entropy", "ce_constant",
           "dsm_term", "dsm_cross_entropy", "reconstruction", "lsgm_bound"]
