"""Samplers: pure functions ``sample_<name>(model, x, sigmas, *, cond, generator, progress, callback, **options) -> x0``.

``model`` is any denoiser D(x_t, t, cond) -> x_0 with a ``.schedule``; ``x`` is in the schedule's native
coordinates at sigmas[0]; ``sigmas`` is a grid from :mod:`difflab.samplers.grids` (decreasing, ends in 0).
:func:`sample` picks a grid for a budget of model calls (NFE) and runs a sampler by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from . import grids
from ._common import Callback
from .ancestral import sample_ddim, sample_ddpm
from .consistency import sample_consistency
from .ode import (sample_dopri5, sample_dpm_solver_2, sample_dpm_solver_3, sample_dpmpp_2m, sample_dpmpp_3m,
                  sample_euler, sample_heun, sample_ipndm, sample_unipc)
from .sde import sample_euler_maruyama, sample_pc

Kind = Literal["ode", "sde"]


@dataclass(frozen=True)
class SamplerInfo:
    """A registered sampler: its function, kind, default grid, and model calls per step (NFE = per_step (L-1) + last)."""

    fn: Callable[..., Tensor]
    kind: Kind
    grid: str
    per_step: int = 1
    last: int = 1
    adaptive: bool = False


SAMPLERS: dict[str, SamplerInfo] = {
    "ddpm": SamplerInfo(sample_ddpm, "sde", "uniform_t"),
    "ddim": SamplerInfo(sample_ddim, "ode", "uniform_t"),
    "euler": SamplerInfo(sample_euler, "ode", "karras"),
    "heun": SamplerInfo(sample_heun, "ode", "karras", per_step=2, last=0),  # Euler first step: 2 (L - 1) calls
    "dopri5": SamplerInfo(sample_dopri5, "ode", "log_snr", adaptive=True),
    "dpm_solver_2": SamplerInfo(sample_dpm_solver_2, "ode", "log_snr", per_step=2),
    "dpm_solver_3": SamplerInfo(sample_dpm_solver_3, "ode", "log_snr", per_step=3),
    "dpmpp_2m": SamplerInfo(sample_dpmpp_2m, "ode", "karras"),
    "dpmpp_3m": SamplerInfo(sample_dpmpp_3m, "ode", "log_snr"),
    "unipc": SamplerInfo(sample_unipc, "ode", "log_snr"),
    "ipndm": SamplerInfo(sample_ipndm, "ode", "few_step"),
    "euler_maruyama": SamplerInfo(sample_euler_maruyama, "sde", "uniform_t"),
    "pc": SamplerInfo(sample_pc, "sde", "uniform_t", per_step=2, last=2),
    "consistency": SamplerInfo(sample_consistency, "sde", "consistency"),  # for ConsistencyDenoiser students
}


def names(kind: Kind | None = None) -> list[str]:
    """Registered sampler names; ``kind="ode"`` for deterministic ones (ddim counts with its default eta = 0), ``"sde"`` for stochastic."""
    if kind not in (None, "ode", "sde"):
        raise ValueError(f"kind must be 'ode', 'sde' or None, got {kind!r}")
    return [n for n, s in SAMPLERS.items() if kind is None or s.kind == kind]


def get(name: str) -> SamplerInfo:
    """The registry entry of sampler ``name``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def n_levels(name: str, steps: int, **options: Any) -> int:
    """Number of nonzero grid levels L that a budget of ``steps`` model calls buys for sampler ``name`` (at least 1)."""
    info = get(name)
    per_step, last = info.per_step, info.last
    if name == "pc":
        per_step = last = 1 + int(options.get("n_corrector", 1))
    if info.adaptive:
        return 2
    return max((steps - last) // per_step + 1, 1)


def nfe(name: str, n: int, **options: Any) -> int:
    """Model calls sampler ``name`` makes on a grid of n nonzero levels (not defined for adaptive solvers)."""
    info = get(name)
    per_step, last = info.per_step, info.last
    if name == "pc":
        per_step = last = 1 + int(options.get("n_corrector", 1))
    return max(per_step * (n - 1) + last, 1)


class _Counted:
    """Wraps a denoiser and counts its calls (one ``sample`` call's private counter)."""

    def __init__(self, model: Any):
        self.model, self.schedule, self.calls = model, model.schedule, 0

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        self.calls += 1
        return self.model(x, t, cond)


def sample(model: Any, x_T: Tensor, sampler: str = "dpmpp_2m", steps: int = 20, grid: str | Tensor | None = None,
           cond: Any = None, generator: torch.Generator | None = None, progress: bool = False,
           return_nfe: bool = False, callback: Callback | None = None, **options: Any) -> Tensor | tuple[Tensor, int]:
    """Draw x_0 from x_T (the schedule's prior at t_max, ``model.schedule.sample_prior``; native coordinates) with ``sampler`` using at most ``steps`` model calls.

    ``grid`` is a grid name from :mod:`difflab.samplers.grids` (default: the sampler's own) or an explicit
    sigma tensor ending in 0 (then ``steps`` is ignored).  With ``return_nfe`` returns ``(x_0, calls)``;
    adaptive ``dopri5`` ignores ``steps`` and stops at its ``rtol``/``atol``.  ``callback(dict)`` is called once
    per step with copies of the state and its x0 estimate and cannot change the result (docs/samplers.md).
    """
    from ..schedules import require_scalar

    require_scalar(getattr(model, "schedule", None), f"sampler {sampler!r}")
    info = get(sampler)
    if isinstance(grid, Tensor):
        sigmas = grid
    else:
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        sigmas = grids.get(grid or info.grid, model.schedule, n_levels(sampler, steps, **options))
    counted = _Counted(model) if return_nfe else model
    with torch.no_grad():
        x0 = info.fn(counted, x_T, sigmas, cond=cond, generator=generator, progress=progress, callback=callback,
                     **options)
    x0 = x0.to(dtype=x_T.dtype, device=x_T.device)
    return (x0, counted.calls) if return_nfe else x0


def _device_of(model: Any) -> torch.device:
    """The device of a denoiser's parameters (cpu for a parameter-free callable)."""
    params = model.parameters() if isinstance(model, torch.nn.Module) else iter(())
    return next(iter(params), torch.empty(0)).device


def sample_batches(model: Any, shape: tuple[int, ...] | list[int], num: int, sampler: str = "ddim", steps: int = 50,
                   *, seed: int = 0, batch_size: int = 500, grid: str | Tensor | None = None,
                   cond: Callable[[int, torch.device], Any] | None = None, progress: bool = False,
                   **options: Any) -> tuple[Tensor, int]:
    """num samples of one example ``shape`` in batches: (samples on the CPU, most model calls of one batch).

    One generator seeded with ``seed`` draws every batch's x_T (``schedule.sample_prior``) and sampler noise, so
    the result depends on ``batch_size`` only through how the noise is split; ``cond(n, device)`` gives a batch's
    condition; ``grid`` is as in :func:`sample` (e.g. the run's stored grid from :func:`tuned.run_grid`).
    """
    if num < 1 or batch_size < 1:
        raise ValueError(f"num and batch_size must be >= 1, got {num} and {batch_size}")
    device = _device_of(model)
    g = torch.Generator().manual_seed(seed)
    starts = range(0, num, batch_size)
    if progress and num > batch_size:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="sample", unit="batch")
    chunks, calls = [], 0
    for start in starts:
        n = min(batch_size, num - start)
        x_T = model.schedule.sample_prior((n, *shape), generator=g, device=device)
        c = cond(n, device) if cond is not None else None
        x, k = sample(model, x_T, sampler=sampler, steps=steps, grid=grid, cond=c, generator=g, return_nfe=True,
                      **options)
        chunks.append(x.cpu())
        calls = max(calls, k)
    return torch.cat(chunks), calls


from .tuning import TunedGrid, tune_grid  # noqa: E402  (uses the registry above)

__all__ = ["sample", "sample_batches", "names", "tune_grid", "TunedGrid", "get", "nfe", "n_levels", "SAMPLERS", "SamplerInfo", "grids", "sample_ddpm", "sample_ddim",
           "sample_euler", "sample_heun", "sample_dopri5", "sample_dpm_solver_2", "sample_dpm_solver_3",
           "sample_dpmpp_2m", "sample_dpmpp_3m", "sample_unipc", "sample_ipndm", "sample_euler_maruyama", "sample_pc"]
