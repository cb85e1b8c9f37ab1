"""Reverse-time SDE samplers (Song et al. 2021b) in native coordinates, using the schedule's f(t) and g(t)^2.

The reverse SDE is dx = [f(t) x - g(t)^2 grad log p_t(x)] dt + g(t) dW-bar with the score
(alpha D(x, t) - x) / sigma^2 (Tweedie); it works for VP, sub-VP, VE and DDPM schedules alike.
``callback`` gets the state at level i just before the predictor step (for ``pc``: after the corrector) and its D.
On a grid ending at a positive level they return the state x there.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ._common import Callback, Levels, levels, randn_like, report, steps


def _sde_table(model: Any, lv: Levels) -> tuple[list[float], list[float]]:
    f, g2 = model.schedule.sde(torch.tensor(lv.tf, dtype=torch.float64))
    return f.tolist(), g2.tolist()


def _score(model: Any, x: Tensor, lv: Levels, i: int, cond: Any) -> tuple[Tensor, Tensor]:
    """(score, x0-hat) at level i: grad log p_t(x) = (alpha x0-hat - x) / sigma^2."""
    x0 = model(x, lv.t[i], cond)
    return (lv.alpha[i] * x0 - x) / lv.sigma_native[i] ** 2, x0


def langevin_alpha(lv: Levels, i: int) -> float:
    """Factor alpha_i of the Langevin step 2 alpha_i (r |z| / |s|)^2 (Song et al. 2021b, Alg. 5; Alg. 4 for VE: 1).

    alpha_i = 1 - beta_i = alpha-bar_i / alpha-bar_{i-1}: alpha(t_i)^2 / alpha(t_{i+1})^2 between level i and the
    next less noisy level (alpha = 1 past the last one), i.e. exp(-int beta dt) ~ 1 - beta(t_i) dt on a VP SDE.
    """
    return (lv.alpha[i] / (lv.alpha[i + 1] if i + 1 < len(lv.alpha) else 1.0)) ** 2


def _em_step(x: Tensor, score: Tensor, f: float, g2: float, dt: float, generator: torch.Generator | None) -> Tensor:
    return x - (f * x - g2 * score) * dt + math.sqrt(g2 * dt) * randn_like(x, generator)


def sample_euler_maruyama(model: Any, x: Tensor, sigmas: Tensor, *, cond: Any = None,
                          generator: torch.Generator | None = None, progress: bool = False,
                          callback: Callback | None = None) -> Tensor:
    """Euler-Maruyama on the reverse SDE (Song et al. 2021b, eq. 6), then the denoised sample at the last level."""
    lv = levels(model, x, sigmas)
    f, g2 = _sde_table(model, lv)
    n = len(lv.sigma) - 1
    for i in steps(n, progress):
        score, x0 = _score(model, x, lv, i, cond)
        report(callback, lv, i, x, x0)
        if lv.sigma[i + 1] == 0:
            return x0
        x = _em_step(x, score, f[i], g2[i], lv.tf[i] - lv.tf[i + 1], generator)
    return x


def _correct(model: Any, x: Tensor, lv: Levels, i: int, cond: Any, generator: torch.Generator | None, snr: float,
             n_corrector: int) -> Tensor:
    """n_corrector Langevin steps at level i with step 2 alpha_i (snr |z| / |score|)^2 (Song et al. 2021b, Alg. 5)."""
    a = langevin_alpha(lv, i)
    for _ in range(n_corrector):
        score, _ = _score(model, x, lv, i, cond)
        z = randn_like(x, generator)
        # norms averaged over the batch as in Song et al.'s implementation: per-example ratios explode
        # where the score vanishes (low-dimensional data near a mode)
        zn = z.flatten(1).norm(dim=1).mean()
        gn = score.flatten(1).norm(dim=1).mean().clamp_min(1e-30)
        step = float(2.0 * a * (snr * zn / gn) ** 2)
        x = x + step * score + math.sqrt(2.0 * step) * z
    return x


def sample_pc(model: Any, x: Tensor, sigmas: Tensor, *, cond: Any = None, generator: torch.Generator | None = None,
              progress: bool = False, callback: Callback | None = None, snr: float = 0.16, n_corrector: int = 1
              ) -> Tensor:
    """Predictor-corrector: Langevin corrector with step 2 alpha_i (snr |z| / |score|)^2, then an Euler-Maruyama predictor (Song et al. 2021b, Alg. 2-5).

    On a grid ending at a positive level the result is the state after the last predictor step; a second call
    from that level on (starting with its correctors) continues the run exactly."""
    if n_corrector < 0 or snr <= 0:
        raise ValueError(f"need n_corrector >= 0 and snr > 0, got {n_corrector}, {snr}")
    lv = levels(model, x, sigmas)
    f, g2 = _sde_table(model, lv)
    n = len(lv.sigma) - 1
    for i in steps(n, progress):
        x = _correct(model, x, lv, i, cond, generator, snr, n_corrector)
        score, x0 = _score(model, x, lv, i, cond)
        report(callback, lv, i, x, x0)
        if lv.sigma[i + 1] == 0:
            return x0
        x = _em_step(x, score, f[i], g2[i], lv.tf[i] - lv.tf[i + 1], generator)
    return x
