"""Step grids: decreasing float64 tensors of noise levels sigma = sigma(t)/alpha(t) that end in 0.

sigmas[0] is the noise level at ``schedule.t_max`` and sigmas[-2] the one at ``schedule.t_min`` (unless a grid
says otherwise); the final 0 marks the last step, which returns the denoised sample (Karras et al. 2022).
Any sampler takes any grid.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..schedules import Schedule


def _ends(schedule: Schedule) -> tuple[float, float]:
    """(sigma_min, sigma_max) of the schedule: sigma_ve at t_min and t_max."""
    s = schedule.sigma_ve(torch.tensor([schedule.t_min, schedule.t_max], dtype=torch.float64))
    return float(s[0]), float(s[1])


def _close(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas.to(torch.float64), sigmas.new_zeros(1, dtype=torch.float64)])


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"a grid needs at least one noise level, got n={n}")


def timesteps(schedule: Schedule, ts: Sequence[float] | Tensor) -> Tensor:
    """Grid through explicit model times ``ts`` (e.g. a DDIM sub-sequence 999, 979, ..., 0), sorted noisiest first."""
    t = torch.as_tensor(ts, dtype=torch.float64).flatten()
    if t.numel() < 1:
        raise ValueError("timesteps needs at least one time")
    if bool((t < schedule.t_min).any() | (t > schedule.t_max).any()):
        raise ValueError(f"times must lie in [{schedule.t_min}, {schedule.t_max}]")
    t = torch.unique(t).flip(0)
    return _close(schedule.sigma_ve(t))


def uniform_t(schedule: Schedule, n: int, integer: bool | None = None) -> Tensor:
    """n levels uniform in time from t_max to t_min (Ho et al. 2020; Song et al. 2021a 'linspace'); integer steps on DDPM tables."""
    _check_n(n)
    t = torch.linspace(schedule.t_max, schedule.t_min, n, dtype=torch.float64) if n > 1 else \
        torch.tensor([schedule.t_max], dtype=torch.float64)
    if schedule.discrete if integer is None else integer:
        t = t.round()
    return timesteps(schedule, t)


def _topped(smax: float, smin: float, n: int, sigma_top: float, inner: Callable[[float, int], Tensor]) -> Tensor:
    """``inner(hi, n)`` from hi = s_max; if s_max > sigma_top: s_max, then ``inner(sigma_top, n - 1)`` (one jump down)."""
    if n == 1:
        return _close(torch.tensor([smax], dtype=torch.float64))
    if smax <= sigma_top:
        return _close(inner(smax, n))
    rest = inner(sigma_top, n - 1) if n > 2 else torch.tensor([smin], dtype=torch.float64)
    return _close(torch.cat([torch.tensor([smax], dtype=torch.float64), rest]))


def log_snr(schedule: Schedule, n: int, sigma_top: float = 80.0) -> Tensor:
    """n levels uniform in log-SNR, i.e. geometric in sigma (Lu et al. 2022, section 3.3), below sigma_top (see karras)."""
    _check_n(n)
    smin, smax = _ends(schedule)
    return _topped(smax, smin, n, sigma_top,
                   lambda hi, m: torch.exp(torch.linspace(math.log(hi), math.log(smin), m, dtype=torch.float64)))


def karras(schedule: Schedule, n: int, rho: float = 7.0, sigma_top: float = 80.0) -> Tensor:
    """n levels (s_max^(1/rho) + i/(n-1) (s_min^(1/rho) - s_max^(1/rho)))^rho (Karras et al. 2022, eq. 5).

    If sigma_max exceeds ``sigma_top`` (Karras et al.'s sigma_max = 80; a cosine DDPM table reaches 2e4) the
    first level stays at sigma_max, where x_T lives, and the other n - 1 levels form the grid from sigma_top:
    above it the denoiser of unit-scale data is nearly constant and one step loses nothing (docs/samplers.md).
    """
    _check_n(n)
    smin, smax = _ends(schedule)

    def inner(hi: float, m: int) -> Tensor:
        r = torch.linspace(0, 1, m, dtype=torch.float64)
        return (hi ** (1 / rho) + r * (smin ** (1 / rho) - hi ** (1 / rho))) ** rho

    return _topped(smax, smin, n, sigma_top, inner)


def few_step(schedule: Schedule, n: int, rho: float = 5.0, knee: float = 1.2, sigma_data: float = 1.0) -> Tensor:
    """Few-step grid for solvers that step to sigma = 0 themselves (iPNDM): s_max, then a Karras rho-grid from
    sigma_knee = min(knee n sigma_data, s_max) towards s_min whose last level s_min is replaced by 0.

    Above a few data scales the PF-ODE contracts and the denoiser is nearly constant, so one step from s_max
    suffices there; below s_min the noise is far under the data's structure, so no call is spent at s_min
    (Karras et al. 2022, eq. 5; Zhou et al. 2024).  rho = 5 and knee = 1.2 were chosen by measurement on
    Gaussian mixtures disjoint from the benchmark ones (docs/samplers.md); as n grows the grid tends to karras.
    """
    _check_n(n)
    smin, smax = _ends(schedule)
    if n == 1:
        return _close(torch.tensor([smax], dtype=torch.float64))
    hi = knee * n * sigma_data
    if hi >= smax:  # the plain Karras grid with n + 1 levels, s_min dropped
        r = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        return _close(((smax ** (1 / rho) + r * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho)[:-1])
    r = torch.linspace(0, 1, n, dtype=torch.float64)
    inner = (hi ** (1 / rho) + r * (smin ** (1 / rho) - hi ** (1 / rho))) ** rho
    return _close(torch.cat([torch.tensor([smax], dtype=torch.float64), inner[:-1]]))


def trailing(schedule: Schedule, n: int, sigma_data: float = 1.0, sigma_top: float = 80.0) -> Tensor:
    """n levels uniform in the noise fraction u = s / (sigma_data + s) from s_max: u_i = u_max (n - i) / n, the last
    at u_max / n, then 0 (no call at s_min).  For sigma_data = 1, u is the flow path's time t (x_t = (1 - t) x_0 +
    t eps in y = x / alpha): diffusers' flow spacing (FlowMatchEuler, DPM-Solver ``use_flow_sigmas``), for every
    schedule.  With s_max > ``sigma_top`` the first level stays at s_max and the other n - 1 form the grid from
    sigma_top (as in :func:`karras`): an eps-network's error of D at s_max (divided by alpha(t_max)) then reaches x_0
    shrunk by about sigma_data / 80 (without the jump the second level is s_1 ~ (n - 1) sigma_data).
    The default grid of the ODE samplers, chosen by measurement (docs/samplers.md)."""
    _check_n(n)
    _, smax = _ends(schedule)

    def inner(hi: float, m: int) -> Tensor:
        u = hi / (sigma_data + hi) * torch.arange(m, 0, -1, dtype=torch.float64) / m
        s = sigma_data * u / (1.0 - u)
        s[0] = hi  # exactly the top level (u / (1 - u) rounds)
        return s

    if n == 1 or smax <= sigma_top:
        return _close(inner(smax, n))
    return _close(torch.cat([torch.tensor([smax], dtype=torch.float64), inner(sigma_top, n - 1)]))


def consistency(schedule: Schedule, n: int, rho: float = 7.0, sigma_top: float = 80.0) -> Tensor:
    """n levels for multistep consistency sampling: s_max, then the n - 1 interior points of a Karras rho-ramp of
    n + 1 points from min(sigma_top, s_max) to s_min (the ends dropped: f at s_min is the identity; Song et al. 2023, Alg. 1)."""
    _check_n(n)
    smin, smax = _ends(schedule)
    hi = min(sigma_top, smax)
    r = torch.linspace(0, 1, n + 1, dtype=torch.float64)[1:-1]
    inner = (hi ** (1 / rho) + r * (smin ** (1 / rho) - hi ** (1 / rho))) ** rho
    return _close(torch.cat([torch.tensor([smax], dtype=torch.float64), inner]))


GRIDS: dict[str, Callable[..., Tensor]] = {
    "uniform_t": uniform_t, "log_snr": log_snr, "karras": karras, "few_step": few_step,
    "consistency": consistency, "trailing": trailing,
}


def get(name: str, schedule: Schedule, n: int, **kwargs: float) -> Tensor:
    """Grid ``name`` with n nonzero levels (n + 1 entries including the final 0)."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; choose one of {', '.join(GRIDS)}")
    return GRIDS[name](schedule, n, **kwargs)


__all__ = ["timesteps", "uniform_t", "log_snr", "karras", "few_step", "consistency", "trailing", "get", "GRIDS"]
