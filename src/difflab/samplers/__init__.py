"""Samplers: pure functions ``sample_<name>(model, x, sigmas, *, cond, generator, progress, callback, **options) -> x0``.

``model`` is any denoiser D(x_t, t, cond) -> x_0 with a ``.schedule``; ``x`` is in the schedule's native
coordinates at sigmas[0]; ``sigmas`` is any strictly decreasing grid (:mod:`difflab.samplers.grids` make ones
ending in 0, which return x_0; a grid ending at a positive level returns x there).  :func:`sample` picks a grid for
a budget of model calls (NFE) and runs a sampler by name.  The registry holds the samplers of each forward process
(:data:`REGISTRY`: scalar alpha/sigma schedules, CLD); a name means the same method on every process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from ..errors import UserError
from . import grids
from ._common import Callback
from .ancestral import sample_ddim, sample_ddpm
from .consistency import sample_consistency
from .ode import (sample_dopri5, sample_dpm_solver_2, sample_dpm_solver_3, sample_dpmpp_2m, sample_dpmpp_3m,
                  sample_euler, sample_heun, sample_ipndm, sample_unipc)
from .cld import CLD_ALIASES, sample_cld_em, sample_cld_ode, sample_cld_sscs
from .sde import sample_euler_maruyama, sample_pc

Kind = Literal["ode", "sde"]


@dataclass(frozen=True)
class SamplerInfo:
    """A registered sampler: its function, kind, default grid, and model calls per step (NFE, see :func:`grid_nfe`).

    On a grid of n positive levels ending in 0 it makes per_step (n - 1) + last calls; on a grid of L levels ending
    at a positive level (L - 1 steps, no final denoise) per_step (L - 1) - first_saving + stop_extra.
    ``process`` names the forward process whose state it moves ("scalar" alpha/sigma schedules, or "cld").
    """

    fn: Callable[..., Tensor]
    kind: Kind
    grid: str
    per_step: int = 1
    last: int = 1
    adaptive: bool = False
    first_saving: int = 0  # calls saved on the first step (heun's Euler first step)
    stop_extra: int = 0  # calls past the last step on a grid that stops above 0 (unipc's corrector input)
    process: str = "scalar"


SAMPLERS: dict[str, SamplerInfo] = {
    "ddpm": SamplerInfo(sample_ddpm, "sde", "uniform_t"),
    "ddim": SamplerInfo(sample_ddim, "ode", "uniform_t"),
    "euler": SamplerInfo(sample_euler, "ode", "trailing"),
    "heun": SamplerInfo(sample_heun, "ode", "karras", per_step=2, last=0, first_saving=1),  # Euler first step
    "dopri5": SamplerInfo(sample_dopri5, "ode", "log_snr", adaptive=True),
    "dpm_solver_2": SamplerInfo(sample_dpm_solver_2, "ode", "trailing", per_step=2),
    "dpm_solver_3": SamplerInfo(sample_dpm_solver_3, "ode", "trailing", per_step=3),
    "dpmpp_2m": SamplerInfo(sample_dpmpp_2m, "ode", "trailing"),
    "dpmpp_3m": SamplerInfo(sample_dpmpp_3m, "ode", "trailing"),
    "unipc": SamplerInfo(sample_unipc, "ode", "trailing", stop_extra=1),
    "ipndm": SamplerInfo(sample_ipndm, "ode", "trailing"),
    "euler_maruyama": SamplerInfo(sample_euler_maruyama, "sde", "uniform_t"),
    "pc": SamplerInfo(sample_pc, "sde", "uniform_t", per_step=2, last=2),
    "consistency": SamplerInfo(sample_consistency, "sde", "consistency"),  # for ConsistencyDenoiser students
}

#: CLD's samplers on the state (x, v) (samplers/cld.py): steps uniform in t to t_denoise, then the denoising step
CLD_REGISTRY: dict[str, SamplerInfo] = {
    "euler_maruyama": SamplerInfo(sample_cld_em, "sde", "uniform_t", process="cld"),
    "sscs": SamplerInfo(sample_cld_sscs, "sde", "uniform_t", process="cld"),
    "dopri5": SamplerInfo(sample_cld_ode, "ode", "uniform_t", adaptive=True, process="cld"),
}

#: the samplers of each forward process; a name common to two processes means the same method on both
REGISTRY: dict[str, dict[str, SamplerInfo]] = {"scalar": SAMPLERS, "cld": CLD_REGISTRY}
ALIASES: dict[str, dict[str, str]] = {"scalar": {}, "cld": dict(CLD_ALIASES)}


class SamplerError(UserError, ValueError):
    """A sampler of another forward process than the model's."""


def process_name(obj: Any) -> str:
    """The registry key of a schedule, process or denoiser (its ``schedule`` or ``process``): 'scalar' or 'cld'."""
    from ..schedules import is_scalar

    target = getattr(obj, "process", None) or getattr(obj, "schedule", None) or obj
    if is_scalar(target):
        return "scalar"
    name = type(target).__name__.lower()
    if name not in REGISTRY:
        raise ValueError(f"no samplers are registered for the {type(target).__name__} process")
    return name


def _table(process: str) -> dict[str, SamplerInfo]:
    if process not in REGISTRY:
        raise ValueError(f"unknown forward process {process!r}; registered: {', '.join(REGISTRY)}")
    return REGISTRY[process]


def canonical(name: str, process: str = "scalar") -> str:
    """The registered name of ``name`` on ``process`` (an alias such as CLD's 'em' resolved); ValueError if unknown."""
    table = _table(process)
    name = ALIASES.get(process, {}).get(name, name)
    if name in table:
        return name
    other = [p for p, t in REGISTRY.items() if name in t or name in ALIASES.get(p, {})]
    if other:
        kind = "scalar alpha(t)/sigma(t) schedules" if other[0] == "scalar" else f"the {other[0]} process"
        raise SamplerError(f"sampler {name!r} is for {kind}, not the {process} process; its samplers: "
                           f"{', '.join(table)}")
    where = "" if process == "scalar" else f" for the {process} process"
    raise ValueError(f"unknown sampler {name!r}{where}; choose one of {', '.join(table)}")


def names(kind: Kind | None = None, process: str = "scalar") -> list[str]:
    """Registered sampler names of a process; ``kind="ode"`` for deterministic ones (ddim counts with its default eta = 0), ``"sde"`` for stochastic."""
    if kind not in (None, "ode", "sde"):
        raise ValueError(f"kind must be 'ode', 'sde' or None, got {kind!r}")
    return [n for n, s in _table(process).items() if kind is None or s.kind == kind]


def get(name: str, process: str = "scalar") -> SamplerInfo:
    """The registry entry of sampler ``name`` (or an alias) on ``process``."""
    return _table(process)[canonical(name, process)]


def _per_step(name: str, info: SamplerInfo, options: dict[str, Any]) -> tuple[int, int]:
    if name == "pc":
        k = 1 + int(options.get("n_corrector", 1))
        return k, k
    return info.per_step, info.last


def n_levels(name: str, steps: int, **options: Any) -> int:
    """Number of nonzero grid levels L that a budget of ``steps`` model calls buys for sampler ``name`` (at least 1)."""
    info = get(name)
    per_step, last = _per_step(name, info, options)
    if info.adaptive:
        return 2
    return max((steps - last) // per_step + 1, 1)


def nfe(name: str, n: int, **options: Any) -> int:
    """Model calls sampler ``name`` makes on a grid of n nonzero levels ending in 0 (not defined for adaptive solvers)."""
    info = get(name)
    per_step, last = _per_step(name, info, options)
    return max(per_step * (n - 1) + last, 1)


def grid_nfe(name: str, sigmas: Tensor, **options: Any) -> int:
    """Model calls sampler ``name`` makes on the grid ``sigmas`` (ending in 0 or at a positive level; not adaptive ones)."""
    sig = torch.as_tensor(sigmas).flatten()
    if float(sig[-1]) == 0.0:
        return nfe(name, sig.numel() - 1, **options)
    info = get(name)
    per_step, _ = _per_step(name, info, options)
    return max(per_step * (sig.numel() - 1) - info.first_saving + info.stop_extra, 1)


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
    decreasing sigma tensor (then ``steps`` is ignored; one ending above 0 stops there and returns x at that level).
    A CLD score model (``model.process``) runs CLD's sampler of the same name (euler_maruyama, sscs, dopri5).  With ``return_nfe`` returns ``(x_0, calls)``;
    adaptive ``dopri5`` ignores ``steps`` and stops at its ``rtol``/``atol``.  ``callback(dict)`` is called once
    per step with copies of the state and its x0 estimate and cannot change the result (docs/samplers.md).
    """
    process = process_name(model)
    if process != "scalar":
        return _sample_process(model, x_T, process, sampler, steps, grid, generator, progress, return_nfe, callback,
                               **options)
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


def _sample_process(model: Any, u_T: Tensor, process: str, sampler: str, steps: int, grid: Any,
                    generator: torch.Generator | None, progress: bool, return_nfe: bool, callback: Callback | None,
                    **options: Any) -> Tensor | tuple[Tensor, int]:
    """:func:`sample` on a process other than the scalar one (CLD: ``model`` is the v-score with its ``process``)."""
    from .cld import sample_cld

    name = canonical(sampler, process)
    if grid is not None:
        raise ValueError(f"the {process} samplers use their own time grid; pass steps, not grid")
    return sample_cld(model, model.process, u_T, name, steps, generator=generator, progress=progress,
                      callback=callback, return_nfe=return_nfe, **options)


def _device_of(model: Any) -> torch.device:
    """The device of a denoiser's parameters (cpu for a parameter-free callable)."""
    params = model.parameters() if isinstance(model, torch.nn.Module) else iter(())
    return next(iter(params), torch.empty(0)).device


def sample_batches(model: Any, shape: tuple[int, ...] | list[int], num: int, sampler: str = "ddim", steps: int = 50,
                   *, seed: int = 0, batch_size: int = 500, grid: str | Tensor | None = None,
                   cond: Callable[[int, torch.device], Any] | None = None, progress: bool = False,
                   **options: Any) -> tuple[Tensor, int]:
    """num samples of one example ``shape`` in batches: (samples on the CPU, most model calls of one batch).

    Sample i's x_T (``schedule.sample_prior``) and sampler noise come from its own generator seeded by (seed, i)
    (:class:`seeds.PerSample`), so the samples do not depend on ``batch_size`` (up to the rounding of other batch
    shapes) and equal those of ``difflab sample`` with any number of processes; ``cond(n, device)`` gives a batch's
    condition; ``grid`` is as in :func:`sample` (e.g. the run's stored grid from :func:`tuned.run_grid`).
    """
    if num < 1 or batch_size < 1:
        raise ValueError(f"num and batch_size must be >= 1, got {num} and {batch_size}")
    from .seeds import PerSample

    device = _device_of(model)
    starts = range(0, num, batch_size)
    if progress and num > batch_size:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="sample", unit="batch")
    chunks, calls = [], 0
    for start in starts:
        n = min(batch_size, num - start)
        g = PerSample(seed, range(start, start + n))
        x_T = g.prior(model.schedule, shape, device)
        c = cond(n, device) if cond is not None else None
        x, k = sample(model, x_T, sampler=sampler, steps=steps, grid=grid, cond=c, generator=g, return_nfe=True,
                      **options)
        chunks.append(x.cpu())
        calls = max(calls, k)
    return torch.cat(chunks), calls


from .tuning import TunedGrid, tune_grid  # noqa: E402  (uses the registry above)

__all__ = ["sample", "sample_batches", "SamplerError", "grid_nfe", "canonical", "process_name", "REGISTRY", "CLD_REGISTRY", "ALIASES", "names", "tune_grid", "TunedGrid", "get", "nfe", "n_levels", "SAMPLERS", "SamplerInfo", "grids", "sample_ddpm", "sample_ddim",
           "sample_euler", "sample_heun", "sample_dopri5", "sample_dpm_solver_2", "sample_dpm_solver_3",
           "sample_dpmpp_2m", "sample_dpmpp_3m", "sample_unipc", "sample_ipndm", "sample_euler_maruyama", "sample_pc"]
