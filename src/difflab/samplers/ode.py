"""Probability-flow ODE solvers (deterministic).

All work in the scaled variable y = x / alpha(t) with noise level sigma = sigma(t)/alpha(t), where the
PF-ODE reads dy/dsigma = (y - D(y, sigma)) / sigma (Karras et al. 2022, eq. 4 with s = 1), or, with
lambda = -log sigma (half log-SNR), dy/dlambda = D - y: the exponential-integrator form of DPM-Solver
(Lu et al. 2022, eq. 3.4 divided by alpha). The step to sigma = 0 returns the denoised sample; on a grid that
ends at a positive level the solver stops there and returns x at that level (no final denoise).
``callback`` gets x = alpha y at level i before the step and the step's first D (for UniPC: the D it reuses).
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Literal

import torch
from torch import Tensor

from ._common import Callback, denoise, denoise_at, emit, finish, levels, report, steps, time_alpha


def sample_euler(model: Any, x: Tensor, sigmas: Tensor, *, cond: Any = None, generator: torch.Generator | None = None,
                 progress: bool = False, callback: Callback | None = None) -> Tensor:
    """Euler on the PF-ODE in sigma (Karras et al. 2022, Alg. 1 without the Heun correction); = DDIM eta=0 (Song et al. 2021a, eq. 13)."""
    lv = levels(model, x, sigmas)
    s = lv.sigma
    y = x / lv.alpha[0]
    for i in steps(len(s) - 1, progress):
        d = denoise(model, y, lv, i, cond)
        report(callback, lv, i, y, d, scaled=True)
        y = d if s[i + 1] == 0 else y + (s[i + 1] - s[i]) / s[i] * (y - d)
    return finish(lv, y)


def sample_heun(model: Any, x: Tensor, sigmas: Tensor, *, cond: Any = None, generator: torch.Generator | None = None,
                progress: bool = False, callback: Callback | None = None) -> Tensor:
    """Heun's 2nd-order method on the PF-ODE (Karras et al. 2022, Alg. 1); Euler on the first step and on the last step to sigma = 0.

    The first step is Euler because D at sigma_max can be far off for an eps-network (x_0 = (x - sigma eps) / alpha
    with alpha(t_max) near 0), and the trapezoid's error (s_0 - s_1) / 2 |eps_1 - eps_0| grows with sigma_max,
    whereas Euler's lands D's error at s_1 only, where the flow contracts it.
    """
    lv = levels(model, x, sigmas)
    s = lv.sigma
    y = x / lv.alpha[0]
    for i in steps(len(s) - 1, progress):
        d = denoise(model, y, lv, i, cond)
        report(callback, lv, i, y, d, scaled=True)
        if s[i + 1] == 0:
            y = d
            continue
        if i == 0:
            y = y + (s[1] - s[0]) / s[0] * (y - d)
            continue
        dy = (y - d) / s[i]
        y2 = y + (s[i + 1] - s[i]) * dy
        dy2 = (y2 - denoise(model, y2, lv, i + 1, cond)) / s[i + 1]
        y = y + (s[i + 1] - s[i]) * 0.5 * (dy + dy2)
    return finish(lv, y)


def sample_dpm_solver_2(model: Any, x: Tensor, sigmas: Tensor, *, cond: Any = None,
                        generator: torch.Generator | None = None, progress: bool = False,
                        callback: Callback | None = None) -> Tensor:
    """DPM-Solver-2, singlestep with r1 = 1/2 (Lu et al. 2022, Alg. 1 / eq. 3.8), noise prediction."""
    lv = levels(model, x, sigmas)
    s = lv.sigma
    y = x / lv.alpha[0]
    for i in steps(len(s) - 1, progress):
        d = denoise(model, y, lv, i, cond)
        report(callback, lv, i, y, d, scaled=True)
        if s[i + 1] == 0:
            y = d
            continue
        eps = (y - d) / s[i]
        s_mid = math.sqrt(s[i] * s[i + 1])  # lambda midpoint
        u = y + (s_mid - s[i]) * eps
        eps_u = (u - denoise_at(model, u, s_mid, cond)) / s_mid
        y = y + (s[i + 1] - s[i]) * eps_u
    return finish(lv, y)


def sample_dpm_solver_3(model: Any, x: Tensor, sigmas: Tensor, *, cond: Any = None,
                        generator: torch.Generator | None = None, progress: bool = False,
                        callback: Callback | None = None) -> Tensor:
    """DPM-Solver-3, singlestep with r1 = 1/3, r2 = 2/3 (Lu et al. 2022, Alg. 2), noise prediction."""
    r1, r2 = 1.0 / 3.0, 2.0 / 3.0
    lv = levels(model, x, sigmas)
    s = lv.sigma
    y = x / lv.alpha[0]
    for i in steps(len(s) - 1, progress):
        d = denoise(model, y, lv, i, cond)
        report(callback, lv, i, y, d, scaled=True)
        if s[i + 1] == 0:
            y = d
            continue
        h = math.log(s[i] / s[i + 1])
        eps = (y - d) / s[i]
        s1, s2 = s[i] * math.exp(-r1 * h), s[i] * math.exp(-r2 * h)
        u1 = y - (s[i] - s1) * eps
        d1 = (u1 - denoise_at(model, u1, s1, cond)) / s1 - eps
        u2 = y - (s[i] - s2) * eps - s2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1.0) * d1
        d2 = (u2 - denoise_at(model, u2, s2, cond)) / s2 - eps
        y = y - (s[i] - s[i + 1]) * eps - (s[i + 1] / r2) * (math.expm1(h) / h - 1.0) * d2
    return finish(lv, y)


def sample_dpmpp_2m(model: Any, x: Tensor, sigmas: Tensor, *, cond: Any = None,
                    generator: torch.Generator | None = None, progress: bool = False,
                    callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(2M), multistep data prediction (Lu et al. 2022b, Alg. 2); first order on the first and last steps."""
    lv = levels(model, x, sigmas)
    s = lv.sigma
    y = x / lv.alpha[0]
    d_prev, h_prev = None, 0.0
    for i in steps(len(s) - 1, progress):
        d = denoise(model, y, lv, i, cond)
        report(callback, lv, i, y, d, scaled=True)
        if s[i + 1] == 0:
            y = d
            continue
        h = math.log(s[i] / s[i + 1])
        d_eff = d if d_prev is None else d + (h / (2.0 * h_prev)) * (d - d_prev)
        y = (s[i + 1] / s[i]) * y - math.expm1(-h) * d_eff
        d_prev, h_prev = d, h
    return finish(lv, y)


def sample_dpmpp_3m(model: Any, x: Tensor, sigmas: Tensor, *, cond: Any = None,
                    generator: torch.Generator | None = None, progress: bool = False,
                    callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(3M): exponential integrator with the quadratic interpolant of D in lambda (Lu et al. 2022b, eq. 9 and app. B); lower order at the ends."""
    lv = levels(model, x, sigmas)
    s = lv.sigma
    y = x / lv.alpha[0]
    hist: list[tuple[Tensor, float]] = []  # (D_j, h_j) of the last two steps, newest first
    for i in steps(len(s) - 1, progress):
        d = denoise(model, y, lv, i, cond)
        report(callback, lv, i, y, d, scaled=True)
        if s[i + 1] == 0:
            y = d
            continue
        h = math.log(s[i] / s[i + 1])
        phi1 = math.expm1(-h)  # e^{-h} - 1
        y = (s[i + 1] / s[i]) * y - phi1 * d
        if len(hist) == 1:
            r0 = hist[0][1] / h
            y = y - phi1 * (0.5 / r0) * (d - hist[0][0])
        elif len(hist) == 2:
            (d1, h1), (d2, h2) = hist
            r0, r1 = h1 / h, h2 / h
            dd0, dd1 = (d - d1) / r0, (d1 - d2) / r1
            first = dd0 + r0 / (r0 + r1) * (dd0 - dd1)  # ~ h D'(lambda_i) of the quadratic interpolant
            second = (dd0 - dd1) / (r0 + r1)  # ~ h^2 D''/2
            phi2 = phi1 / h + 1.0  # h phi_2(-h)
            phi3 = phi2 / h - 0.5  # -h phi_3(-h)
            y = y + phi2 * first - 2.0 * phi3 * second  # exact for quadratic D(lambda)
        hist = [(d, h)] + hist[:1]
    return finish(lv, y)


def _phi(k: int, h: float) -> float:
    """phi_k(-h) = int_0^1 e^{-h(1-u)} u^{k-1}/(k-1)! du via phi_{k+1}(z) = (phi_k(z) - 1/k!) / z (Hochbruck & Ostermann 2010)."""
    if h < 1e-3:  # series, avoids cancellation
        return sum((-h) ** j / math.factorial(j + k) for j in range(8))
    val = -math.expm1(-h) / h
    for j in range(1, k):
        val = (val - 1.0 / math.factorial(j)) / (-h)
    return val


def _unipc_coefficients(r: list[float], h: float) -> list[float]:
    """Solve sum_m a_m r_m^{k-1} = k! h phi_{k+1}(-h) / h, k = 1..len(r) (order conditions of Zhao et al. 2023, eq. 8, B(h) = h)."""
    p = len(r)
    if p == 0:
        return []
    R = torch.tensor([[rm ** k for rm in r] for k in range(p)], dtype=torch.float64)
    g = torch.tensor([math.factorial(k) * _phi(k + 1, h) for k in range(1, p + 1)], dtype=torch.float64)
    return torch.linalg.solve(R, g).tolist()


def sample_unipc(model: Any, x: Tensor, sigmas: Tensor, *, cond: Any = None, generator: torch.Generator | None = None,
                 progress: bool = False,
                 callback: Callback | None = None, order: int = 3, corrector: bool = True) -> Tensor:
    """UniPC: multistep data-prediction predictor UniP-p plus the free corrector UniC (Zhao et al. 2023, Alg. 1-3, B(h) = h)."""
    if order < 1:
        raise ValueError(f"UniPC order must be >= 1, got {order}")
    lv = levels(model, x, sigmas)
    s = lv.sigma
    lam = [-math.log(v) for v in s if v > 0]
    y = x / lv.alpha[0]
    hist: list[tuple[Tensor, float]] = []  # (D, lambda) at earlier levels, newest first
    d = denoise(model, y, lv, 0, cond)
    for i in steps(len(s) - 1, progress):
        report(callback, lv, i, y, d, scaled=True)
        if s[i + 1] == 0:
            y = d
            break
        h = lam[i + 1] - lam[i]
        base = (s[i + 1] / s[i]) * y - math.expm1(-h) * d  # exponential-Euler part, exact for constant D
        used = hist[: order - 1]
        r = [(lm - lam[i]) / h for _, lm in used]
        diffs = [(dm - d) / rm for (dm, _), rm in zip(used, r)]
        a = _unipc_coefficients(r, h)
        y_pred = base + h * sum((am * dm for am, dm in zip(a, diffs)), torch.zeros_like(y))
        d_new = denoise(model, y_pred, lv, i + 1, cond)
        before_denoise = i + 2 < len(s) and s[i + 2] == 0
        if corrector and i > 0 and not before_denoise:  # UniC reuses d_new; skipped on the first step (D at sigma_max) and before the final denoise
            rc = r + [1.0]
            ac = _unipc_coefficients(rc, h)
            diffs_c = diffs + [d_new - d]
            y = base + h * sum((am * dm for am, dm in zip(ac, diffs_c)), torch.zeros_like(y))
        else:
            y = y_pred
        hist = [(d, lam[i])] + hist[: max(order - 2, 0)]
        d = d_new
    return finish(lv, y)


def sample_dopri5(model: Any, x: Tensor, sigmas: Tensor, *, cond: Any = None, generator: torch.Generator | None = None,
                  progress: bool = False,
                  callback: Callback | None = None, rtol: float = 1e-5, atol: float = 1e-5) -> Tensor:
    """Adaptive Dormand-Prince 5(4) (torchdiffeq) on dy/dlog(sigma) = y - D from sigmas[0] to sigmas[-2], then D (Song et al. 2021b, sec. 4.3);
    on a grid ending at a positive level, to that level (no final D).

    ``callback`` is called at every model call (rejected trial stages included), at that call's own sigma, with
    ``n`` None until the final denoise at sigmas[-2], whose call has n = i + 1 = the number of model calls.
    """
    from torchdiffeq import odeint

    lv = levels(model, x, sigmas)
    s = lv.sigma
    y0 = x / lv.alpha[0]
    calls = itertools.count()  # callback index: one per model call, the total is unknown until the end

    def f(u: Tensor, y: Tensor) -> Tensor:
        sig = math.exp(float(u))
        d = denoise_at(model, y, sig, cond)
        if callback is not None:
            t, a = time_alpha(model.schedule, sig)
            emit(callback, next(calls), None, t, sig, y * a, d)
        return y - d

    end = s[-2] if lv.to_zero else s[-1]  # a grid ending at a positive level: integrate to it and stop there
    span = torch.tensor([math.log(s[0]), math.log(end)], dtype=torch.float64)
    if end < s[0]:
        y0 = odeint(f, y0, span.to(x.dtype), rtol=rtol, atol=atol, method="dopri5")[-1]
    if not lv.to_zero:
        return finish(lv, y0)
    d = denoise(model, y0, lv, len(s) - 2, cond)
    if callback is not None:
        i = next(calls)
        emit(callback, i, i + 1, lv.tf[-1], s[-2], y0 * lv.alpha[-1], d)
    return d


Method = Literal["euler", "heun", "dpm_solver_2", "dpm_solver_3", "dpmpp_2m", "dpmpp_3m", "unipc", "dopri5"]


_AB = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def sample_ipndm(model: Any, x: Tensor, sigmas: Tensor, *, cond: Any = None, generator: torch.Generator | None = None,
                 progress: bool = False, callback: Callback | None = None, order: int = 3) -> Tensor:
    """iPNDM: Adams-Bashforth on dy/dsigma = eps with constant-step coefficients and lower-order warm start (Zhang & Chen 2023, DEIS paper; Zhou et al. 2024).

    Unlike the other solvers the last step to sigma = 0 is an Adams-Bashforth step too (eps stays smooth as
    sigma -> 0), so no model call is spent at the smallest level: on the same grid it uses one call fewer.
    """
    if order not in _AB:
        raise ValueError(f"iPNDM order must be 1..4, got {order}")
    lv = levels(model, x, sigmas)
    s = lv.sigma
    y = x / lv.alpha[0]
    hist: list[Tensor] = []  # eps at the last levels, newest first
    for i in steps(len(s) - 1, progress):
        d = denoise(model, y, lv, i, cond)
        report(callback, lv, i, y, d, scaled=True)
        eps = (y - d) / s[i]
        hist = [eps] + hist[: order - 1]
        coef = _AB[len(hist)]
        y = y + (s[i + 1] - s[i]) * sum((c * e for c, e in zip(coef, hist)), torch.zeros_like(y))
    return finish(lv, y)
