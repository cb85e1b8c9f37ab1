"""SDEdit: noise a guide image to t0 = strength and denoise it with any sampler (Meng et al. 2022, sec. 3)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .. import samplers
from ..samplers import grids
from .inpaint import check_image, check_mask, fill, start_state


class _Truncated:
    """The schedule seen by a grid builder as ending at t0: t_max = t0, everything else the schedule's own."""

    def __init__(self, schedule: Any, t_max: float):
        self._schedule, self.t_max = schedule, t_max

    def __getattr__(self, name: str) -> Any:
        return getattr(self._schedule, name)


def budget(steps: int, strength: float) -> int:
    """Model calls SDEdit spends: int(steps * strength) as diffusers' img2img, but at least 1 for any strength > 0."""
    return max(1, int(math.floor(steps * strength + 1e-9)))


def sdedit_grid(model: Any, sampler: str, steps: int, strength: float, grid: str | None = None) -> Tensor:
    """The sampler's grid of :func:`budget` calls on the schedule truncated at t0 = t_min + strength (t_max - t_min) (rounded to a step on DDPM tables)."""
    sched = model.schedule
    info = samplers.get(sampler)
    n = samplers.n_levels(sampler, budget(steps, strength))
    if strength >= 1.0:
        return grids.get(grid or info.grid, sched, n)
    t0 = float(sched.t_min) + strength * (float(sched.t_max) - float(sched.t_min))
    if sched.discrete:  # a DDPM table: the nearest step index
        t0 = float(round(t0))
    sig = grids.get(grid or info.grid, _Truncated(sched, t0), n)
    if not bool((sig[:-1] > 0).all()):  # a discrete table can round t0 onto t_min twice: keep the distinct levels
        sig = torch.cat([torch.unique(sig[:-1][sig[:-1] > 0]).flip(0), sig.new_zeros(1)])
    return sig


def sdedit(model: Any, guide: Tensor, strength: float = 0.5, *, sampler: str = "ddim", steps: int = 50,
           grid: str | None = None, mask: Tensor | Any | None = None, cond: Any = None,
           generator: torch.Generator | None = None, **options: Any) -> Tensor:
    """Draw x_{t0} ~ q(x_{t0} | guide) at t0 = strength and denoise it (Meng et al. 2022, Alg. 1); strength 0 returns the guide.

    ``steps`` is the budget of a full run: int(steps * strength) model calls are spent (at least one), on the
    sampler's own grid kind laid between t0 and t_min.  Strength 1 starts from the prior, independent of the
    guide.  With ``mask`` (1 = keep) the pixels it keeps are imposed at every step, as SDEdit's masked editing.
    """
    guide = check_image(guide)
    if not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must lie in [0, 1], got {strength}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    m = check_mask(guide, mask) if mask is not None else torch.zeros((), dtype=guide.dtype, device=guide.device)
    if strength == 0:
        return guide.clone()
    sigmas = sdedit_grid(model, sampler, steps, float(strength), grid)
    if strength >= 1.0:
        x = model.schedule.sample_prior(guide.shape, generator=generator, device=guide.device, dtype=guide.dtype)
        if mask is not None:
            x = start_state(model.schedule, guide, m, float(sigmas[0]), generator, prior=True)
    else:
        x = start_state(model.schedule, guide, m, float(sigmas[0]), generator, prior=False)
    return fill(model, x, sigmas, guide, m, sampler=sampler, jump=1, resample=1, cond=cond, generator=generator,
                options=options)
