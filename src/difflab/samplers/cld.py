"""Samplers of critically-damped Langevin diffusion (Dockhorn, Vahdat & Kreis 2022): pure functions of a v-score.

``score(u, t) -> grad_v log p_t(u)`` takes the state u = (x, v) [B, 2C, ...] and t [B] and returns [B, C, ...];
``process`` is a :class:`difflab.schedules.cld.CLD`.  Every sampler runs from u_T at t_max down to a time
``t_denoise`` (1e-3) on a uniform grid and ends with the paper's noise-free Euler step from t_denoise to 0 (sec. 3.4),
which counts as one of the ``steps`` score calls.  ``callback(dict)`` gets {"i", "n", "t", "u", "x", "score"}
(copies) once per score call and cannot change the result.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from ..schedules.cld import CLD
from ._common import Callback, randn_like, steps as _steps

Score = Callable[[Tensor, Tensor], Tensor]
CLDSampler = Literal["euler_maruyama", "sscs", "dopri5", "em", "ode"]
#: names in the sampler registry's sense (euler_maruyama and dopri5 mean what they mean on scalar schedules)
CLD_CANONICAL: tuple[str, ...] = ("euler_maruyama", "sscs", "dopri5")
CLD_ALIASES: dict[str, str] = {"em": "euler_maruyama", "ode": "dopri5"}  # the names CLD runs were first saved with
CLD_SAMPLERS: tuple[str, ...] = (*CLD_CANONICAL, *CLD_ALIASES)
T_DENOISE = 1e-3


def time_grid(process: CLD, steps: int, t_denoise: float = T_DENOISE) -> list[float]:
    """steps levels uniform in t from t_max to t_denoise (steps - 1 sampler steps, then the denoising step)."""
    if steps < 2:
        raise ValueError(f"CLD samplers need at least 2 score calls (one step and the denoising step), got {steps}")
    return torch.linspace(process.t_max, t_denoise, steps, dtype=torch.float64).tolist()


def _call(score: Score, u: Tensor, t: float, i: int, n: int, callback: Callback | None) -> Tensor:
    s = score(u, torch.full((u.shape[0],), t, dtype=u.dtype, device=u.device))
    if callback is not None:
        callback({"i": i, "n": n, "t": t, "u": u.clone(), "x": CLD.split(u)[0].clone(), "score": s.clone()})
    return s


def _S(process: CLD, t_hi: float, t_lo: float) -> float:
    """int_{t_lo}^{t_hi} beta(t) dt."""
    return float(process.integrated_beta(t_hi) - process.integrated_beta(t_lo))


def _euler(process: CLD, u: Tensor, s: Tensor, S: float, generator: torch.Generator | None, noise: bool) -> Tensor:
    """One Euler(-Maruyama) step of the reverse SDE over integrated time S: x -= S M^-1 v,
    v += S (x + Gamma M^-1 v + 2 Gamma s) + sqrt(2 Gamma S) z (Song et al. 2021b, eq. 6 for CLD's eq. 5)."""
    M, G = process.M, process.Gamma
    x, v = process.split(u)
    x_new = x - S * v / M
    v_new = v + S * (x + G * v / M + 2 * G * s)
    if noise:
        v_new = v_new + math.sqrt(2 * G * S) * randn_like(v, generator)
    return process.join(x_new, v_new)


def _linear_half(process: CLD, u: Tensor, S: float, generator: torch.Generator | None) -> Tensor:
    """The exact Ornstein-Uhlenbeck flow of SSCS's linear part dx = -M^-1 v beta dt', dv = (x - Gamma M^-1 v) beta dt'
    + sqrt(2 Gamma beta) dW over integrated time S (app. D.1): CLD's forward kernel in (x, -v)."""
    St = torch.tensor([S], dtype=torch.float64)
    pxx, pxv, pvx, pvv = (float(c) for c in process.transition(St))
    nxx, nxv, nvv = (float(c) for c in process.noise_cov(St))
    lxx = math.sqrt(nxx)
    lxv = nxv / lxx
    lvv = math.sqrt(max(nvv - lxv ** 2, 0.0))
    x, v = process.split(u)
    zx, zv = randn_like(x, generator), randn_like(v, generator)
    x_new = pxx * x - pxv * v + lxx * zx
    v_new = -pvx * x + pvv * v - lxv * zx - lvv * zv
    return process.join(x_new, v_new)


def sample_cld_em(score: Score, process: CLD, u: Tensor, steps: int, *, generator: torch.Generator | None = None,
                  progress: bool = False, callback: Callback | None = None, t_denoise: float = T_DENOISE) -> Tensor:
    """Euler-Maruyama on CLD's reverse SDE (sec. 3.4), then the noise-free denoising step; returns x_0 [B, C, ...]."""
    ts = time_grid(process, steps, t_denoise)
    for i in _steps(steps - 1, progress, "cld em"):
        s = _call(score, u, ts[i], i, steps, callback)
        u = _euler(process, u, s, _S(process, ts[i], ts[i + 1]), generator, noise=True)
    return _denoise(score, process, u, ts[-1], steps, callback)


def sample_cld_sscs(score: Score, process: CLD, u: Tensor, steps: int, *, generator: torch.Generator | None = None,
                    progress: bool = False, callback: Callback | None = None, t_denoise: float = T_DENOISE) -> Tensor:
    """Symmetric splitting CLD sampler (SSCS, sec. 3.4 and app. D.1): an exact half-step of the linear OU part, an
    Euler step v += 2 Gamma (s + M^-1 v) S of the score part at the midpoint, another exact half-step; then the
    noise-free denoising step.  Returns x_0 [B, C, ...]."""
    ts = time_grid(process, steps, t_denoise)
    for i in _steps(steps - 1, progress, "cld sscs"):
        t_hi, t_lo = ts[i], ts[i + 1]
        t_mid = 0.5 * (t_hi + t_lo)
        u = _linear_half(process, u, _S(process, t_hi, t_mid), generator)
        s = _call(score, u, t_mid, i, steps, callback)
        x, v = process.split(u)
        v = v + 2 * process.Gamma * (s + v / process.M) * _S(process, t_hi, t_lo)
        u = _linear_half(process, process.join(x, v), _S(process, t_mid, t_lo), generator)
    return _denoise(score, process, u, ts[-1], steps, callback)


def sample_cld_ode(score: Score, process: CLD, u: Tensor, steps: int = 0, *, generator: torch.Generator | None = None,
                   progress: bool = False, callback: Callback | None = None, t_denoise: float = T_DENOISE,
                   rtol: float = 1e-3, atol: float = 1e-3, method: str = "dopri5") -> Tensor:
    """The probability-flow ODE du/dt = f(u, t) - 1/2 G G^T grad log p_t (sec. 3.4; Song et al. 2021b, eq. 13) on
    (x, v) with an adaptive solver (torchdiffeq) from t_max to t_denoise, then the denoising step; ``steps`` is
    ignored (the solver's tolerances set the calls)."""
    from torchdiffeq import odeint

    calls = 0

    def rhs(t: Tensor, y: Tensor) -> Tensor:
        nonlocal calls
        tf = max(float(t), process.t_min)  # the solver steps past t_denoise and interpolates back: stay where t >= eps
        s = _call(score, y.to(u.dtype), tf, calls, 0, callback).to(y.dtype)
        calls += 1
        b = float(process.beta(tf))
        return process.drift(y, tf) - process.join(torch.zeros_like(s), process.Gamma * b * s)

    # the solver's state and time in float64: near t_denoise the v-relaxation is stiff and float32 steps underflow
    span = torch.tensor([process.t_max, t_denoise], dtype=torch.float64, device=u.device)
    y = odeint(rhs, u.to(torch.float64), span, rtol=rtol, atol=atol, method=method)[-1].to(u.dtype)
    return _denoise(score, process, y, t_denoise, calls + 1, callback)


def _denoise(score: Score, process: CLD, u: Tensor, t: float, n: int, callback: Callback | None) -> Tensor:
    """The final noise-free Euler step from t to 0 (sec. 3.4): the data part x_0 of the state."""
    s = _call(score, u, t, n - 1, n, callback)
    return process.split(_euler(process, u, s, _S(process, t, 0.0), None, noise=False))[0]


SAMPLE_FNS: dict[str, Callable[..., Tensor]] = {"euler_maruyama": sample_cld_em, "sscs": sample_cld_sscs,
                                                 "dopri5": sample_cld_ode}


class _Counted:
    def __init__(self, score: Score):
        self.score, self.calls = score, 0

    def __call__(self, u: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.score(u, t)


def sample_cld(score: Score, process: CLD, u_T: Tensor, sampler: str = "sscs", steps: int = 50, *,
               generator: torch.Generator | None = None, progress: bool = False, callback: Callback | None = None,
               return_nfe: bool = False, **options: Any) -> Tensor | tuple[Tensor, int]:
    """Draw x_0 from u_T (``process.sample_prior``) with sampler euler_maruyama | sscs | dopri5 (aliases em, ode) in
    ``steps`` score calls (dopri5: adaptive)."""
    name = CLD_ALIASES.get(sampler, sampler)
    if name not in SAMPLE_FNS:
        raise ValueError(f"unknown CLD sampler {sampler!r}; choose one of {', '.join(CLD_SAMPLERS)}")
    counted = _Counted(score)
    with torch.no_grad():
        x = SAMPLE_FNS[name](counted, process, u_T, steps, generator=generator, progress=progress,
                                callback=callback, **options)
    return (x, counted.calls) if return_nfe else x


__all__ = ["sample_cld", "sample_cld_em", "sample_cld_sscs", "sample_cld_ode", "time_grid", "CLD_SAMPLERS",
           "CLD_CANONICAL", "CLD_ALIASES", "T_DENOISE"]
