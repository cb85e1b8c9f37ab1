"""Step grids tuned to the model: the time steps of a budget chosen against an accurate teacher solution.

``tune_grid`` follows GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling",
sec. 4): the teacher trajectory of a calibration batch is solved on a fine grid; dynamic programming over that
grid picks the L levels that minimise the summed local error of one Euler (DDIM) step between teacher states
(their eq. 9-10, cost in the RMSE norm). The DP grid, the sampler's default grid and the other named grids
are scored by the sampler's own endpoint error against the teacher; the best is refined by a coordinate search
in log sigma on that objective (accepting only improvements), so the result is never worse than the default.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from . import grids
from ._common import Levels, denoise, levels


@dataclass(frozen=True)
class TunedGrid:
    """A tuned grid and its calibration figures (RMSE of the endpoint against the teacher on the calibration batch)."""

    sigmas: Tensor  # float64, decreasing, ends in 0
    sampler: str
    nfe: int  # model calls the sampler makes on it (<= the budget)
    objective: float  # endpoint RMSE of the tuned grid
    default_objective: float  # endpoint RMSE of the sampler's default grid
    dp_objective: float  # endpoint RMSE of the dynamic-programming grid before refinement
    evaluations: int  # sampler runs spent in the search

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (sigmas as a list of floats)."""
        return {"sampler": self.sampler, "nfe": self.nfe, "sigmas": [float(v) for v in self.sigmas],
                "objective": self.objective, "default_objective": self.default_objective,
                "dp_objective": self.dp_objective, "evaluations": self.evaluations}


def _rmse(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def fine_grid(schedule: Any, m: int) -> Tensor:
    """m nonzero levels for the search: sigma_max, then a Karras rho = 7 grid from min(sigma_max, 80) to sigma_min (Karras et al. 2022, eq. 5, sigma_max = 80)."""
    smin, smax = grids._ends(schedule)
    top = min(smax, 80.0)
    r = torch.linspace(0, 1, m - 1 if top < smax else m, dtype=torch.float64)
    inner = (top ** (1 / 7) + r * (smin ** (1 / 7) - top ** (1 / 7))) ** 7
    lv = torch.cat([torch.tensor([smax], dtype=torch.float64), inner]) if top < smax else inner
    return torch.cat([lv, lv.new_zeros(1)])


def teacher(model: Any, x_T: Tensor, fine: Tensor, cond: Any = None, substeps: int = 4) -> tuple[list[Tensor], Tensor]:
    """Teacher states y = x / alpha at every nonzero level of ``fine`` and its endpoint: Heun with ``substeps``
    log-uniform substeps per fine interval (Karras et al. 2022, Alg. 1), then D at the last level."""
    from .ode import sample_heun

    s = fine.tolist()
    refined = []
    for a, b in zip(s[:-2], s[1:-1]):
        refined += [a * (b / a) ** (k / substeps) for k in range(substeps)]
    refined += [s[-2], 0.0]
    states: list[Tensor] = []
    want = {i * substeps for i in range(len(s) - 1)}

    def keep(d: dict) -> None:
        if d["i"] in want:
            states.append(d["x"] / _alpha(model, d["sigma"]))

    x0 = sample_heun(model, x_T, torch.tensor(refined, dtype=torch.float64), cond=cond, callback=keep)
    return states, x0


def _alpha(model: Any, sigma: float) -> float:
    t = model.schedule.t_from_sigma_ve(torch.tensor(float(sigma), dtype=torch.float64))
    return float(model.schedule.alpha(t))


def dp_grid(model: Any, states: list[Tensor], x0: Tensor, fine: Tensor, n: int, cond: Any = None) -> Tensor:
    """GITS dynamic programming (Chen et al. 2024, eq. 9-10): the n levels of ``fine`` (the first one kept) whose
    Euler steps between teacher states, and the final denoise to 0, have the least summed RMSE."""
    s = fine.tolist()[:-1]
    m = len(s)
    lv: Levels = levels(model, states[0], fine)
    d = [denoise(model, states[i], lv, i, cond) for i in range(m)]
    inf = math.inf
    cost = [[inf] * (m + 1) for _ in range(m)]  # cost[i][j]: one step from level i to level j (j = m: to 0)
    for i in range(m):
        for j in range(i + 1, m):
            cost[i][j] = _rmse(states[i] + (s[j] - s[i]) / s[i] * (states[i] - d[i]), states[j])
        cost[i][m] = _rmse(d[i], x0)  # the Euler step to sigma = 0 is D
    best = [[inf] * m for _ in range(n + 1)]  # best[k][j]: least cost reaching level j after k steps from 0
    back = [[-1] * m for _ in range(n + 1)]
    best[0][0] = 0.0
    for k in range(1, n):
        for j in range(1, m):
            for i in range(j):
                c = best[k - 1][i] + cost[i][j]
                if c < best[k][j]:
                    best[k][j], back[k][j] = c, i
    last = min(range(m), key=lambda j: best[n - 1][j] + cost[j][m])
    path = [last]
    for k in range(n - 1, 0, -1):
        path.append(back[k][path[-1]])
    path.reverse()
    return torch.tensor([s[j] for j in path] + [0.0], dtype=torch.float64)


def tune_grid(model: Any, sampler: str, nfe: int, x_T: Tensor | None = None, *, shape: tuple[int, ...] | None = None,
              num: int = 64, seed: int = 0, cond: Any = None, fine: int = 80, substeps: int = 4,
              max_evals: int = 150, **options: Any) -> TunedGrid:
    """The grid of ``sampler`` for a budget of ``nfe`` model calls tuned on a calibration batch (GITS DP, Chen et
    al. 2024, then a coordinate search on the sampler's endpoint RMSE against the teacher).

    The calibration batch is ``x_T`` or ``num`` draws of the schedule's prior of ``shape`` from ``seed``. The
    first level stays at sigma_max (where x_T lives); the others lie in [sigma_min, sigma_max).
    """
    from . import get, n_levels
    from . import nfe as count

    info = get(sampler)
    if info.kind != "ode" or info.adaptive or options.get("eta", 0.0) != 0.0:
        raise ValueError(f"tune_grid needs a deterministic fixed-step sampler, not {sampler!r}")
    if nfe < 1:
        raise ValueError(f"nfe must be >= 1, got {nfe}")
    sched = model.schedule
    if x_T is None:
        if shape is None:
            raise ValueError("tune_grid needs x_T or shape")
        x_T = sched.sample_prior((num, *shape), generator=torch.Generator().manual_seed(seed))
    n = n_levels(sampler, nfe, **options)
    smin, smax = grids._ends(sched)
    with torch.no_grad():
        f = fine_grid(sched, max(fine, n + 1))
        states, x0 = teacher(model, x_T, f, cond, substeps)
        evals = 0

        def objective(sig: Tensor) -> float:
            nonlocal evals
            evals += 1
            return _rmse(info.fn(model, x_T, sig, cond=cond, **options), x0)

        default = grids.get(info.grid, sched, n)
        start = dp_grid(model, states, x0, f, n, cond)
        j_default, j_dp = objective(default), objective(start)
        tried = [(j_default, 0, default), (j_dp, 1, start)]
        for k, name in enumerate(sorted(set(grids.GRIDS) - {info.grid})):  # the other named grids as starts too
            g = grids.get(name, sched, n)
            tried.append((objective(g), k + 2, g))
        j, _, grid = min(tried, key=lambda c: c[:2])
        grid, j = _refine(grid, j, objective, smin, max_evals - evals)
    assert count(sampler, len(grid) - 1, **options) <= nfe
    return TunedGrid(grid, sampler, count(sampler, len(grid) - 1, **options), j, j_default, j_dp, evals)


def _refine(grid: Tensor, j: float, objective: Callable[[Tensor], float], smin: float, budget: int) -> tuple[Tensor, float]:
    """Coordinate search in log sigma over levels 1..L-1 (level 0 fixed), each moved a fraction of the way towards
    a neighbour (sigma_min below the last); fractions 1/2, 1/4, 1/8, 1/16; only improvements are kept."""
    u = grid[:-1].log().tolist()
    lo = math.log(smin)
    spent = 0
    for frac in (0.5, 0.25, 0.125, 0.0625):
        improved = True
        while improved and spent < budget:
            improved = False
            for k in range(1, len(u)):
                below = u[k + 1] if k + 1 < len(u) else lo
                for target in (u[k - 1], below):
                    if spent >= budget:
                        break
                    cand = u[:k] + [u[k] + frac * (target - u[k])] + u[k + 1:]
                    if not all(a > b for a, b in zip(cand, cand[1:])) or cand[-1] < lo - 1e-12:
                        continue
                    sig = torch.tensor([math.exp(v) for v in cand] + [0.0], dtype=torch.float64)
                    sig[0] = grid[0]
                    spent += 1
                    jc = objective(sig)
                    if jc < j:
                        u, j, grid, improved = cand, jc, sig, True
                        break
    return grid, j


__all__ = ["tune_grid", "TunedGrid", "dp_grid", "teacher", "fine_grid"]
