"""Exact log-likelihood through the probability-flow ODE with the instantaneous change of variables (Chen et al. 2018; Song et al. 2021, appendix D.2).

The ODE is integrated in the scaled variable y = x / alpha(t) against s = log(sigma(t)/alpha(t)) = -lambda/2,
where it reads dy/ds = y - D(alpha y, t) (Karras et al. 2022, eq. 4 with sigma = e^s).  The right-hand side is
smooth in s for every schedule (DDPM tables included, whose coefficients have kinks in t), so an adaptive solver
takes few steps.  Then log p(x) = log N(x_T; 0, prior_std^2 I) + d log alpha(t_max) + int div_y f ds
- d log alpha(t_min), where prior_std^2 = alpha^2 + sigma^2 at t_max is the prior samplers start from
(``Schedule.prior_std``).  The data are taken to be x_{t_min}: the result is the model's density at noise level
sigma(t_min), i.e. of the data convolved with a tiny Gaussian (t_min = 0 is step 1 of a DDPM table).
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from ..models.denoiser import Denoiser
from ..schedules import append_dims, as_tensor

Trace = Literal["hutchinson", "exact"]
Probes = Literal["rademacher", "gaussian"]
Dequantization = Literal["uniform", "gaussian"]


def _divergence(f: Tensor, y: Tensor, trace: Trace, v: Tensor | None) -> Tensor:
    """div_y f per example [B]: exact (one VJP per dimension) or Hutchinson's v^T (df/dy) v (Hutchinson 1989; Grathwohl et al. 2019)."""
    if trace == "hutchinson":
        (g,) = torch.autograd.grad(f, y, v)
        return (g * v).flatten(1).sum(1)
    ff, d = f.flatten(1), f[0].numel()
    div = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    for i in range(d):
        (g,) = torch.autograd.grad(ff[:, i].sum(), y, retain_graph=i < d - 1)
        div = div + g.flatten(1)[:, i]
    return div


def _dequantize(sched: Any, x: Tensor, bins: int | None, dequantization: str,
                generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """(the ODE's starting point, log-volume correction [B]) of 8-bit data x: uniform noise in the bin, or
    z ~ q(z_{t_min} | x) with the discretised decoder (see :func:`ode_log_likelihood`); (x, 0) without ``bins``."""
    B, d = x.shape[0], x[0].numel()
    correction = torch.zeros(B, dtype=x.dtype, device=x.device)
    if bins and dequantization == "uniform":
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        return x + (2.0 * u - 1.0) / (bins - 1), correction + d * math.log(2.0 / (bins - 1))
    if bins and dequantization == "gaussian":
        from .bound import reconstruction_nll
        from .gaussian import gaussian_log_likelihood, sum_except_batch

        eps = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        with torch.no_grad():
            t0 = as_tensor(float(sched.t_min), like=x).expand(B)
            a0, s0 = (append_dims(z.to(x), x.ndim) for z in sched.alpha_sigma(t0))
            z = a0 * x + s0 * eps
            correction = (-reconstruction_nll(sched, x, eps, bins)
                          - sum_except_batch(gaussian_log_likelihood(z, a0 * x, torch.log(s0).expand_as(x))))
        return z, correction
    if bins:
        raise ValueError(f"dequantization must be 'uniform' or 'gaussian', got {dequantization!r}")
    return x, correction


def ode_log_likelihood(model: Denoiser, x: Tensor, cond: Any = None, *, trace: Trace = "hutchinson",
                       probes: Probes = "rademacher", rtol: float = 1e-5, atol: float = 1e-5,
                       method: str = "dopri5", generator: torch.Generator | None = None, bins: int | None = None,
                       dequantization: Dequantization = "uniform", options: dict[str, Any] | None = None,
                       return_details: bool = False) -> Tensor | dict[str, Any]:
    """log p(x) in nats per example [B] under the probability-flow ODE of ``model`` (Song et al. 2021, eq. 39).

    ``bins`` (e.g. 256 for 8-bit images in [-1, 1]): uniform dequantisation x + u, u ~ U(-1/(bins-1), 1/(bins-1)),
    and the result includes the bin volume, so it is a (stochastic) lower bound on log P(x) of the discrete data
    (Theis et al. 2016; Ho et al. 2020).  ``dequantization="gaussian"`` instead starts the ODE from
    z = alpha x + sigma eps at t_min and returns log p_ode(z) + log p(x | z) - log q(z | x) with the discretised
    decoder of the variational bound (VDM's decoder), also a lower bound on log P(x), and a tighter one when
    sigma(t_min) is comparable to the bin width (Song et al. 2021b, sec. 4).  ``options`` go to torchdiffeq's solver
    (e.g. ``{"max_num_steps": 200}``).  The Hutchinson probe is fixed along one solve.  ``return_details`` gives
    a dict with ``log_likelihood``, ``log_prior`` [B], ``delta`` [B] (all but the prior), ``x_T`` and ``nfe``.
    """
    from torchdiffeq import odeint

    sched = model.schedule
    if trace not in ("hutchinson", "exact"):
        raise ValueError(f"trace must be 'hutchinson' or 'exact', got {trace!r}")
    if probes not in ("rademacher", "gaussian"):
        raise ValueError(f"probes must be 'rademacher' or 'gaussian', got {probes!r}")
    B, d = x.shape[0], x[0].numel()
    x, correction = _dequantize(sched, x.detach(), bins, dequantization, generator)
    v = None
    if trace == "hutchinson":  # one probe along the whole solve
        v = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        v = torch.sign(v) if probes == "rademacher" else v
    t_lo, t_hi = (as_tensor(float(t), like=x) for t in (sched.t_min, sched.t_max))
    with torch.no_grad():
        lam_lo, lam_hi = float(sched.log_snr(t_lo)), float(sched.log_snr(t_hi))
        a_lo, a_hi = float(sched.alpha(t_lo)), float(sched.alpha(t_hi))
    s_span = torch.tensor([-0.5 * lam_lo, -0.5 * lam_hi], dtype=x.dtype, device=x.device)
    nfe = 0

    def rhs(s: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        y = state[0]
        t = sched.t_from_log_snr(-2.0 * s.detach().to(torch.float64)).to(x.dtype)
        tb = t.reshape(1).expand(B)
        alpha = float(sched.alpha(t))
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            f = y - model(alpha * y, tb, cond)
            div = _divergence(f, y, trace, v)
        return f.detach(), div.detach()

    with torch.no_grad():
        ys, divs = odeint(rhs, (x / a_lo, torch.zeros(B, dtype=x.dtype, device=x.device)), s_span, rtol=rtol,
                          atol=atol, method=method, options=options)
    x_T = a_hi * ys[-1]
    var = sched.prior_std**2  # the prior of Schedule.sample_prior: N(0, var I)
    log_prior = -0.5 * (x_T**2).flatten(1).sum(1) / var - 0.5 * d * math.log(2 * math.pi * var)
    delta = divs[-1] + d * (math.log(a_hi) - math.log(a_lo)) + correction
    ll = log_prior + delta
    if return_details:
        return {"log_likelihood": ll, "log_prior": log_prior, "delta": delta, "x_T": x_T, "nfe": nfe, "t_max": t_hi.expand(B)}
    return ll


__all__ = ["ode_log_likelihood", "Trace", "Probes", "Dequantization"]
