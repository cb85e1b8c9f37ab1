"""The variational bound of a diffusion model, term by term: prior, diffusion and reconstruction (in nats per example).

Discrete time (Ho et al. 2020, eq. 5): -log p(x_0) <= L_T + sum_{t>1} KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) + L_0.
Continuous time (Kingma et al. 2021, eq. 11-17): prior KL at t_max, L_inf = -1/2 E_t[lambda'(t) ||eps - eps_hat||^2]
over [t_min, t_max] (or its T-step version L_T), and a reconstruction term at t_min.
With ``bins`` set (8-bit images: 256) the reconstruction uses a discretised Gaussian and the bound is on the
probability of the data's bins; with ``bins=None`` it is on the density of continuous data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from ..models.denoiser import Denoiser, x0_from
from ..schedules import DiscreteSchedule, Schedule, append_dims, as_tensor
from ..utils.random import BatchRandom, batch_random
from .gaussian import discretized_gaussian_log_likelihood, gaussian_log_likelihood, normal_kl, sum_except_batch
from .variance import Variance, reverse_log_variance, split_output


@dataclass
class BoundTerms:
    """Per-example terms of the negative variational bound, in nats, each [B]; ``nll`` is their sum."""

    prior: Tensor
    diffusion: Tensor
    reconstruction: Tensor

    @property
    def nll(self) -> Tensor:
        return self.prior + self.diffusion + self.reconstruction

    def as_dict(self) -> dict[str, Tensor]:
        return {"prior": self.prior, "diffusion": self.diffusion, "reconstruction": self.reconstruction,
                "nll": self.nll}


def _table(v: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """Table entries v[t] for integer steps t [B], shaped to broadcast against x."""
    return append_dims(v[t.long().cpu()].to(x), x.ndim)


def _decoder_nll(x0: Tensor, mean: Tensor, log_var: Tensor, bins: int | None) -> Tensor:
    """-log p(x_0 | mean, var) summed per example: discretised (bins) or a density (bins=None)."""
    log_scale = 0.5 * log_var
    if bins:
        return -sum_except_batch(discretized_gaussian_log_likelihood(x0, mean, log_scale.expand_as(x0), bins))
    return -sum_except_batch(gaussian_log_likelihood(x0, mean, log_scale.expand_as(x0)))


# ---- discrete time (DDPM) -------------------------------------------------------------------------------
def ddpm_prior(schedule: DiscreteSchedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) per example [B] (Ho et al. 2020, eq. 5)."""
    abar = schedule.alphas_cumprod[-1].item()
    return sum_except_batch(normal_kl(abar**0.5 * x0, torch.log(torch.tensor(1.0 - abar)), torch.zeros_like(x0), 0.0))


def reverse_step(model: Denoiser, x_t: Tensor, t: Tensor, cond: Any = None, variance: Variance = "beta_tilde",
                 clip: bool = False) -> tuple[Tensor, Tensor]:
    """x_0-hat and log variance of p(x_{t-1} | x_t) at integer steps t [B] (Ho et al. eq. 11; Nichol & Dhariwal eq. 15)."""
    sched = model.schedule
    tf = t.to(x_t.dtype)
    if isinstance(variance, str) and variance == "learned":
        pred, v = split_output(model, x_t, tf, cond)
        a, s = model.coefficients(tf, x_t)
        x0_hat = x0_from(model.prediction, pred, x_t, a, s)
    else:
        x0_hat, v = model(x_t, tf, cond), None
    if clip:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
    return x0_hat, reverse_log_variance(sched, variance, t, x_t, v)


def step_terms_from(schedule: DiscreteSchedule, x0: Tensor, x_t: Tensor, t: Tensor, x0_hat: Tensor, log_var: Tensor,
                    bins: int | None = None) -> Tensor:
    """L_t per example [B] given the model's x_0-hat and log variance at (x_t, t): the KL for t >= 1, the decoder NLL at t = 0."""
    c0, ct = schedule.posterior_mean_coefs
    c0, ct = _table(c0, t, x0), _table(ct, t, x0)
    mean_p = c0 * x0_hat + ct * x_t
    mean_q = c0 * x0 + ct * x_t
    bt = schedule.posterior_variance.clone()
    bt[0] = bt[1]  # unused at t = 0; keeps the log finite
    kl = sum_except_batch(normal_kl(mean_q, torch.log(_table(bt, t, x0)), mean_p, log_var))
    dec = _decoder_nll(x0, mean_p, log_var, bins)
    return torch.where(t.to(x0.device) == 0, dec, kl)


def ddpm_step_terms(model: Denoiser, x0: Tensor, t: Tensor, eps: Tensor, cond: Any = None,
                    variance: Variance = "beta_tilde", bins: int | None = None, clip: bool = False) -> Tensor:
    """L_{t} per example [B]: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t >= 1, the decoder NLL -log p(x_0|x_1) at t = 0.

    ``t`` integer steps [B] (0-based: step 0 is the paper's t = 1) (Ho et al. 2020, eq. 5 and 13).
    """
    t = t.long()
    a, s = model.coefficients(t.to(x0.dtype), x0)
    x_t = a * x0 + s * eps
    x0_hat, log_var = reverse_step(model, x_t, t, cond, variance, clip)
    return step_terms_from(model.schedule, x0, x_t, t, x0_hat, log_var, bins)


@torch.no_grad()
def ddpm_bound(model: Denoiser, x0: Tensor, cond: Any = None, *, variance: Variance = "beta_tilde",
               bins: int | None = None, num_t: int | None = None, generator: torch.Generator | None = None,
               clip: bool | None = None) -> BoundTerms:
    """The full T-step variational bound of a DDPM with its terms (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, eq. 4-6).

    ``num_t=None`` sums all T-1 KL terms exactly; an integer draws that many stratified steps per example for an
    unbiased estimate of the sum.  ``clip`` (default: when ``bins`` is set) clips x_0-hat to [-1, 1].
    """
    sched = model.schedule
    if not isinstance(sched, DiscreteSchedule):
        raise ValueError("ddpm_bound needs a discrete (DDPM) schedule; use vdm_bound for continuous time")
    clip = bool(bins) if clip is None else clip
    B, T = x0.shape[0], sched.T

    def term(t: Tensor) -> Tensor:
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        return ddpm_step_terms(model, x0, t, eps, cond, variance, bins, clip)

    prior = ddpm_prior(sched, x0)
    recon = term(torch.zeros(B, dtype=torch.long))
    diff = torch.zeros_like(recon)
    if num_t is None:
        for i in range(1, T):
            diff += term(torch.full((B,), i, dtype=torch.long))
    else:
        for k in range(num_t):
            u = torch.rand(B, generator=generator, dtype=torch.float64)
            t = 1 + ((k + u) / num_t * (T - 1)).floor().long().clamp(max=T - 2)
            diff += term(t) * ((T - 1) / num_t)
    return BoundTerms(prior, diff, recon)


# ---- continuous time (VDM) ------------------------------------------------------------------------------
def log_snr_and_derivative(schedule: Schedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """lambda(t) and d lambda / dt at t [B]; schedules with ``log_snr_and_derivative`` keep gradients to their parameters."""
    own = getattr(schedule, "log_snr_and_derivative", None)
    if own is not None:
        return own(t)
    t = as_tensor(t).detach().clone().requires_grad_(True)
    with torch.enable_grad():
        lam = schedule.log_snr(t)
        d = torch.autograd.grad(lam.sum(), t)[0]
    return lam.detach(), d.detach()


def prior_kl(schedule: Schedule, x0: Tensor) -> Tensor:
    """KL(q(x_{t_max} | x_0) || N(0, prior_std^2 I)) per example [B], prior_std^2 = alpha^2 + sigma^2 at t_max (Kingma et al. 2021, eq. 11)."""
    t = as_tensor(float(schedule.t_max), like=x0).expand(x0.shape[0])
    a, s = (append_dims(v.to(x0), x0.ndim) for v in schedule.alpha_sigma(t))
    return sum_except_batch(normal_kl(a * x0, torch.log(s**2).expand_as(x0), torch.zeros_like(x0),
                                      2.0 * math.log(schedule.prior_std)))


def reconstruction_nll(schedule: Schedule, x0: Tensor, eps: Tensor, bins: int | None = None) -> Tensor:
    """-log p(x | z_{t_min}) per example [B] with the decoder N(z/alpha, sigma^2/alpha^2) at t_min (Kingma et al. 2021, sec. 3.3)."""
    t = as_tensor(float(schedule.t_min), like=x0).expand(x0.shape[0])
    a, s = (append_dims(v.to(x0), x0.ndim) for v in schedule.alpha_sigma(t))
    z = a * x0 + s * eps
    return _decoder_nll(x0, z / a, 2.0 * torch.log(s / a), bins)


def vdm_diffusion_loss(model: Denoiser, x0: Tensor, cond: Any = None, *, t: Tensor | None = None,
                       eps: Tensor | None = None, T: int | None = None, antithetic: bool = True,
                       generator: torch.Generator | BatchRandom | None = None,
                       sampling: Literal["t", "log_snr"] = "t") -> Tensor:
    """Diffusion term per example [B]: L_inf = -(t_max - t_min)/2 lambda'(t) ||eps - eps_hat||^2, t ~ U (Kingma et al. 2021, eq. 17),
    or with ``T`` the T-step L_T = T/2 (SNR(s)/SNR(t) - 1) ||eps - eps_hat||^2, s = t - 1/T (their eq. 13 in eps form).

    ``t`` (optional) is a uniform variable u in [0, 1] per example; ``antithetic`` spreads the batch's u evenly.
    ``sampling="log_snr"`` draws lambda uniformly instead of t (the same integral after the change of variables
    of their eq. 18, with a bounded integrand: far lower variance for evaluation under fixed schedules).
    """
    sched = model.schedule
    B = x0.shape[0]
    rng = batch_random(generator, B)
    if t is None:
        t = rng.antithetic(B, torch.float64) if antithetic else rng.rand(B, torch.float64)
    u = t.to(x0.dtype).to(x0.device)
    if eps is None:
        eps = rng.randn(x0.shape, x0.dtype).to(x0.device)
    t0, t1 = float(sched.t_min), float(sched.t_max)
    if T is None and sampling == "log_snr":
        lam_max, lam_min = (float(sched.log_snr(as_tensor(v, like=x0))) for v in (t0, t1))
        tt = sched.t_from_log_snr(lam_max + u * (lam_min - lam_max)).to(x0.dtype)
        weight = torch.full_like(u, 0.5 * (lam_max - lam_min))
    elif T is None:
        tt = t0 + u * (t1 - t0)
        lam, dlam = log_snr_and_derivative(sched, tt)
        weight = -0.5 * (t1 - t0) * dlam.to(x0)
    else:
        i = (u * T).floor().clamp(max=T - 1) + 1  # 1..T
        tt = t0 + i / T * (t1 - t0)
        lam_t, _ = log_snr_and_derivative(sched, tt)
        lam_s, _ = log_snr_and_derivative(sched, t0 + (i - 1) / T * (t1 - t0))
        weight = 0.5 * T * torch.expm1(lam_s - lam_t).to(x0)
    a, s = model.coefficients(tt, x0)
    eps_hat = model.eps(a * x0 + s * eps, tt, cond)
    return weight * sum_except_batch((eps - eps_hat) ** 2)


def vdm_bound(model: Denoiser, x0: Tensor, cond: Any = None, *, bins: int | None = None, T: int | None = None,
              num_t: int = 1, generator: torch.Generator | None = None,
              sampling: Literal["t", "log_snr"] = "log_snr") -> BoundTerms:
    """Variational bound of a (continuous- or discrete-time) diffusion model: prior + L_inf (or L_T) + reconstruction (Kingma et al. 2021, eq. 11).

    The diffusion term averages ``num_t`` antithetic draws per example (an unbiased estimate), uniform in
    log-SNR by default (``sampling="t"``: uniform in t, the training estimator).
    """
    with torch.no_grad():
        prior = prior_kl(model.schedule, x0)
        eps0 = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        recon = reconstruction_nll(model.schedule, x0, eps0, bins)
        diff = torch.zeros_like(prior)
        for _ in range(num_t):
            diff += vdm_diffusion_loss(model, x0, cond, T=T, generator=generator, sampling=sampling) / num_t
    return BoundTerms(prior, diff, recon)


__all__ = ["BoundTerms", "ddpm_prior", "reverse_step", "step_terms_from", "ddpm_step_terms", "ddpm_bound", "log_snr_and_derivative",
           "prior_kl", "reconstruction_nll", "vdm_diffusion_loss", "vdm_bound"]
