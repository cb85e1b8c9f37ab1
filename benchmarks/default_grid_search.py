"""How the default grid rule (`grids.trailing`) was chosen: candidate grid families per sampler, schedule and budget,
as the geometric mean (and worst case) over mixtures of the error / diffusers' best error.

Run: python benchmarks/default_grid_search.py --seeds 1000,1001,1002,1003,1004,1005 --schedules vp,flow,ve
(the tuning seeds; the confirmation on fresh seeds is `python benchmarks/samplers.py --defaults K`).
Candidates: the sampler's default grid and its default before the trailing rule; Karras rho-grids from 80 to s_lo in {0.06, 0.1}; levels uniform in model
time t_max ((n - i) / n)^p (p = 1, 1.5), then 0; levels uniform in u = s / (sd + s) with power p and sd, then 0,
with and without the jump to 80.  Writes nothing; prints one line per (schedule, sampler, NFE).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import samplers as B  # noqa: E402

import difflab  # noqa: E402
from difflab.samplers import grids, n_levels  # noqa: E402


def karras_lo(sched, n: int, lo: float, rho: float = 7.0) -> torch.Tensor:
    """s_max, then a Karras grid from 80 to max(lo, s_min), then 0."""
    smin, smax = grids._ends(sched)
    lo = max(lo, smin)
    r = torch.linspace(0, 1, n - 1, dtype=torch.float64)
    ramp = (80.0 ** (1 / rho) + r * (lo ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    return grids._close(torch.cat([torch.tensor([smax], dtype=torch.float64), ramp]))


def model_time(sched, n: int, p: float) -> torch.Tensor:
    """levels at model times t_max ((n - i) / n)^p, i < n, then 0."""
    i = torch.arange(n, dtype=torch.float64)
    t = (sched.t_max * ((n - i) / n) ** p).clamp(min=0.0 if sched.discrete else sched.t_min)
    return grids._close(sched.sigma_ve(t))


def noise_fraction(sched, n: int, p: float, sd: float, top: float) -> torch.Tensor:
    """s_max, then levels uniform in u = s / (sd + s) to the power p from min(s_max, top), then 0."""
    smin, smax = grids._ends(sched)
    hi, m = (smax, n) if smax <= top else (top, n - 1)
    u = hi / (sd + hi) * (torch.arange(m, 0, -1, dtype=torch.float64) / m) ** p
    s = sd * u / (1 - u)
    s[0] = hi
    return grids._close(s if m == n else torch.cat([torch.tensor([smax], dtype=torch.float64), s]))


CANDIDATES = {
    "default": None,
    "old default": "old",
    "karras to 0.06": lambda sc, n: karras_lo(sc, n, 0.06),
    "karras to 0.1": lambda sc, n: karras_lo(sc, n, 0.1),
    "model time p=1": lambda sc, n: model_time(sc, n, 1.0),
    "model time p=1.5": lambda sc, n: model_time(sc, n, 1.5),
    "u p=1 sd=1": lambda sc, n: noise_fraction(sc, n, 1.0, 1.0, math.inf),
    "u p=1.25 sd=1": lambda sc, n: noise_fraction(sc, n, 1.25, 1.0, math.inf),
    "u p=1 sd=0.5": lambda sc, n: noise_fraction(sc, n, 1.0, 0.5, math.inf),
    "u p=1 sd=1, top 80 (trailing)": lambda sc, n: noise_fraction(sc, n, 1.0, 1.0, 80.0),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1000,1001,1002,1003,1004,1005")
    ap.add_argument("--schedules", default="vp,flow,ve")
    ap.add_argument("--samplers", default="dpmpp_2m,dpmpp_3m,unipc,ipndm,heun,euler,ddim,dpm_solver_2,dpm_solver_3")
    ap.add_argument("--batch", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    nfes = (5, 10, 20)
    res: dict = {}
    kinds, names = args.schedules.split(","), args.samplers.split(",")
    for seed in (int(s) for s in args.seeds.split(",")):
        gm, desc = B.fresh_mixture(seed)
        for kind in kinds:
            sched = B.schedule_of(kind)
            xT = sched.sample_prior((args.batch, gm.dim), generator=torch.Generator().manual_seed(seed + 10**6),
                                    dtype=torch.float64)
            model = gm.denoiser(sched, "eps")
            ref = difflab.sample(model, xT, "dopri5", grid=grids.log_snr(sched, 2), rtol=1e-10, atol=1e-10)
            cfgs, net = B.diffusers_for(kind, gm, sched)
            best = [min(B.rmse(B.run_diffusers_any(net, mk, xT, k), ref) for mk in cfgs.values()) for k in nfes]
            for name in names:
                for j, k in enumerate(nfes):
                    for cand, fn in CANDIDATES.items():
                        n = n_levels(name, k)
                        if fn == "old":  # the default grid before the trailing rule
                            g = grids.get(B.OLD_DEFAULT.get(name, difflab.samplers.get(name).grid), sched, n)
                        else:
                            g = None if fn is None else fn(sched, n)
                        e = B.rmse(difflab.sample(model, xT, name, steps=k, grid=g), ref)
                        res.setdefault((kind, name, k, cand), []).append(e / best[j])
        print(f"# {desc}", flush=True)
    gmean = lambda v: math.exp(sum(map(math.log, v)) / len(v))  # noqa: E731
    for kind in kinds:
        for name in names:
            for k in nfes:
                row = sorted((gmean(v), max(v), c) for (a, b, kk, c), v in res.items() if (a, b, kk) == (kind, name, k))
                print(f"{kind} {name} {k}: " + "; ".join(f"{c} {g:.2f}/{w:.2f}" for g, w, c in row), flush=True)


if __name__ == "__main__":
    main()
