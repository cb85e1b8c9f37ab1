"""Sampler benchmark: difflab samplers vs diffusers schedulers on one analytic Gaussian-mixture model.

Run: python benchmarks/samplers.py [--quick]
Writes docs/benchmarks/samplers.md and docs/benchmarks/samplers_*.png.

The model is the exact eps-predictor of a Gaussian mixture under the DDPM linear schedule (T = 1000), given
identically to both libraries.  Every run starts from the same x_T ~ N(0, I) at t = 999; the reference is the
probability-flow ODE from t = 999 to t = 0 solved by dopri5 at rtol = atol = 1e-10 in float64, followed by the
denoiser at t = 0 (the limit of every solver here as its steps grow).  NFE counts model calls.
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

import difflab
from difflab.models.gaussian_mixture import GaussianMixture
from difflab.samplers import grids

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
NFES = (5, 10, 20, 50)


# ---------------------------------------------------------------- problems
def random_mixture(d: int, k: int, seed: int, spread: float, eig: tuple[float, float]) -> GaussianMixture:
    """K components with means ~ N(0, spread^2 I) and full covariances with eigenvalues in [eig]."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(k, d, generator=g, dtype=torch.float64)
    covs = []
    for _ in range(k):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        lam = eig[0] + (eig[1] - eig[0]) * torch.rand(d, generator=g, dtype=torch.float64)
        covs.append(q @ torch.diag(lam) @ q.T)
    w = 0.5 + torch.rand(k, generator=g, dtype=torch.float64)
    return GaussianMixture(w, means, torch.stack(covs))


PROBLEMS: dict[str, Callable[[], GaussianMixture]] = {
    "2-D, 6 components": lambda: random_mixture(2, 6, seed=1, spread=1.5, eig=(0.02, 0.2)),
    "8-D, 5 components": lambda: random_mixture(8, 5, seed=2, spread=1.0, eig=(0.05, 0.5)),
}


class Counter:
    """eps network that counts calls."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.fn, self.calls = fn, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fn(x, t)


def eps_net(gm: GaussianMixture, sched: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The analytic eps predictor as a plain network eps(x_t, t) (t a scalar or a [B] tensor of DDPM timesteps)."""
    den = gm.denoiser(sched, "eps")
    return lambda x, t: den.raw(x, t)


# ---------------------------------------------------------------- difflab
def difflab_configs() -> dict[str, dict[str, Any]]:
    return {
        "ddim": dict(sampler="ddim"),
        "euler (karras)": dict(sampler="euler", grid="karras"),
        "heun (karras)": dict(sampler="heun", grid="karras"),
        "dpm_solver_2 (logsnr)": dict(sampler="dpm_solver_2", grid="log_snr"),
        "dpm_solver_3 (logsnr)": dict(sampler="dpm_solver_3", grid="log_snr"),
        "dpmpp_2m (karras)": dict(sampler="dpmpp_2m", grid="karras"),
        "dpmpp_3m (logsnr)": dict(sampler="dpmpp_3m", grid="log_snr"),
        "unipc (logsnr)": dict(sampler="unipc", grid="log_snr"),
        "unipc (karras)": dict(sampler="unipc", grid="karras"),
        "ipndm (karras)": dict(sampler="ipndm", grid="karras"),
        "ipndm (few_step)": dict(sampler="ipndm", grid="few_step"),
        # the default grid since 2026-12-07 (grids.trailing)
        "dpmpp_2m (trailing)": dict(sampler="dpmpp_2m"),
        "unipc (trailing)": dict(sampler="unipc"),
        "ipndm (trailing)": dict(sampler="ipndm"),
    }


def run_difflab(net: Callable, sched: Any, xT: torch.Tensor, nfe: int, cfg: dict[str, Any]) -> tuple[torch.Tensor, int]:
    c = Counter(net)
    model = difflab.from_eps(c, sched)
    x = difflab.sample(model, xT, steps=nfe, **cfg)
    return x, c.calls


# ---------------------------------------------------------------- diffusers
def diffusers_configs() -> dict[str, Callable[[], Any]]:
    import diffusers as df

    base = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                prediction_type="epsilon")
    return {
        "DDIM (trailing)": lambda: df.DDIMScheduler(**base, timestep_spacing="trailing", clip_sample=False),
        "Euler": lambda: df.EulerDiscreteScheduler(**base),
        "Heun": lambda: df.HeunDiscreteScheduler(**base),
        "DPM++ 2M": lambda: df.DPMSolverMultistepScheduler(**base, solver_order=2),
        "DPM++ 3M": lambda: df.DPMSolverMultistepScheduler(**base, solver_order=3),
        "DPM++ 2M Karras": lambda: df.DPMSolverMultistepScheduler(**base, solver_order=2, use_karras_sigmas=True),
        "DPM++ 3M Karras": lambda: df.DPMSolverMultistepScheduler(**base, solver_order=3, use_karras_sigmas=True),
        "UniPC": lambda: df.UniPCMultistepScheduler(**base),
        "UniPC Karras": lambda: df.UniPCMultistepScheduler(**base, use_karras_sigmas=True),
        "DEIS": lambda: df.DEISMultistepScheduler(**base),
        "DEIS Karras": lambda: df.DEISMultistepScheduler(**base, use_karras_sigmas=True),
    }


def run_diffusers(net: Callable, make: Callable[[], Any], xT: torch.Tensor, nfe: int) -> tuple[torch.Tensor, int]:
    sch = make()
    heun = type(sch).__name__.startswith("Heun")
    sch.set_timesteps((nfe + 1) // 2 if heun else nfe)
    c = Counter(net)
    x = xT * sch.init_noise_sigma
    for t in sch.timesteps:
        e = c(sch.scale_model_input(x, t), t)
        x = sch.step(e, t, x).prev_sample
    return x, c.calls


# ---------------------------------------------------------------- measurements
def reference(net: Callable, sched: Any, xT: torch.Tensor, rtol: float) -> tuple[torch.Tensor, int]:
    model = difflab.from_eps(net, sched)
    sig = grids.log_snr(sched, 2)
    return difflab.sample(model, xT, "dopri5", grid=sig, rtol=rtol, atol=rtol, return_nfe=True)


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean().sqrt())


def accuracy(batch: int, nfes: tuple[int, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sched = difflab.schedules.get("linear", T=1000)
    for pname, make in PROBLEMS.items():
        gm = make()
        net = eps_net(gm, sched)
        xT = torch.randn(batch, gm.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        ref, ref_nfe = reference(net, sched, xT, 1e-10)
        ref2, _ = reference(net, sched, xT, 1e-8)
        rows: dict[tuple[str, str], list[tuple[float, int]]] = {}
        for name, cfg in difflab_configs().items():
            rows[("difflab", name)] = [(rmse(x, ref), n) for x, n in
                                       (run_difflab(net, sched, xT, k, cfg) for k in nfes)]
        for name, mk in diffusers_configs().items():
            rows[("diffusers", name)] = [(rmse(x, ref), n) for x, n in
                                         (run_diffusers(net, mk, xT, k) for k in nfes)]
        out[pname] = dict(rows=rows, ref_nfe=ref_nfe, ref_err=rmse(ref, ref2), scale=float(ref.std()))
    return out


def timing(batch: int, nfe: int = 20, repeats: int = 5) -> dict[str, tuple[float, float]]:
    """(Fastest, median) wall time of a 20-NFE run: difflab dpmpp_2m and unipc vs diffusers DPM++ 2M and UniPC (float32)."""
    sched = difflab.schedules.get("linear", T=1000)
    gm = PROBLEMS["8-D, 5 components"]()
    net = eps_net(gm, sched)
    xT = torch.randn(batch, gm.dim, generator=torch.Generator().manual_seed(0))
    dcfg = diffusers_configs()
    jobs: dict[str, Callable[[], Any]] = {
        "difflab dpmpp_2m": lambda: run_difflab(net, sched, xT, nfe, dict(sampler="dpmpp_2m")),
        "difflab ipndm": lambda: run_difflab(net, sched, xT, nfe, dict(sampler="ipndm")),
        "diffusers DPM++ 2M": lambda: run_diffusers(net, dcfg["DPM++ 2M"], xT, nfe),
        "diffusers UniPC": lambda: run_diffusers(net, dcfg["UniPC"], xT, nfe),
        "model calls alone": lambda: [net(xT, torch.full((batch,), 500.0)) for _ in range(nfe)],
    }
    res: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(repeats):  # interleaved so background load hits all alike
        for k, job in jobs.items():
            t0 = time.perf_counter()
            job()
            res[k].append(time.perf_counter() - t0)
    return {k: (min(v), sorted(v)[len(v) // 2]) for k, v in res.items()}


# ---------------------------------------------------------------- report
def best(rows: dict, lib: str, i: int) -> tuple[str, float]:
    cand = [(v[i][0], name) for (l, name), v in rows.items() if l == lib]
    e, name = min(cand)
    return name, e


def report(acc: dict[str, Any], times: dict[int, dict[str, tuple[float, float]]], nfes: tuple[int, ...], command: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Sampler benchmark: difflab vs diffusers",
        "",
        f"Command: `{command}`  ",
        f"Date: {now}  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other processes, torch "
        f"{torch.__version__} with {torch.get_num_threads()} threads, diffusers "
        f"{__import__('diffusers').__version__}.",
        "",
        "Model: exact eps-predictor of a Gaussian mixture (full covariances) under the DDPM linear schedule "
        "(T = 1000), float64, the same callable for both libraries. Error: RMSE of each endpoint against the "
        "reference solution of the same probability-flow ODE from the same x_T (dopri5, rtol = atol = 1e-10, "
        "float64, from t = 999 to t = 0, then the denoiser at t = 0). NFE counts model calls; a sampler that "
        "cannot use the whole budget (Heun, DPM-Solver-2/3) runs at the largest NFE not above it, shown in "
        "brackets. diffusers schedulers use their defaults except DDIM, which uses `timestep_spacing=\"trailing\"` "
        "so that it starts at t = 999 like the others, and `clip_sample=False` (the data exceed [-1, 1]).",
        "",
    ]
    for pname, res in acc.items():
        rows = res["rows"]
        lines += [f"## {pname}", "",
                  f"Reference: {res['ref_nfe']} model calls; its distance to the rtol = 1e-8 solution is "
                  f"{res['ref_err']:.1e} (RMSE); std of the reference endpoints {res['scale']:.2f}.", "",
                  "| library | sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |",
                  "|---|---|" + "---|" * len(nfes)]
        for (lib, name), v in rows.items():
            cells = [f"{e:.2e}" + ("" if n == k else f" [{n}]") for (e, n), k in zip(v, nfes)]
            lines.append(f"| {lib} | {name} | " + " | ".join(cells) + " |")
        lines += ["", "| NFE | best difflab | best diffusers | ratio | target (<= 0.5 at NFE 5, 10) |", "|---|---|---|---|---|"]
        for i, k in enumerate(nfes):
            (na, ea), (nb, eb) = best(rows, "difflab", i), best(rows, "diffusers", i)
            ok = "" if k not in (5, 10) else ("met" if ea <= 0.5 * eb else "**missed**")
            lines.append(f"| {k} | {na}: {ea:.2e} | {nb}: {eb:.2e} | {ea / eb:.2f} | {ok} |")
        lines.append("")
    lines += ["## Wall time of a 20-NFE run (float32, 8-D mixture, same process, same torch threads)", "",
              "| run | " + " | ".join(f"batch {b}: fastest / median" for b in times) + " |",
              "|---|" + "---|" * len(times)]
    keys = list(next(iter(times.values())))
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{times[b][k][0] * 1e3:.1f} / {times[b][k][1] * 1e3:.1f} ms"
                                              for b in times) + " |")
    reps = {1: 30, 2000: 7}
    lines += ["", "Other processes share the two cores, so times are noisy: runs are interleaved so that load hits "
              "both libraries alike, and the fastest of " + " and ".join(f"{reps.get(b, 1)} repeats at batch {b}"
                                                                       for b in times)
              + " is the least disturbed figure. 'model calls alone' is 20 bare calls of the analytic model; the "
              "rest of each row is the sampling loop (difflab also converts eps to x_0 in its Denoiser).", ""]
    return "\n".join(lines)


def plot(acc: dict[str, Any], nfes: tuple[int, ...]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    libs = ("difflab", "diffusers")
    fig, axes = plt.subplots(len(acc), 2, figsize=(13, 5 * len(acc)), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for row, (pname, res) in zip(axes, acc.items()):
        for ax, lib in zip(row, libs):
            other = libs[1 - libs.index(lib)]
            for j, ((l, name), v) in enumerate((k, v) for k, v in res["rows"].items() if k[0] == lib):
                ax.loglog([n for _, n in v], [e for e, _ in v], "-o", ms=3, color=colors[j % 20], label=name)
            env = [min(v[i][0] for (l, _), v in res["rows"].items() if l == other) for i in range(len(nfes))]
            ax.loglog(nfes, env, "k--", lw=2, label=f"best of {other}")
            ax.set_title(f"{pname}: {lib}")
            ax.set_xlabel("NFE (model calls)")
            ax.set_ylabel("RMSE to reference ODE endpoint")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    p = OUT / "samplers_error.png"
    fig.savefig(p, dpi=120)
    paths.append(p)
    return paths


CALIBRATION: dict[str, Callable[[], GaussianMixture]] = {  # disjoint from PROBLEMS: used only to choose few_step
    "cal 2-D": lambda: random_mixture(2, 6, seed=11, spread=1.5, eig=(0.02, 0.2)),
    "cal 8-D": lambda: random_mixture(8, 5, seed=12, spread=1.0, eig=(0.05, 0.5)),
    "cal 4-D": lambda: random_mixture(4, 8, seed=13, spread=1.2, eig=(0.01, 0.3)),
}


def tune_grid(command: str, batch: int = 300) -> str:
    """Choose few_step's (knee, rho) for ipndm on the calibration mixtures only: geometric mean of RMSE."""
    sched = difflab.schedules.get("linear", T=1000)
    cases = []
    for make in CALIBRATION.values():
        gm = make()
        net = eps_net(gm, sched)
        xT = torch.randn(batch, gm.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        cases.append((difflab.from_eps(net, sched), xT, reference(net, sched, xT, 1e-9)[0]))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Choosing the few_step grid", "", f"Command: `{command}`  ", f"Date: {now}", "",
             "iPNDM (order 3) on `few_step(n, rho, knee)` grids; geometric mean over three calibration mixtures "
             "(disjoint from the benchmark ones) of the RMSE to the reference ODE endpoint; batch "
             f"{batch}. Best five per NFE.", "",
             "| NFE | knee | rho | geo-mean RMSE | per mixture |", "|---|---|---|---|---|"]
    for n in (5, 10, 20):
        res = []
        for knee in (0.6, 0.8, 1.2, 2.0, 4.0):
            for rho in (3.0, 5.0, 7.0, 10.0):
                sig = grids.few_step(sched, n, rho=rho, knee=knee)
                e = [rmse(difflab.samplers.sample_ipndm(m, x, sig), r) for m, x, r in cases]
                res.append((math.exp(sum(map(math.log, e)) / len(e)), knee, rho, e))
        ranked = sorted(res)
        for g, knee, rho, e in ranked[:5]:
            lines.append(f"| {n} | {knee} | {rho} | {g:.3e} | " + ", ".join(f"{v:.3f}" for v in e) + " |")
        rank, (g, knee, rho, e) = next((i, r) for i, r in enumerate(ranked) if (r[1], r[2]) == (1.2, 5.0))
        lines.append(f"| {n} | **1.2 (default)** | **5.0** | {g:.3e} (rank {rank + 1} of {len(ranked)}, "
                     f"{g / ranked[0][0]:.2f} x best) | " + ", ".join(f"{v:.3f}" for v in e) + " |")
    return "\n".join(lines) + "\n"


def fresh_mixture(seed: int) -> tuple[GaussianMixture, str]:
    """A mixture never used to choose defaults: dimension 2-16, 4-25 components, means ~ N(0, spread^2 I) with
    spread in [0.5, 2], full covariances with eigenvalues log-uniform in [0.003, 0.5] (condition number up to 170)."""
    g = torch.Generator().manual_seed(seed)
    d = int(torch.randint(2, 17, (1,), generator=g))
    k = int(torch.randint(4, 26, (1,), generator=g))
    spread = 0.5 + 1.5 * float(torch.rand(1, generator=g, dtype=torch.float64))
    means = spread * torch.randn(k, d, generator=g, dtype=torch.float64)
    covs = []
    for _ in range(k):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        lam = torch.exp(math.log(0.003) + (math.log(0.5) - math.log(0.003)) * torch.rand(d, generator=g, dtype=torch.float64))
        covs.append(q @ torch.diag(lam) @ q.T)
    w = 0.2 + torch.rand(k, generator=g, dtype=torch.float64)
    return GaussianMixture(w, means, torch.stack(covs)), f"{d}-D, {k} components, spread {spread:.2f}"


TUNED = ("dpmpp_2m", "dpmpp_3m", "unipc", "ipndm", "heun")


def fresh(count: int, batch: int, calibration: int, command: str, seed: int | None = None) -> str:
    """Error ratio, best difflab (default and tuned grids) over best diffusers, at 5 and 10 calls on fresh mixtures."""
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    sched = difflab.schedules.get("linear", T=1000)
    nfes = (5, 10)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Fresh Gaussian mixtures: difflab (default and tuned grids) vs diffusers", "",
             f"Command: `{command}`  ", f"Date: {now}  ", f"Load (`uptime`): {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
             f"{os.getloadavg()[2]:.2f}  ", f"Seeds: drawn at run time from os.urandom; base seed {seed}, mixture i uses seed + i.", "",
             "Model: exact eps-predictor of each mixture under the DDPM linear schedule (T = 1000), float64. Error: RMSE "
             f"of {batch} held-out endpoints against dopri5 at rtol = 1e-10. Tuned grids: `difflab.samplers.tune_grid` "
             f"on {calibration} calibration x_T drawn from another seed (GITS DP and coordinate search, 150 sampler runs).",
             "", "| mixture | NFE | best difflab, default grid | best difflab, tuned grid | best diffusers | ratio default | ratio tuned |",
             "|---|---|---|---|---|---|---|"]
    ratios: dict[tuple[int, str], list[float]] = {}
    for i in range(count):
        gm, desc = fresh_mixture(seed + i)
        net = eps_net(gm, sched)
        model = difflab.from_eps(net, sched)
        xT = torch.randn(batch, gm.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + i + 10**6))
        xcal = torch.randn(calibration, gm.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + i + 2 * 10**6))
        ref, _ = reference(net, sched, xT, 1e-10)
        for k in nfes:
            dflt = min((rmse(run_difflab(net, sched, xT, k, cfg)[0], ref), name) for name, cfg in difflab_configs().items())
            tuned = []
            for name in TUNED:
                tg = difflab.samplers.tune_grid(model, name, k, xcal)
                tuned.append((rmse(difflab.sample(model, xT, name, grid=tg.sigmas), ref), f"{name} (tuned)"))
            tb = min(tuned + [dflt])
            ob = min((rmse(run_diffusers(net, mk, xT, k)[0], ref), name) for name, mk in diffusers_configs().items())
            ratios.setdefault((k, "default"), []).append(dflt[0] / ob[0])
            ratios.setdefault((k, "tuned"), []).append(tb[0] / ob[0])
            lines.append(f"| {desc} | {k} | {dflt[1]}: {dflt[0]:.2e} | {tb[1]}: {tb[0]:.2e} | {ob[1]}: {ob[0]:.2e} | "
                         f"{dflt[0] / ob[0]:.2f} | {tb[0] / ob[0]:.2f} |")
            print(lines[-1], flush=True)
    lines += ["", "| NFE | grids | geometric mean ratio | worst ratio | target (<= 0.5) |", "|---|---|---|---|---|"]
    for (k, kind), v in sorted(ratios.items()):
        gmean = math.exp(sum(map(math.log, v)) / len(v))
        lines.append(f"| {k} | {kind} | {gmean:.2f} | {max(v):.2f} | {'met' if max(v) <= 0.5 else '**missed**'} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- default grids per schedule (VP, VE, flow)
SCHEDULE_KINDS = ("vp", "ve", "flow")
DEFAULT_SAMPLERS = ("ddim", "euler", "heun", "dpm_solver_2", "dpm_solver_3", "dpmpp_2m", "dpmpp_3m", "unipc", "ipndm")
EDM_SIGMA_DATA = 0.5
#: default grid names before the trailing rule (samplers not listed kept theirs)
OLD_DEFAULT = {"euler": "karras", "dpmpp_2m": "karras", "dpm_solver_2": "log_snr", "dpm_solver_3": "log_snr",
               "dpmpp_3m": "log_snr", "unipc": "log_snr", "ipndm": "few_step"}


def schedule_of(kind: str) -> Any:
    """The benchmark's schedule of each kind, the one diffusers' schedulers of that kind use: the DDPM linear table
    (T = 1000), VE in EDM's range [0.002, 80], the flow path."""
    if kind == "vp":
        return difflab.schedules.get("linear", T=1000)
    if kind == "ve":
        return difflab.schedules.VE(sigma_min=0.002, sigma_max=80.0)
    return difflab.schedules.get("flow")


def diffusers_for(kind: str, gm: GaussianMixture, sched: Any) -> tuple[dict[str, Callable[[], Any]], Callable]:
    """diffusers' scheduler configs of a schedule kind and the network they call, the mixture's exact model in the
    parametrisation those schedulers read: eps of the DDPM table, EDM's F of c_in x at 0.25 log sigma, or the flow
    velocity noise - x_0 at timestep 1000 sigma."""
    import diffusers as df

    if kind == "vp":
        return diffusers_configs(), eps_net(gm, sched)
    if kind == "ve":
        sd = EDM_SIGMA_DATA
        edm = dict(sigma_min=0.002, sigma_max=80.0, sigma_data=sd, prediction_type="epsilon")

        def net_ve(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            sigma = torch.exp(4.0 * torch.as_tensor(t, dtype=torch.float64))
            x = x_in * torch.sqrt(sigma**2 + sd**2)
            d = gm.posterior_mean(x, torch.ones_like(sigma), sigma)
            skip, out = sd**2 / (sigma**2 + sd**2), sigma * sd / torch.sqrt(sigma**2 + sd**2)
            return (d - skip * x) / out

        return {"EDM Euler": lambda: df.EDMEulerScheduler(**edm),
                "EDM DPM++ 2M": lambda: df.EDMDPMSolverMultistepScheduler(**edm, solver_order=2),
                "EDM DPM++ 3M": lambda: df.EDMDPMSolverMultistepScheduler(**edm, solver_order=3),
                "EDM Euler (exponential)": lambda: df.EDMEulerScheduler(**edm, sigma_schedule="exponential"),
                "EDM DPM++ 2M (exponential)": lambda: df.EDMDPMSolverMultistepScheduler(
                    **edm, solver_order=2, sigma_schedule="exponential")}, net_ve

    def net_flow(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = (torch.as_tensor(t, dtype=torch.float64) / 1000.0).clamp(1e-9, 1.0)
        d = gm.posterior_mean(x, 1.0 - s, s)
        return (x - d) / s

    flow = dict(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0)
    return {"FlowMatch Euler": lambda: df.FlowMatchEulerDiscreteScheduler(shift=1.0),
            "FlowMatch Heun": lambda: df.FlowMatchHeunDiscreteScheduler(shift=1.0),
            "DPM++ 2M (flow)": lambda: df.DPMSolverMultistepScheduler(**flow, solver_order=2),
            "DPM++ 3M (flow)": lambda: df.DPMSolverMultistepScheduler(**flow, solver_order=3),
            "UniPC (flow)": lambda: df.UniPCMultistepScheduler(**flow),
            "DEIS (flow)": lambda: df.DEISMultistepScheduler(**flow)}, net_flow


def run_diffusers_any(net: Callable, make: Callable[[], Any], xT: torch.Tensor, nfe: int) -> torch.Tensor:
    """diffusers' loop from x_T (already at the scheduler's prior scale) with at most ``nfe`` calls."""
    sch = make()
    heun = "Heun" in type(sch).__name__
    sch.set_timesteps((nfe + 1) // 2 if heun else nfe)
    x = xT.clone()
    for t in sch.timesteps:
        inp = sch.scale_model_input(x, t) if hasattr(sch, "scale_model_input") else x  # flow-match: none
        x = sch.step(net(inp, t), t, x).prev_sample
    return x


def default_errors(gm: GaussianMixture, kind: str, xT: torch.Tensor, nfes: tuple[int, ...],
                   grid_fn: Callable[[str, Any, int], Any] | None = None) -> dict[str, Any]:
    """RMSE to the exact ODE endpoint of every difflab sampler on its default grid (or ``grid_fn(sampler, schedule,
    nfe)``) and of every diffusers config of the schedule kind, per NFE."""
    sched = schedule_of(kind)
    model = gm.denoiser(sched, "eps")
    ref = difflab.sample(model, xT, "dopri5", grid=grids.log_snr(sched, 2), rtol=1e-10, atol=1e-10)
    ours = {}
    for name in DEFAULT_SAMPLERS:
        ours[name] = [rmse(difflab.sample(model, xT, name, steps=k, grid=None if grid_fn is None else
                                          grid_fn(name, sched, k)), ref) for k in nfes]
    cfgs, net = diffusers_for(kind, gm, sched)
    theirs = {}
    for name, make in cfgs.items():
        try:
            theirs[name] = [rmse(run_diffusers_any(net, make, xT, k), ref) for k in nfes]
        except Exception as e:  # a diffusers config that does not run at this budget counts as missing
            print(f"diffusers {name}: {type(e).__name__}: {e}", file=sys.stderr)
    old = {}
    for name in DEFAULT_SAMPLERS:  # the default grids before the trailing rule, for comparison
        g = OLD_DEFAULT.get(name)
        old[name] = [rmse(difflab.sample(model, xT, name, steps=k, grid=g), ref) for k in nfes]
    return dict(ours=ours, old=old, theirs=theirs, scale=float(ref.std()))


def defaults(count: int, batch: int, command: str, seed: int | None = None, kinds: tuple[str, ...] = SCHEDULE_KINDS,
             nfes: tuple[int, ...] = (5, 10, 20)) -> str:
    """Best difflab sampler on its default grid over best diffusers config, per schedule kind and NFE, on fresh mixtures."""
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    la = os.getloadavg()
    lines = ["# Default grids on fresh Gaussian mixtures: difflab vs diffusers, per schedule", "",
             f"Command: `{command}`  ", f"Date: {now}  ", f"Load (`uptime`) at the start: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}  ",
             f"Seeds: drawn at run time from os.urandom; base seed {seed}, mixture i uses seed + i (the same mixtures "
             "for every schedule).", "",
             "Model: the exact denoiser of each mixture (`fresh_mixture`), float64, under the DDPM linear table (VP, "
             "T = 1000), VE on EDM's [0.002, 80] and the flow path; diffusers' schedulers get it in their own "
             "parametrisation (eps; EDM's F; the velocity). Error: RMSE of "
             f"{batch} endpoints from the schedule's prior against dopri5 at rtol = 1e-10. difflab rows: each sampler "
             "on its default grid (`difflab.sample(..., steps=NFE)`); diffusers rows: each config at its defaults.", "",
             "| schedule | mixture | NFE | best difflab (default grid) | best diffusers | ratio | ratio, old default grids |",
             "|---|---|---|---|---|---|---|"]
    ratios: dict[tuple[str, int], list[float]] = {}
    ratios_old: dict[tuple[str, int], list[float]] = {}
    per_sampler: dict[tuple[str, str, int], list[float]] = {}
    for i in range(count):
        gm, desc = fresh_mixture(seed + i)
        for kind in kinds:
            sched = schedule_of(kind)
            xT = sched.sample_prior((batch, gm.dim), generator=torch.Generator().manual_seed(seed + i + 10**6),
                                    dtype=torch.float64)
            res = default_errors(gm, kind, xT, nfes)
            for j, k in enumerate(nfes):
                ob = min((v[j], n) for n, v in res["theirs"].items())
                db = min((v[j], n) for n, v in res["ours"].items())
                do = min((v[j], n) for n, v in res["old"].items())
                ratios.setdefault((kind, k), []).append(db[0] / ob[0])
                ratios_old.setdefault((kind, k), []).append(do[0] / ob[0])
                for n, v in res["ours"].items():
                    per_sampler.setdefault((kind, n, k), []).append(v[j] / ob[0])
                lines.append(f"| {kind} | {desc} | {k} | {db[1]}: {db[0]:.2e} | {ob[1]}: {ob[0]:.2e} | {db[0] / ob[0]:.2f} | "
                             f"{do[0] / ob[0]:.2f} ({do[1]}) |")
                print(lines[-1], flush=True)
    lines += ["", "| schedule | NFE | geometric mean ratio | worst ratio | target (worst <= 1) | old default grids: "
              "geometric mean / worst |", "|---|---|---|---|---|---|"]
    for (kind, k), v in sorted(ratios.items()):
        gmean = math.exp(sum(map(math.log, v)) / len(v))
        vo = ratios_old[(kind, k)]
        lines.append(f"| {kind} | {k} | {gmean:.2f} | {max(v):.2f} | {'met' if max(v) <= 1 else '**missed**'} | "
                     f"{math.exp(sum(map(math.log, vo)) / len(vo)):.2f} / {max(vo):.2f} |")
    lines += ["", "Per sampler: geometric mean over the mixtures of its error / best diffusers error.", "",
              "| schedule | sampler | " + " | ".join(f"NFE {k}" for k in nfes) + " |", "|---|---|" + "---|" * len(nfes)]
    for kind in kinds:
        for n in DEFAULT_SAMPLERS:
            cells = []
            for k in nfes:
                v = per_sampler.get((kind, n, k), [])
                cells.append(f"{math.exp(sum(map(math.log, v)) / len(v)):.2f}" if v else "")
            lines.append(f"| {kind} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


DIGITS_METHODS = ("ddpm:100,ddim:10,ddim:20,dpmpp_2m:5,dpmpp_2m:10,dpmpp_2m:20,heun:10,heun:20,unipc:10,dpmpp_3m:10,"
                  "ipndm:5,ipndm:10,ipndm:20,euler:10")


def images(run: str, methods: str, num: int, command: str) -> tuple[str, str]:
    """FD / precision / recall of samplers on an image run (digits or MNIST), default grids and the run's tuned
    grids (grids.json); returns (markdown, data name)."""
    from difflab.cli.tune_steps import tuned_sigmas
    from difflab.evaluation import evaluate_features, features_for, get_extractor, reference_features
    from difflab.models.denoiser import Clamped
    from difflab.training import load_run

    r = load_run(run, device="cpu")
    model = Clamped(r.model)
    spec = r.config["data"]
    data_name = features_for(spec)  # digits or mnist
    ex = get_extractor(data_name)
    ref = reference_features(spec, "train", max_n=10000)  # MNIST: 10000 training images drawn with seed 0
    ref_text = (f"the {len(ref)} training digits in the digits feature net" if data_name == "digits"
                else f"{len(ref)} MNIST training images (seed 0) in the MNIST feature net")
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    la = os.getloadavg()
    lines = [f"# Few-call samplers on a{'' if data_name == 'digits' else 'n'} {'digits' if data_name == 'digits' else 'MNIST'} run",
             "", f"Command: `{command}`  ", f"Date: {now}  ",
             f"Load (`uptime`) at the start: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}  ",
             f"Run: {run} ({r.step} steps, schedule {r.config['schedule']}, prediction {r.config['prediction']}); "
             f"{num} samples per row from the same x_T (seed 0), denoised predictions clipped to [-1, 1]; reference: "
             f"{ref_text}; KID over 10 subsets.", "",
             "| sampler | grid | calls | FD | KID | precision | recall | coverage |", "|---|---|---|---|---|---|---|---|"]
    rows = []
    for item in methods.split(","):
        name, steps = item.split(":")
        steps = int(steps)
        grids_ = [("default", None)]
        tuned = tuned_sigmas(Path(run), name, steps, "clip")
        if tuned is not None:
            grids_.append(("tuned", tuned))
        for label, grid in grids_:
            g = torch.Generator().manual_seed(0)
            x_T = model.schedule.sample_prior((num, *r.shape), generator=g)
            x, calls = difflab.sample(model, x_T, name, steps=steps, grid=grid, generator=g, return_nfe=True)
            m = evaluate_features(ex(x.clamp(-1, 1)), ref, kid_subsets=10)
            rows.append((name, label, calls, m))
            lines.append(f"| {name} | {label} | {calls} | {m['fd']:.2f} | {m['kid']:.2f} | {m['precision']:.3f} | "
                         f"{m['recall']:.3f} | {m['coverage']:.3f} |")
            print(lines[-1], flush=True)
    base = [m["fd"] for n, _, c, m in rows if n == "ddpm" and c >= 100]
    if base:
        best10 = min((m["fd"], f"{n} ({l})") for n, l, c, m in rows if c <= 10 and n != "ddpm")
        lines += ["", f"Target: some solver at 10 calls within 1.2x of DDPM's {base[0]:.2f} at 100+ calls: best "
                  f"{best10[1]} at {best10[0]:.2f} = {best10[0] / base[0]:.2f}x, "
                  + ("met." if best10[0] <= 1.2 * base[0] else "**missed**.")]
    return "\n".join(lines) + "\n", data_name


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batches, no timing (smoke run)")
    ap.add_argument("--batch", type=int, default=1000, help="number of x_T per mixture for the error table")
    ap.add_argument("--tune-grid", action="store_true", help="only rerun the few_step grid selection")
    ap.add_argument("--fresh", type=int, metavar="K", help="only the fresh-mixture comparison on K mixtures")
    ap.add_argument("--seed", type=int, help="base seed of --fresh / --defaults (default: drawn from os.urandom)")
    ap.add_argument("--defaults", type=int, metavar="K",
                    help="only the default-grid comparison per schedule (VP, VE, flow) on K fresh mixtures")
    ap.add_argument("--schedules", default=",".join(SCHEDULE_KINDS), help="schedule kinds of --defaults")
    ap.add_argument("--threads", type=int, help="torch threads")
    ap.add_argument("--digits", "--images", dest="images", metavar="RUN_DIR",
                    help="only the FD table of this digits or MNIST run (with its grids.json), written to "
                         "samplers_digits.md or samplers_mnist.md")
    ap.add_argument("--methods", default=DIGITS_METHODS, help="sampler:calls list for --images")
    ap.add_argument("--num", type=int, default=500, help="samples per row for --images")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python benchmarks/samplers.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    if args.tune_grid:
        text = tune_grid(command)
        print(text)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "samplers_grid.md").write_text(text)
        return
    if args.images:
        text, name = images(args.images, args.methods, args.num, command)
        print(text)
        (OUT / f"samplers_{name}.md").write_text(text)
        return
    if args.defaults:
        text = defaults(args.defaults, 64 if args.quick else min(args.batch, 500), command, args.seed,
                        tuple(args.schedules.split(",")))
        print(text)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "samplers_defaults.md").write_text(text)
        return
    if args.fresh:
        text = fresh(args.fresh, 64 if args.quick else min(args.batch, 500), 32 if args.quick else 256, command, args.seed)
        print(text)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "samplers_fresh.md").write_text(text)
        return
    batch = 64 if args.quick else args.batch
    acc = accuracy(batch, NFES)
    times = {} if args.quick else {1: timing(1, repeats=30), 2000: timing(2000, repeats=7)}
    if args.quick:
        times = {1: timing(1, repeats=1)}
    text = report(acc, times, NFES, command.strip())
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    plot(acc, NFES)
    (OUT / "samplers.md").write_text(text)


if __name__ == "__main__":
    main()
