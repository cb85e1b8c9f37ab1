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
        "euler (karras)": dict(sampler="euler"),
        "heun (karras)": dict(sampler="heun"),
        "dpm_solver_2 (logsnr)": dict(sampler="dpm_solver_2"),
        "dpm_solver_3 (logsnr)": dict(sampler="dpm_solver_3"),
        "dpmpp_2m (karras)": dict(sampler="dpmpp_2m"),
        "dpmpp_3m (logsnr)": dict(sampler="dpmpp_3m"),
        "unipc (logsnr)": dict(sampler="unipc"),
        "unipc (karras)": dict(sampler="unipc", grid="karras"),
        "ipndm (karras)": dict(sampler="ipndm", grid="karras"),
        "ipndm (few_step)": dict(sampler="ipndm"),
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small batches, no timing (smoke run)")
    ap.add_argument("--batch", type=int, default=1000, help="number of x_T per mixture for the error table")
    ap.add_argument("--tune-grid", action="store_true", help="only rerun the few_step grid selection")
    args = ap.parse_args(argv)
    command = "python benchmarks/samplers.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    if args.tune_grid:
        text = tune_grid(command)
        print(text)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "samplers_grid.md").write_text(text)
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
