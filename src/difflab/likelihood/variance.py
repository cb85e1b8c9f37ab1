"""Reverse-process variances of a DDPM: fixed (beta, beta-tilde), learned (Nichol & Dhariwal 2021) and analytic (Bao et al. 2022).

A variance choice ``variance`` is one of ``"beta"``, ``"beta_tilde"``, ``"learned"`` (the network outputs 2C
channels: its usual prediction, then v), or a tensor [T] of per-step variances (e.g. from :func:`analytic_variances`).
"""
from __future__ import annotations

from typing import Any, Literal, Union

import torch
from torch import Tensor

from ..models.denoiser import Denoiser, Prediction
from ..schedules import DiscreteSchedule, Schedule, append_dims

VarianceKind = Literal["beta", "beta_tilde", "learned"]
Variance = Union[VarianceKind, Tensor]


def learned_log_variance(v: Tensor, log_beta: Tensor, log_beta_tilde: Tensor) -> Tensor:
    """log Sigma = w log beta + (1 - w) log beta-tilde with w = (v + 1) / 2 for a network output v in [-1, 1] (Nichol & Dhariwal 2021, eq. 15)."""
    w = (v + 1.0) / 2.0
    return w * log_beta + (1.0 - w) * log_beta_tilde


def step_log_variances(schedule: DiscreteSchedule, t: Tensor) -> tuple[Tensor, Tensor]:
    """(log beta_t, log beta-tilde_t) at integer steps t [B]; beta-tilde_0 = 0 is replaced by beta-tilde_1 (Nichol & Dhariwal's clipping)."""
    t = t.long().cpu()
    bt = schedule.posterior_variance.clone()
    bt[0] = bt[1]
    return torch.log(schedule.betas[t]), torch.log(bt[t])


def split_output(model: Denoiser, x: Tensor, t: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
    """Run a 2C-channel network once: (its prediction [B, C, ...], v [B, C, ...]) (channels on dim 1)."""
    out = Denoiser.raw(model, x, t, cond)
    if out.shape[1] != 2 * x.shape[1]:
        raise ValueError(f"variance='learned' needs a network with {2 * x.shape[1]} output channels, got {out.shape[1]}")
    return out[:, : x.shape[1]], out[:, x.shape[1]:]


class LearnedVarianceDenoiser(Denoiser):
    """A denoiser whose network outputs 2C channels, the prediction then v (Nichol & Dhariwal 2021, sec. 3.1).

    ``raw``/``forward``/``eps`` see only the prediction, so every sampler works unchanged; ``log_variance`` gives
    the learned reverse variance.  Buffers ``loss_history`` [T, history] and ``loss_count`` [T] hold the recent
    L_t values used to importance-sample t (their eq. 18); they are checkpointed with the weights.
    """

    def __init__(self, net: Any, schedule: DiscreteSchedule, prediction: Prediction = "eps", history: int = 10):
        super().__init__(net, schedule, prediction)
        if not isinstance(schedule, DiscreteSchedule):
            raise ValueError("learned variances need a discrete (DDPM) schedule")
        self.register_buffer("loss_history", torch.zeros(schedule.T, history, dtype=torch.float64))
        self.register_buffer("loss_count", torch.zeros(schedule.T, dtype=torch.long))

    def raw(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return split_output(self, x, t, cond)[0]

    def log_variance(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        """Learned log Sigma(x_t, t) of p(x_{t-1} | x_t), shape of x (t integer steps [B])."""
        t = torch.as_tensor(t).expand(x.shape[0]) if torch.as_tensor(t).ndim == 0 else t
        _, v = split_output(self, x, t, cond)
        lb, lbt = step_log_variances(self.schedule, t)
        return learned_log_variance(v, append_dims(lb, x.ndim).to(x), append_dims(lbt, x.ndim).to(x))


def reverse_log_variance(schedule: DiscreteSchedule, variance: Variance, t: Tensor, x: Tensor,
                         v: Tensor | None = None) -> Tensor:
    """log of the reverse variance of p(x_{t-1} | x_t) at steps t [B], broadcastable against x.

    ``v`` is the network's variance output when ``variance == "learned"``.
    """
    lb, lbt = (append_dims(z, x.ndim).to(x) for z in step_log_variances(schedule, t))
    if isinstance(variance, Tensor):
        return append_dims(torch.log(variance.to(torch.float64)[t.long().cpu()]), x.ndim).to(x)
    if variance == "beta":
        return lb
    if variance == "beta_tilde":
        return lbt
    if variance == "learned":
        if v is None:
            raise ValueError("variance='learned' needs the network's v output")
        return learned_log_variance(v, lb, lbt)
    raise ValueError(f"unknown variance {variance!r}; choose beta, beta_tilde, learned or a tensor [T]")


# ---- Analytic-DPM ---------------------------------------------------------------------------------------
@torch.no_grad()
def analytic_dpm_gamma(model: Denoiser, data_x: Tensor, num_samples: int = 64, batch_size: int = 256,
                       generator: torch.Generator | None = None, cond: Any = None) -> Tensor:
    """Gamma_t = E_{q(x_t)} ||eps_hat(x_t, t)||^2 / d at every step t, by Monte Carlo over data and noise (Bao et al. 2022, eq. 8); [T] float64."""
    sched = model.schedule
    if not isinstance(sched, DiscreteSchedule):
        raise ValueError("Analytic-DPM here needs a discrete (DDPM) schedule")
    n = min(num_samples, len(data_x))
    idx = torch.randperm(len(data_x), generator=generator)[:n]
    x0 = data_x[idx]
    d = x0[0].numel()
    out = torch.zeros(sched.T, dtype=torch.float64)
    ts = torch.arange(sched.T)
    per = max(1, batch_size // n)  # steps evaluated per network call
    for k in range(0, sched.T, per):
        tk = ts[k: k + per]
        xb = x0.repeat(len(tk), *([1] * (x0.ndim - 1)))
        tb = tk.repeat_interleave(n).to(x0.dtype)
        eps = torch.randn(xb.shape, generator=generator, dtype=xb.dtype)
        a, s = model.coefficients(tb, xb)
        e = model.eps(a * xb + s * eps, tb, cond)
        out[tk] = (e.flatten(1).double() ** 2).sum(1).view(len(tk), n).mean(1) / d
    return out


def analytic_variances(schedule: DiscreteSchedule, gamma: Tensor, data_range: tuple[float, float] | None = (-1.0, 1.0),
                       min_variance: float = 1e-12) -> Tensor:
    """Optimal reverse variances sigma*_t^2 = beta-tilde_t + c0_t^2 (1 - abar_t)/abar_t (1 - Gamma_t), clipped (Bao et al. 2022, Thm 1-2); [T].

    c0_t is the posterior-mean coefficient of x_0 (Ho et al. eq. 7).  The clipping keeps sigma^2 within
    [beta-tilde_t, beta-tilde_t + c0_t^2 min((1 - abar_t)/abar_t, ((b - a)/2)^2)] for data in [a, b].
    At t = 0 (the decoder step) beta-tilde = 0 and c0 = 1: sigma*^2 is the posterior variance of x_0 itself.
    """
    abar = schedule.alphas_cumprod
    c0, _ = schedule.posterior_mean_coefs
    bt = schedule.posterior_variance
    ratio = (1.0 - abar) / abar
    opt = bt + c0**2 * ratio * (1.0 - gamma.to(torch.float64))
    upper = ratio if data_range is None else ratio.clamp(max=((data_range[1] - data_range[0]) / 2.0) ** 2)
    return torch.minimum(torch.maximum(opt, bt), bt + c0**2 * upper).clamp(min=min_variance)


# ---- the same variances for an ancestral sampler on any sub-sequence of steps ------------------------------
def learned_sampler_variance(model: LearnedVarianceDenoiser) -> Any:
    """A ``variance=`` callable for ancestral sampling: exp(w log beta_{t|s} + (1 - w) log beta-tilde_{t|s}) with w from the network (Nichol & Dhariwal 2021, sec. 4).

    Called as f(x_t, t [B], s [B], beta_{t|s}, beta-tilde_{t|s}, cond); costs one more network call per step.
    """

    def variance(x: Tensor, t: Tensor, s: Tensor, var_ts: float, var_tilde: float, cond: Any = None) -> Tensor:
        _, v = split_output(model, x, t, cond)
        return torch.exp(learned_log_variance(v, torch.log(torch.tensor(var_ts)).to(x),
                                              torch.log(torch.tensor(max(var_tilde, 1e-20))).to(x)))

    return variance


def analytic_sampler_variance(schedule: Schedule, gamma: Tensor, data_range: tuple[float, float] | None = (-1.0, 1.0)
                              ) -> Any:
    """A ``variance=`` callable: sigma*^2 = beta-tilde_{t|s} + c0^2 sigma_t^2/alpha_t^2 (1 - Gamma(t)) between any t > s, clipped (Bao et al. 2022, Thm 1-2).

    ``gamma`` [T] from :func:`analytic_dpm_gamma`, linearly interpolated at real t.
    """
    table = gamma.to(torch.float64)

    def variance(x: Tensor, t: Tensor, s: Tensor, var_ts: float, var_tilde: float, cond: Any = None) -> float:
        tf = float(t.reshape(-1)[0])
        i = min(int(tf), len(table) - 2)
        g = float(table[i] + (tf - i) * (table[i + 1] - table[i]))
        a_t, s_t = (float(z) for z in schedule.alpha_sigma(torch.tensor(tf, dtype=torch.float64)))
        a_s = float(schedule.alpha(torch.tensor(float(s.reshape(-1)[0]), dtype=torch.float64)))
        c0 = a_s * var_ts / s_t**2
        ratio = s_t**2 / a_t**2
        upper = ratio if data_range is None else min(ratio, ((data_range[1] - data_range[0]) / 2.0) ** 2)
        return min(max(var_tilde + c0**2 * ratio * (1.0 - g), var_tilde), var_tilde + c0**2 * upper)

    return variance


__all__ = ["learned_sampler_variance", "analytic_sampler_variance", "VarianceKind", "Variance", "learned_log_variance", "step_log_variances", "split_output",
           "LearnedVarianceDenoiser", "reverse_log_variance", "analytic_dpm_gamma", "analytic_variances"]
