"""Training throughput of difflab's engine against a diffusers training loop: fp32, bf16 autocast and torch.compile,
one process against two (gloo), and the loss curve of bf16 against fp32.

Run from the repository root:  python benchmarks/throughput.py          (about 23 minutes on 2 shared cores; four cold
                                                                          compiles take 7 of them)
                                python benchmarks/throughput.py --quick  (a smoke test of every part, digits only)
Writes docs/benchmarks/throughput.md, throughput.png, throughput_precision.png and the raw throughput.json
(``--quick``: into a temporary folder unless ``--out`` is given; ``--render throughput.json`` rewrites the page and
figures from the JSON alone).  diffusers is a benchmark-only dependency (``pip install -e .[bench]``).

Both sides train the same U-Net architecture (widths, ResNet blocks per level, attention levels and heads,
GroupNorm groups, scale-shift time injection, dropout; see ``diffusers_kwargs``) on the same data batches with
the same step: L_simple (Ho et al. 2020, Alg. 1) on a linear 1000-step schedule, AdamW with warm-up, gradient
clipping at norm 1 and an EMA of the weights.  difflab's side is ``difflab.training.fit`` itself; diffusers' side
is the loop its users write (UNet2DModel, DDPMScheduler.add_noise, torch.autocast for bf16, torch.compile of the
model, EMAModel with foreach updates, get_scheduler("constant_with_warmup")).  A third contender is the training
step of difflab before the engine rewrite, with the same network, to measure the engine's own cost.  All
contenders of a case run in one process and their repetitions are interleaved (in a rotating order), so that
drifting background load hits all of them.
"""
from __future__ import annotations

import os

# Passive OpenMP waiting (what the difflab command sets): busy-waiting threads collapse under shared cores.  Set
# before torch is imported; it applies to both libraries alike.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import csv  # noqa: E402
import datetime as dt  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from difflab.data import Dataset, load  # noqa: E402
from difflab.losses import denoising_loss  # noqa: E402
from difflab.models.unet import UNetConfig, unet_for_image  # noqa: E402
from difflab.training import EMA, DiffusionFamily, TrainConfig, build_denoiser, fit  # noqa: E402
from difflab.training.engine import batch_indices, step_generator  # noqa: E402

MNIST_DIR = Path(os.environ.get("DIFFLAB_MNIST", "/work/shared/data/mnist"))
CASES = {"digits 8x8": ("digits", 128), "MNIST 28x28": (f"mnist:{MNIST_DIR}", 64)}  # data spec, global batch
VARIANTS = ("fp32", "bf16", "compile")
LIBS = ("difflab", "diffusers")
OLD = "difflab, pre-engine step"
SCHEDULE = {"kind": "linear", "T": 1000}
LR, WARMUP, CLIP, EMA_DECAY = 1e-3, 200, 1.0, 0.999  # difflab's defaults, used by every contender


def recipe(batch: int, **changes: Any) -> TrainConfig:
    """The recipe every contender follows (difflab's defaults with the linear schedule diffusers' DDPMScheduler uses)."""
    return TrainConfig(batch_size=batch, schedule=SCHEDULE, lr=LR, warmup_steps=WARMUP, grad_clip=CLIP,
                       ema_decay=EMA_DECAY, **changes)


def diffusers_kwargs(cfg: UNetConfig, size: int) -> dict[str, Any]:
    """UNet2DModel arguments describing the same architecture as ``cfg``."""
    widths = tuple(cfg.channels * m for m in cfg.channel_mult)
    levels = range(len(widths))
    return dict(
        sample_size=size, in_channels=cfg.in_channels, out_channels=cfg.out_channels, block_out_channels=widths,
        layers_per_block=cfg.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in levels),
        up_block_types=tuple("AttnUpBlock2D" if i in cfg.attention_levels else "UpBlock2D" for i in reversed(levels)),
        attention_head_dim=widths[-1] // cfg.num_heads, norm_num_groups=cfg.groups, dropout=cfg.dropout,
        resnet_time_scale_shift="scale_shift" if cfg.time_injection == "adagn" else "default",
    )


def fresh_inductor_cache() -> None:
    """Point inductor at an empty cache folder, so that each compile time below is a cold one (removed at exit)."""
    import atexit

    path = tempfile.mkdtemp(prefix="inductor-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = path


class Contender:
    """One way of training one case; ``run(n)`` trains n steps and returns their seconds."""

    label: str
    variant: str
    params: int

    def compile_seconds(self) -> float | None:
        """Wall time of the first (compiling) step, or None when nothing is compiled."""
        return None

    def run(self, n: int, budget: float = math.inf) -> tuple[int, float]:
        """Train n steps, or fewer once ``budget`` seconds have passed (at least one); (steps, seconds)."""
        raise NotImplementedError


class DifflabEngine(Contender):
    """``difflab.training.fit`` on the diffusion family, in memory (no run folder)."""

    def __init__(self, data: Dataset, batch: int, variant: str):
        self.label, self.variant, self.data = "difflab", variant, data
        self.cfg = recipe(batch, precision="bf16" if variant == "bf16" else "fp32")
        torch.manual_seed(0)
        self.family = DiffusionFamily(self.cfg, data)
        self.params = sum(p.numel() for p in self.family.model.parameters())

    def compile_seconds(self) -> float | None:
        if self.variant != "compile":
            return None
        fresh_inductor_cache()
        t0 = time.perf_counter()  # TrainConfig.compile compiles the network in place; later fits reuse it
        fit(self.family, len(self.data), self.cfg.replace(steps=1, compile=True), None, progress=False)
        return time.perf_counter() - t0

    def run(self, n: int, budget: float = math.inf) -> tuple[int, float]:
        minutes = budget / 60 if math.isfinite(budget) else 0.0  # the engine's own wall-clock budget
        res = fit(self.family, len(self.data), self.cfg.replace(steps=n, minutes=minutes), None, progress=False)
        return res.step, res.seconds


class OldStep(Contender):
    """difflab's training step before the engine rewrite (training/loop.py ``train_step`` + EMA), same network."""

    def __init__(self, data: Dataset, batch: int, variant: str = "fp32"):
        self.label, self.variant, self.data, self.batch = OLD, variant, data, batch
        self.cfg = recipe(batch)
        torch.manual_seed(0)
        self.model = build_denoiser(self.cfg, data)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=0.0)
        self.ema = EMA(self.model, EMA_DECAY)
        self.params = sum(p.numel() for p in self.model.parameters())
        self.model.train()

    def run(self, n: int, budget: float = math.inf) -> tuple[int, float]:
        t0 = time.perf_counter()
        for step in range(n):
            if step and time.perf_counter() - t0 > budget:
                return step, time.perf_counter() - t0
            g = step_generator(0, step)
            x0 = self.data.batch(batch_indices(len(self.data), self.batch, 0, step))
            torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)))  # dropout
            for group in self.opt.param_groups:
                group["lr"] = self.cfg.lr_at(step)
            loss = denoising_loss(self.model, x0, None, generator=g).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
            self.opt.step()
            self.ema.update(self.model, step)
            loss.item(), gn.item()
        return n, time.perf_counter() - t0


class DiffusersLoop(Contender):
    """The training loop a diffusers user writes for UNet2DModel (as in diffusers' unconditional training example)."""

    def __init__(self, data: Dataset, batch: int, variant: str):
        from diffusers import DDPMScheduler, UNet2DModel
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        self.label, self.variant, self.data, self.batch = "diffusers", variant, data, batch
        c, h, w = data.shape
        torch.manual_seed(0)
        self.model = UNet2DModel(**diffusers_kwargs(unet_for_image(max(h, w), c), max(h, w))).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=0.0)
        self.lr = get_scheduler("constant_with_warmup", self.opt, num_warmup_steps=WARMUP)
        self.ema = EMAModel(self.model.parameters(), decay=EMA_DECAY, foreach=True)
        self.noise = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        self.net = self.model
        self.params = sum(p.numel() for p in self.model.parameters())
        self.step = 0

    def compile_seconds(self) -> float | None:
        if self.variant != "compile":
            return None
        fresh_inductor_cache()
        self.net = torch.compile(self.model)
        return self.run(1)[1]

    def run(self, n: int, budget: float = math.inf) -> tuple[int, float]:
        t0 = time.perf_counter()
        for i in range(n):
            if i and time.perf_counter() - t0 > budget:
                return i, time.perf_counter() - t0
            x0 = self.data.batch(batch_indices(len(self.data), self.batch, 0, self.step))
            noise = torch.randn_like(x0)
            t = torch.randint(0, self.noise.config.num_train_timesteps, (len(x0),))
            xt = self.noise.add_noise(x0, noise, t)
            amp = torch.autocast("cpu", dtype=torch.bfloat16) if self.variant == "bf16" else nullcontext()
            with amp:
                pred = self.net(xt, t, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
            self.opt.step()
            self.lr.step()
            self.opt.zero_grad(set_to_none=True)
            self.ema.step(self.model.parameters())
            loss.item()
            self.step += 1
        return n, time.perf_counter() - t0


def measure_throughput(case: str, data: Dataset, variants: tuple[str, ...], reps: int, steps: int,
                       warmup: int, budget: float) -> dict[Any, Any]:
    """Per contender: compile time, steps/s of every repetition; repetitions interleaved in a rotating order.
    Under "ops": the self CPU time per op of a difflab fp32 and a bf16 step."""
    batch = CASES[case][1]
    # Dynamo caches compiled code per code object: the previous case's U-Net of the same class would make this
    # case's compile a recompile with dynamic shapes (which inductor failed on); one model per process, as in a run.
    torch._dynamo.reset()
    contenders: list[Contender] = [OldStep(data, batch)]
    for v in variants:
        contenders += [DifflabEngine(data, batch, v), DiffusersLoop(data, batch, v)]
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for c in contenders:
        first = c.compile_seconds()
        if first is not None:
            print(f"{case}: {c.label} {c.variant}: first compiled step {first:.1f} s", flush=True)
        c.run(warmup)
        out[c.label, c.variant] = {"params": c.params, "first_step_s": first, "rates": [], "cpu": [], "steps": []}
    for rep in range(reps):
        k = rep % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            cpu = time.process_time()
            r = out[c.label, c.variant]
            n, seconds = c.run(steps, budget)
            r["rates"].append(n / seconds)
            r["cpu"].append((time.process_time() - cpu) / n)  # CPU seconds per step, all threads
            r["steps"].append(n)
        print(f"{case} rep {rep + 1}/{reps}: " + ", ".join(f"{lab}/{v} {r['rates'][-1]:.2f}"
                                                           for (lab, v), r in out.items()), flush=True)
    for r in out.values():
        r["median"], r["best"], r["cpu_s"] = statistics.median(r["rates"]), max(r["rates"]), statistics.median(r["cpu"])
    if "bf16" in variants:  # where the time of a bf16 step goes, against fp32
        by = {(c.label, c.variant): c for c in contenders}
        out["ops"] = op_profile({v: by["difflab", v] for v in ("fp32", "bf16")}, 2, budget)
    return out


def op_profile(contenders: dict[str, Contender], steps: int, budget: float) -> dict[str, dict[str, float]]:
    """Self CPU milliseconds per step of each aten op (torch.profiler) for each contender, e.g. fp32 and bf16."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for name, c in contenders.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            n, _ = c.run(steps, budget)
        out[name] = {e.key: e.self_cpu_time_total / 1000 / n for e in prof.key_averages() if e.key.startswith("aten::")}
    return out


def paired(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Median, min and max of the per-repetition ratios a_i / b_i (the two ran within one repetition)."""
    q = [x / y for x, y in zip(a, b)]
    return statistics.median(q), min(q), max(q)


# ---------------------------------------------------------------------------------------------- processes


def log_rates(log: Path) -> dict[str, Any]:
    """steps/s from a run's log.csv: from the first logged row (warm-up excluded) to the last, and per interval."""
    with log.open() as f:
        rows = [(int(r["step"]), float(r["seconds"])) for r in csv.DictReader(f)]
    if len(rows) < 2:  # too slow for two rows: from the start, warm-up included
        rows.insert(0, (0, 0.0))
    (s0, t0), (s1, t1) = rows[0], rows[-1]
    per = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(rows, rows[1:]) if b[1] > a[1]]
    return {"rate": (s1 - s0) / (t1 - t0), "min": min(per), "max": max(per), "steps": s1 - s0}


def cli_run(spec: str, batch: int, seconds: float, nproc: int, work: Path) -> dict[str, Any]:
    """One ``difflab train`` run (1 process with 2 threads, or ``--nproc 2`` with 1 thread each) and its rates."""
    cfg = work / "config.json"
    cfg.write_text(json.dumps({"schedule": SCHEDULE, "log_every": 5, "checkpoint_every": 10**6, "sample_steps": 1}))
    out = Path(tempfile.mkdtemp(dir=work)) / "run"
    cmd = [sys.executable, "-m", "difflab", "train", "--data", spec, "--out", str(out), "--minutes", str(seconds / 60),
           "--batch-size", str(batch), "--config", str(cfg), "--quiet", "--threads", str(2 // nproc), "--recipe", "ddpm"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=work)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    r = log_rates(out / "log.csv")
    r["wall_s"] = time.perf_counter() - t0
    shutil.rmtree(out.parent, ignore_errors=True)
    return r


def measure_processes(cases: list[str], seconds: float, reps: int, work: Path) -> dict[tuple[str, int], Any]:
    """1 process x 2 threads against 2 gloo processes x 1 thread at the same global batch, runs alternating."""
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for i, case in enumerate(cases):
        spec, batch = CASES[case]
        for rep in range(reps):
            for nproc in ((1, 2) if (i + rep) % 2 == 0 else (2, 1)):
                r = cli_run(spec, batch, seconds, nproc, work)
                out.setdefault((case, nproc), []).append(r)
                print(f"{case}: {nproc} process(es): {r['rate']:.2f} steps/s ({r['wall_s']:.0f} s wall)", flush=True)
    return out


# ---------------------------------------------------------------------------------------------- precision


def loss_curves(spec: str, batch: int, steps: int, work: Path) -> dict[str, Any]:
    """``difflab train --precision fp32`` and ``--precision bf16`` with the same seed (same batches, t, noise and
    dropout), run side by side with one thread each (one core each)."""
    cfg = work / "curve.json"
    cfg.write_text(json.dumps({"schedule": SCHEDULE, "log_every": 10, "checkpoint_every": 10**6, "sample_steps": 1}))
    procs = {}
    for precision in ("fp32", "bf16"):
        run = work / f"curve-{precision}"
        shutil.rmtree(run, ignore_errors=True)
        cmd = [sys.executable, "-m", "difflab", "train", "--data", spec, "--out", str(run), "--steps", str(steps),
               "--batch-size", str(batch), "--config", str(cfg), "--precision", precision, "--threads", "1", "--quiet",
               "--recipe", "ddpm"]
        procs[precision] = (run, cmd, subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                       text=True))
    out: dict[str, Any] = {}
    for precision, (run, cmd, p) in procs.items():
        stdout, stderr = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{stderr[-3000:]}")
        with (run / "log.csv").open() as f:
            rows = list(csv.DictReader(f))
        out[precision] = {"step": [int(r["step"]) for r in rows], "loss": [float(r["loss"]) for r in rows],
                          **log_rates(run / "log.csv")}
        print(f"loss curve {precision}: {stdout.strip()}", flush=True)
    return out


def final_window(curves: dict[str, Any], window: int) -> dict[str, float]:
    """Means over the last ``window`` steps and the paired bf16 - fp32 difference with its standard error."""
    steps = curves["fp32"]["step"]
    keep = [i for i, s in enumerate(steps) if s > steps[-1] - window]
    a = [curves["fp32"]["loss"][i] for i in keep]
    b = [curves["bf16"]["loss"][i] for i in keep]
    d = [y - x for x, y in zip(a, b)]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return {"fp32": statistics.fmean(a), "bf16": statistics.fmean(b), "diff": statistics.fmean(d), "se": se,
            "rows": len(keep), "from": steps[keep[0]] - 10 + 1, "to": steps[-1]}


# ---------------------------------------------------------------------------------------------- threads and cores

THREAD_SETTINGS = ((1, 1), (2, 1))  # (torch threads, cores the process may run on)


def child_threads(case: str, precision: str, steps: int) -> None:
    """Wall and CPU seconds per difflab training step in this (affinity-restricted) process."""
    data = load(CASES[case][0], "train")
    c = DifflabEngine(data, CASES[case][1], precision)
    c.run(1)
    cpu = time.process_time()
    n, seconds = c.run(steps)
    print(json.dumps({"wall_s": seconds / n, "cpu_s": (time.process_time() - cpu) / n, "steps": n}))


def thread_check(cases: list[str], steps: int) -> dict[str, Any]:
    """fp32 and bf16 steps with 1 thread on 1 core and with 2 threads sharing 1 core (what another busy process
    leaves a 2-thread job), each in a fresh process pinned with sched_setaffinity."""
    out: dict[str, Any] = {"rows": []}
    for case in cases:
        for threads, cores in THREAD_SETTINGS:
            for precision in ("fp32", "bf16"):
                cmd = [sys.executable, __file__, "--child-threads", case, precision, "--threads", str(threads),
                       "--cores", str(cores), "--mem-steps", str(steps)]
                r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True)
                               .stdout.strip().splitlines()[-1])
                out["rows"].append({"case": case, "threads": threads, "cores": cores, "precision": precision, **r})
                print(f"{case}: {threads} thread(s) on {cores} core(s), {precision}: {r['wall_s']:.2f} s/step", flush=True)
    return out


# ---------------------------------------------------------------------------------------------- memory


def child_memory(label: str, case: str, steps: int) -> None:
    """Peak RSS of a fresh process: after imports and data, and after ``steps`` fp32 training steps."""
    import diffusers  # noqa: F401  (both children import the same libraries, so baselines compare)

    data = load(CASES[case][0], "train")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c = (DifflabEngine if label == "difflab" else DiffusersLoop)(data, CASES[case][1], "fp32")
    c.run(steps)
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"baseline_kb": rss0, "peak_kb": rss1}))


def measure_memory(label: str, case: str, steps: int, threads: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", label, case, "--threads", str(threads), "--mem-steps", str(steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    r = json.loads(out)
    return {"peak_mb": r["peak_kb"] / 1024, "train_mb": (r["peak_kb"] - r["baseline_kb"]) / 1024}


# ---------------------------------------------------------------------------------------------- figures


def plot(tp: dict, procs: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(tp)
    fig, axes = plt.subplots(1, len(cases) + 1, figsize=(4.6 * (len(cases) + 1), 4.0))
    w = 0.38
    for ax, case in zip(axes, cases):
        variants = [v for v in VARIANTS if ("difflab", v) in tp[case]]
        for i, lib in enumerate(LIBS):
            xs = [j + (i - 0.5) * w for j in range(len(variants))]
            rs = [tp[case][lib, v] for v in variants]
            ax.bar(xs, [r["median"] for r in rs], w, label=lib)
            ax.errorbar(xs, [r["median"] for r in rs], fmt="none", ecolor="k", capsize=3,
                        yerr=[[r["median"] - min(r["rates"]) for r in rs], [max(r["rates"]) - r["median"] for r in rs]])
        for j, v in enumerate(variants):
            q = paired(tp[case]["difflab", v]["rates"], tp[case]["diffusers", v]["rates"])[0]
            top = max(max(tp[case][lib, v]["rates"]) for lib in LIBS)
            ax.text(j, top * 1.02, f"{q:.2f}x", ha="center", fontsize=8)
        ax.set_xticks(range(len(variants)))
        ax.set_xticklabels(variants)
        ax.set_ylim(0, 1.3 * max(max(r["rates"]) for r in tp[case].values()))
        ax.set_ylabel("training steps/s")
        ax.set_title(f"{case}, batch {CASES[case][1]}, 2 threads\n(median, min-max; label: difflab / diffusers)",
                     fontsize=9)
        ax.legend(fontsize=8, loc="upper center", ncol=2)
    ax = axes[-1]
    pcases = sorted({c for c, _ in procs}, key=cases.index)
    for i, n in enumerate((1, 2)):
        xs = [j + (i - 0.5) * w for j in range(len(pcases))]
        rates = [[r["rate"] * CASES[c][1] for r in procs[c, n]] for c in pcases]
        ax.bar(xs, [statistics.median(r) for r in rates], w,
               label="1 process x 2 threads" if n == 1 else "2 processes (gloo) x 1 thread")
    ax.set_xticks(range(len(pcases)))
    ax.set_xticklabels(pcases)
    ax.set_ylabel("training samples/s")
    ax.set_title("difflab train, same global batch (median over runs)", fontsize=9)
    ax.set_ylim(0, 1.3 * max(r["rate"] * CASES[c][1] for (c, _), rs in procs.items() for r in rs))
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(curves: dict, fw: dict, case: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 3.8))
    for p in ("fp32", "bf16"):
        a0.plot(curves[p]["step"], curves[p]["loss"], label=f"{p} (final-window mean {fw[p]:.4f})", lw=1.2)
    a0.axvspan(fw["from"], fw["to"], color="0.9", zorder=0)
    a0.set_yscale("log")
    a0.set_xlabel("step")
    a0.set_ylabel("L_simple (mean over 10 steps)")
    a0.set_title(f"{case}, batch {CASES[case][1]}: same seed, batches and noise", fontsize=9)
    a0.legend(fontsize=8)
    d = [b - a for a, b in zip(curves["fp32"]["loss"], curves["bf16"]["loss"])]
    a1.plot(curves["fp32"]["step"], d, color="C2", lw=1.2)
    a1.axhline(0, color="k", lw=0.6)
    a1.axvspan(fw["from"], fw["to"], color="0.9", zorder=0)
    a1.set_xlabel("step")
    a1.set_ylabel("loss bf16 - loss fp32")
    a1.set_title(f"paired difference; final window {fw['diff']:+.2e} +- {fw['se']:.1e} (s.e.)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- report


def verdict(q: tuple[float, float, float]) -> str:
    """Whether difflab is at least as fast: by the median per-repetition ratio and its spread."""
    med, lo, hi = q
    if lo >= 1.0:
        return "met"
    if med >= 1.0:
        return "met by the median, not in every repetition"
    if hi >= 1.0:
        return "not met by the median, met in some repetitions"
    return "not met"


def summary(res: dict) -> list[str]:
    """The headline findings, computed from the measurements."""
    tp, out = res["tp"], []
    for v in VARIANTS:
        parts = []
        for case, r in tp.items():
            if ("difflab", v) in r:
                q = paired(r["difflab", v]["rates"], r["diffusers", v]["rates"])
                collapsed = v != "fp32" and all(paired(r[lib, v]["rates"], r[lib, "fp32"]["rates"])[0] < 0.5
                                                for lib in LIBS)
                parts.append(f"{case} {q[0]:.2f}x, {verdict(q)}" + (
                    " (both libraries' steps collapsed to a few percent of fp32 here, see *bf16 and threads*: this "
                    "ratio is scheduling noise)" if collapsed else ""))
        if parts:
            out.append(f"- difflab / diffusers steps/s, {v}: " + "; ".join(parts) + ".")
    for v in ("bf16", "compile"):
        parts = [f"{case} {lib} {paired(r[lib, v]['rates'], r[lib, 'fp32']['rates'])[0]:.2f}x"
                 for case, r in tp.items() for lib in LIBS if (lib, v) in r]
        if parts:
            extra = ""
            if v == "compile":
                extra = " after a compile of " + ", ".join(
                    f"{r[lib, v]['first_step_s']:.0f} s ({case} {lib})" for case, r in tp.items() for lib in LIBS
                    if (lib, v) in r)
            out.append(f"- {v} against fp32 on this CPU (same library): " + ", ".join(parts) + extra + ".")
    out.append("- the engine against the pre-engine step (same network): " + ", ".join(
        f"{case} {paired(r['difflab', 'fp32']['rates'], r[OLD, 'fp32']['rates'])[0]:.2f}x" for case, r in tp.items())
        + ".")
    procs = res["procs"]
    cases = [c for c in tp if (c, 1) in procs and (c, 2) in procs]
    if cases:
        out.append("- 2 gloo processes x 1 thread against 1 process x 2 threads, same global batch (samples/s): " + ", ".join(
            f"{c} {statistics.median(r['rate'] for r in procs[c, 2]) / statistics.median(r['rate'] for r in procs[c, 1]):.2f}x"
            for c in cases) + ".")
    rows = res.get("threads", {}).get("rows", [])
    if rows:
        ratio = {(r["case"], r["threads"], r["precision"]): r["wall_s"] for r in rows}
        out.append("- bf16 / fp32 step time with 1 thread on 1 core against 2 threads sharing 1 core: " + ", ".join(
            f"{c} {ratio[c, 1, 'bf16'] / ratio[c, 1, 'fp32']:.2f}x against {ratio[c, 2, 'bf16'] / ratio[c, 2, 'fp32']:.1f}x"
            for c in dict.fromkeys(r["case"] for r in rows)) + ".")
    if res["fw"]:
        fw = res["fw"]
        out.append(f"- bf16 against fp32, final-window mean loss: {fw['bf16']:.4f} against {fw['fp32']:.4f} "
                   f"(paired difference {fw['diff']:+.2e} +- {fw['se']:.1e}, {100 * fw['diff'] / fw['fp32']:+.3f}%).")
    return out


def bf16_note(res: dict) -> str:
    """What bf16 did on this CPU: the 2-thread throughput runs, the 1-thread loss-curve runs, the pinned check."""
    tp, curves, rows = res["tp"], res["curves"], res.get("threads", {}).get("rows", [])
    two = [f"{paired(r['difflab', 'bf16']['rates'], r['difflab', 'fp32']['rates'])[0]:.2f}x on {case}"
           for case, r in tp.items() if ("difflab", "bf16") in r]
    note = ("Here a bf16 step with 2 threads ran at " + ", ".join(two) + " the fp32 speed") if two else ""
    if curves:
        note += (f"; with 1 thread (the two loss-curve runs) at {curves['bf16']['rate'] / curves['fp32']['rate']:.2f}x")
    if rows:
        note += (". Two threads sharing one core, which is what a busy neighbour leaves a 2-thread job, make bf16 "
                 "collapse and not fp32 (the pinned check above; its CPU time equals its wall time while the step "
                 "takes tens of times longer): oneDNN's AMX bf16 kernels wait for each other by spinning, and a "
                 "spinning thread holds the core its partner needs. On a shared CPU, run bf16 with one thread per "
                 "free core (`--threads`)")
    return note + ". Measure on the machine before switching."


def compile_note(res: dict) -> str:
    """What torch.compile did on this CPU."""
    qs = [paired(r[lib, "compile"]["rates"], r[lib, "fp32"]["rates"])[0] for r in res["tp"].values() for lib in LIBS
          if (lib, "compile") in r]
    first = [r[lib, "compile"]["first_step_s"] for r in res["tp"].values() for lib in LIBS if (lib, "compile") in r]
    if not qs:
        return ""
    verdict_ = ": not worth it for these CPU runs." if max(qs) < 1.1 else "."
    return (f"Here it changed the steps/s by {min(qs):.2f}-{max(qs):.2f}x (both libraries, both cases) for "
            f"{min(first):.0f}-{max(first):.0f} s of compiling{verdict_}")


def procs_note(res: dict) -> str:
    """What a second process did on this CPU."""
    p = res["procs"]
    cases = [c for c in res["tp"] if (c, 1) in p and (c, 2) in p]
    if not cases:
        return ""
    med = lambda c, n: statistics.median(r["rate"] for r in p[c, n])  # noqa: E731
    return ("On these 2 cores, 2 processes x 1 thread against 1 process x 2 threads gave " + ", ".join(
        f"{med(c, 2) / med(c, 1):.2f}x the samples/s on {c}" for c in cases) + " (table above): compare on the "
        "machine before choosing.")


def thread_table(res: dict) -> list[str]:
    """The pinned threads-and-cores check, with the in-process 2-thread figures for reference."""
    t = res.get("threads", {})
    if not t.get("rows"):
        return []
    when = (f"measured {t['date']} with `{t['command']}`, load before / after: `{t['uptime'][0]}` / "
            f"`{t['uptime'][1]}`" if "command" in t else "measured in the run above")
    L = ["", "## bf16 and threads: 1 thread against 2 threads on one core", "",
         "Each row is a fresh process restricted to the given number of cores (`os.sched_setaffinity`) running the "
         "difflab engine with `torch.set_num_threads` threads (one warm-up step, then "
         f"{t['rows'][0].get('steps', 'the')} timed steps; {when}). The third row of a case holds the 2-thread, "
         "2-core figures of the interleaved table above (the second core shared with whatever else ran).", "",
         "| case | threads x cores | fp32 s/step | bf16 s/step | bf16 / fp32 time | CPU s/step fp32, bf16 |",
         "|---|---|---|---|---|---|"]
    for case in dict.fromkeys(r["case"] for r in t["rows"]):
        for threads, cores in THREAD_SETTINGS:
            a, b = ({x["precision"]: x for x in t["rows"] if x["case"] == case and x["threads"] == threads
                     and x["cores"] == cores}[p] for p in ("fp32", "bf16"))
            L.append(f"| {case} | {threads} x {cores} | {a['wall_s']:.2f} | {b['wall_s']:.2f} | "
                     f"**{b['wall_s'] / a['wall_s']:.2f}x** | {a['cpu_s']:.2f}, {b['cpu_s']:.2f} |")
        r = res["tp"].get(case, {})
        if ("difflab", "bf16") in r:
            a, b = r["difflab", "fp32"], r["difflab", "bf16"]
            L.append(f"| {case} | 2 x 2 (table above) | {1 / a['median']:.2f} | {1 / b['median']:.2f} | "
                     f"{a['median'] / b['median']:.2f}x | {a['cpu_s']:.2f}, {b['cpu_s']:.2f} |")
    return L


def write_report(res: dict, args: argparse.Namespace, path: Path) -> None:
    import diffusers

    tp, procs, curves, fw, mem = res["tp"], res["procs"], res["curves"], res["fw"], res["mem"]
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    amx = "AMX bf16" if "amx_bf16" in flags else ("AVX-512 bf16" if "avx512_bf16" in flags else "no bf16 units")
    L = [
        "# Training throughput: difflab's engine against a diffusers training loop",
        "",
        f"Measured {res['date']:%Y-%m-%d %H:%M} UTC with `{args.command}` ({res['seconds'] / 60:.1f} min).",
        "",
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, Python {platform.python_version()}, "
        f"CPU: {os.cpu_count()} cores ({platform.processor() or platform.machine()}, {amx}), no GPU; "
        f"`torch.set_num_threads({args.threads})` for the in-process contenders, `OMP_WAIT_POLICY=PASSIVE`.",
        "",
        f"Machine load (`uptime`) before: `{res['uptime'][0]}`",
        f"after: `{res['uptime'][1]}`.",
        "The cores were shared with other processes during the run, so absolute figures are lower than on an idle "
        "machine and vary; the **ratios** are the robust numbers: every repetition of a case runs all its "
        "contenders back to back in one process (in a rotating order), and a ratio is taken within each "
        "repetition before the median over repetitions.",
        "",
        "## Summary",
        "",
        *summary(res),
        "",
        "## What is measured",
        "",
        "One step = draw a batch, L_simple loss ||eps - eps_theta(x_t, t)||^2 (Ho et al. 2020, Alg. 1) at random t "
        "of a linear 1000-step schedule, backward, gradient clipping at norm 1, AdamW (lr 1e-3 after a 200-step "
        "warm-up), EMA update (decay 0.999), loss read back as a float. Both networks have the same architecture "
        "(`diffusers_kwargs` in the script) and about the same parameter count; both read the same batches of the "
        "same data set (`digits` train split, 1,497 images; MNIST train, 60,000 images).",
        "",
        "- **difflab**: `difflab.training.fit(DiffusionFamily(cfg, data), len(data), cfg, None)` (the engine behind "
        "`difflab train`); steps/s from `FitResult.seconds` (the step loop, without set-up). bf16 is "
        "`TrainConfig(precision=\"bf16\")`, compile is `TrainConfig(compile=True)`.",
        "- **diffusers**: the loop a diffusers user writes, following its unconditional training example: "
        "`UNet2DModel`, `DDPMScheduler(beta_schedule=\"linear\").add_noise`, `F.mse_loss`, "
        "`get_scheduler(\"constant_with_warmup\")`, `EMAModel(foreach=True)`; bf16 wraps the model call in "
        "`torch.autocast(\"cpu\", dtype=torch.bfloat16)` (what accelerate's `mixed_precision=\"bf16\"` does on a CPU), "
        "compile is `torch.compile(model)` (default mode; `mode=\"reduce-overhead\"` means CUDA graphs and does "
        "not apply to a CPU).",
        f"- **{OLD}**: difflab's `train_step` from before the engine rewrite (batch, loss, backward, clip, AdamW, "
        "EMA) around the same network, to isolate what the engine itself costs.",
        "",
        f"Throughput: {args.reps} interleaved repetitions of "
        f"{' / '.join(f'{n} ({c.split()[0]})' for c, n in zip(CASES, args.steps) if c in tp)} steps per contender, "
        f"or fewer once a repetition has taken {args.budget:g} s (at least one step; the steps actually timed are "
        f"in the table), after {args.warmup} warm-up step(s). Compile time is the wall time of the first compiled training step (dynamo "
        "tracing, AOT autograd of forward and backward, inductor's C++ code generation and build) with an empty "
        "inductor cache; it is excluded from steps/s.",
        "",
        "## fp32, bf16 and torch.compile",
        "",
        "| case | batch | variant | difflab steps/s (median, best) | diffusers steps/s (median, best) | "
        "difflab / diffusers (median, min-max) | target: difflab >= diffusers | CPU s per step (difflab, diffusers) "
        "| steps timed (difflab, diffusers) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case, r in tp.items():
        for v in VARIANTS:
            if ("difflab", v) not in r:
                continue
            a, b = r["difflab", v], r["diffusers", v]
            q = paired(a["rates"], b["rates"])
            L.append(f"| {case} | {CASES[case][1]} | {v} | {a['median']:.2f}, {a['best']:.2f} | "
                     f"{b['median']:.2f}, {b['best']:.2f} | **{q[0]:.2f}x**, {q[1]:.2f}-{q[2]:.2f} | {verdict(q)} | "
                     f"{a['cpu_s']:.2f}, {b['cpu_s']:.2f} | {sum(a['steps'])}, {sum(b['steps'])} |")
    L += ["", "*CPU s per step* is the process's CPU time (all threads) per step, median over repetitions: with 2 "
          "threads it is at most 2x the wall time of a step; well above the fp32 figure for the same work it "
          "means threads spinning while they wait, not arithmetic."]
    L += ["", "Speed-up of each variant over the same library's fp32 (median of per-repetition ratios), compile time, "
          "and the steps after which the compile has paid for itself (compile time / time saved per step):", "",
          "| case | library | parameters | bf16 / fp32 | compile / fp32 | compile time (s) | compile pays off after |",
          "|---|---|---|---|---|---|---|"]
    for case, r in tp.items():
        for lib in LIBS:
            base = r[lib, "fp32"]
            cells = []
            for v in ("bf16", "compile"):
                cells.append(f"{paired(r[lib, v]['rates'], base['rates'])[0]:.2f}x" if (lib, v) in r else "-")
            first, pay = "-", "-"
            if (lib, "compile") in r:
                c = r[lib, "compile"]
                first = f"{c['first_step_s']:.0f}"
                q = paired(c["rates"], base["rates"])
                saved = (1 - 1 / q[0]) / base["median"]  # seconds saved per step at the fp32 median
                pay = (f"{c['first_step_s'] / saved:,.0f} steps" if q[1] > 1 else
                       f"no measurable gain (per-repetition ratios {q[1]:.2f}-{q[2]:.2f})")
            L.append(f"| {case} | {lib} | {base['params']:,} | {cells[0]} | {cells[1]} | {first} | {pay} |")
    for case, ops in res.get("ops", {}).items():
        top = sorted(ops["bf16"], key=ops["bf16"].get, reverse=True)[:6]
        L += ["", f"Where a difflab step's time goes on {case} (torch.profiler, self CPU milliseconds per step, the "
              "six largest aten ops of the bf16 step):", "", "| op | fp32 | bf16 |", "|---|---|---|"]
        L += [f"| `{k}` | {ops['fp32'].get(k, 0):.1f} | {ops['bf16'][k]:.1f} |" for k in top]
        L.append(f"| all aten ops | {sum(ops['fp32'].values()):.1f} | {sum(ops['bf16'].values()):.1f} |")
    L += ["", "## The engine against the step it replaced", "",
          "| case | engine steps/s (median) | pre-engine step steps/s (median) | engine / pre-engine (median, min-max) "
          "| CPU s per step, engine / pre-engine |",
          "|---|---|---|---|---|"]
    for case, r in tp.items():
        a, b = r["difflab", "fp32"], r[OLD, "fp32"]
        q = paired(a["rates"], b["rates"])
        L.append(f"| {case} | {a['median']:.2f} | {b['median']:.2f} | {q[0]:.2f}x, {q[1]:.2f}-{q[2]:.2f} "
                 f"| {a['cpu_s']:.3f} / {b['cpu_s']:.3f} = {a['cpu_s'] / b['cpu_s']:.2f} |")
    if procs:
        L += ["", "## One process against two (gloo)", "",
              f"`difflab train` itself, alternating runs ({args.proc_reps} per setting and case): one process with "
              "`--threads 2`, or `--nproc 2 --threads 1` (torchrun, gloo, DistributedDataParallel; each process takes "
              f"half of the global batch), each with a {args.proc_seconds:g} s training budget (`--minutes`). Steps/s "
              "from the run's "
              "`log.csv` between its first and last row (the first 5 steps, start-up and the final sample grid "
              "excluded); samples/s = steps/s x global batch; the range is over the 5-step logging intervals.", "",
              "| case | global batch | steps timed | processes x threads | steps/s (range) | samples/s | 2 processes / 1 |",
              "|---|---|---|---|---|---|---|"]
        for case in [c for c in tp if (c, 1) in procs]:
            one = statistics.median(r["rate"] for r in procs[case, 1])
            for n in (1, 2):
                rs = procs[case, n]
                rate = statistics.median(r["rate"] for r in rs)
                rng = f"{min(r['min'] for r in rs):.2f}-{max(r['max'] for r in rs):.2f}"
                L.append(f"| {case} | {CASES[case][1]} | {rs[0]['steps']} | {n} x {2 // n} | {rate:.2f} ({rng}) | "
                         f"{rate * CASES[case][1]:.0f} | {'' if n == 1 else f'**{rate / one:.2f}x**'} |")
    if curves:
        c = args.curve_case
        L += ["", "## bf16 against fp32: the loss curve", "",
              f"`difflab train --data {CASES[c][0]} --batch-size {CASES[c][1]} --steps {args.curve_steps} "
              "--precision fp32` and the same with `--precision bf16` (the recipe above, `--threads 1`, the two runs "
              "side by side on the two cores), same seed: the same batches, t, noise and dropout masks, so the "
              "difference between the curves is the precision's alone. Final window = the "
              f"last {args.curve_window} steps (steps {fw['from']}-{fw['to']}, {fw['rows']} logged means of 10 steps).",
              "",
              "| precision | final-window mean loss | steps/s of the run (1 thread) |", "|---|---|---|",
              f"| fp32 | {fw['fp32']:.4f} | {curves['fp32']['rate']:.2f} |",
              f"| bf16 | {fw['bf16']:.4f} | {curves['bf16']['rate']:.2f} |",
              "",
              f"bf16 - fp32 over the final window: {fw['diff']:+.2e} +- {fw['se']:.1e} (standard error of the paired "
              f"10-step means), {100 * fw['diff'] / fw['fp32']:+.3f}% of the fp32 loss.",
              "", "![loss curves](throughput_precision.png)"]
    L += thread_table(res)
    if mem:
        L += ["", "## Memory", "",
              f"Each library's fp32 loop runs {args.mem_steps} steps in a fresh subprocess that imports torch, difflab "
              "and diffusers and loads the data; *peak RSS* is `ru_maxrss` at the end, *training memory* is that "
              "minus the same figure before the model is built (model, EMA, optimiser state, activations, gradients).",
              "", "| case | library | peak RSS (MB) | training memory (MB) |", "|---|---|---|---|"]
        for (case, lib), m in mem.items():
            L.append(f"| {case} | {lib} | {m['peak_mb']:.0f} | {m['train_mb']:.0f} |")
    L += ["", "![throughput](throughput.png)", "",
          "## Where bf16 and compile matter, and how to turn them on", "",
          "- `difflab train --precision bf16` (`TrainConfig(precision=\"bf16\")`): autocast to bfloat16 for "
          "matrix products and convolutions; weights, optimiser state and the loss stay fp32, no loss scaling is "
          "needed. It pays where the hardware has fast bf16 units and the layers are large enough to be bound by "
          "arithmetic: CUDA GPUs from Ampere on (tensor-core bf16 throughput many times the fp32 rate, half the "
          "activation memory), and CPUs with AMX for wide layers and large batches. " + bf16_note(res),
          "- `--precision fp16`: CUDA only, with a gradient scaler (the engine creates one); refused on a CPU.",
          "- `difflab train --compile` (`TrainConfig(compile=True)`): `torch.compile` of the network in place "
          "(checkpoints keep their keys). Compiling costs the time in the table above on every start (less with a "
          "warm inductor cache); it fuses element-wise work, which matters most on a GPU, where each unfused kernel "
          "costs a launch and a trip through memory. Worth it for long runs whose step time it lowers. "
          + compile_note(res),
          "- `difflab train --nproc N` (or `python -m torch.distributed.run --standalone --nproc_per_node N -m "
          "difflab train ...`): N processes, gloo on CPU, NCCL on CUDA, `--batch-size` the global batch; one "
          "process per GPU is the setting it is for. " + procs_note(res), ""]
    path.write_text("\n".join(L))


# ---------------------------------------------------------------------------------------------- raw results


def save_results(res: dict, args: argparse.Namespace, path: Path) -> None:
    """Every measurement and the run's settings as JSON (``--render`` rewrites the page and figures from it)."""
    join = lambda k: "|".join(map(str, k))  # noqa: E731
    d = {"date": res["date"].isoformat(), "uptime": res["uptime"], "seconds": res["seconds"],
         "args": {k: v for k, v in vars(args).items() if k not in ("out", "child", "render")},
         "mem": {join(k): v for k, v in res["mem"].items()},
         "tp": {c: {join(k): v for k, v in r.items()} for c, r in res["tp"].items()},
         "ops": res["ops"], "procs": {join(k): v for k, v in res["procs"].items()},
         "curves": res["curves"], "fw": res["fw"], "threads": res.get("threads", {})}
    path.write_text(json.dumps(d, indent=1, default=str))


def load_results(path: Path) -> tuple[dict, argparse.Namespace]:
    d = json.loads(path.read_text())
    split = lambda k: tuple(k.split("|"))  # noqa: E731
    res = {"date": dt.datetime.fromisoformat(d["date"]), "uptime": d["uptime"], "seconds": d["seconds"],
           "mem": {split(k): v for k, v in d["mem"].items()},
           "tp": {c: {split(k): v for k, v in r.items()} for c, r in d["tp"].items()},
           "ops": d["ops"], "procs": {(k.split("|")[0], int(k.split("|")[1])): v for k, v in d["procs"].items()},
           "curves": d["curves"], "fw": d["fw"], "threads": d.get("threads", {})}
    return res, argparse.Namespace(**d["args"])


def write_outputs(res: dict, args: argparse.Namespace, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_report(res, args, out / "throughput.md")
    plot(res["tp"], res["procs"], out / "throughput.png")
    if res["curves"]:
        plot_curves(res["curves"], res["fw"], args.curve_case, out / "throughput_precision.png")


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke test: digits only, a few steps of each part")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the in-process contenders")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions per contender")
    p.add_argument("--steps", type=int, nargs=2, default=[8, 3], metavar=("DIGITS", "MNIST"),
                   help="training steps per repetition and contender")
    p.add_argument("--budget", type=float, default=5.0,
                   help="seconds after which a contender's repetition stops early (at least one step)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per contender before the repetitions")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile contenders")
    p.add_argument("--proc-reps", type=int, default=1, help="runs per setting in the 1-vs-2-process comparison")
    p.add_argument("--proc-seconds", type=float, default=40.0,
                   help="training budget of each difflab train run in the process comparison (0 skips it)")
    p.add_argument("--curve-case", choices=list(CASES), default="digits 8x8")
    p.add_argument("--curve-steps", type=int, default=400, help="steps of each loss-curve run (0 skips it)")
    p.add_argument("--curve-window", type=int, default=100, help="final window of the loss comparison (steps)")
    p.add_argument("--mem-steps", type=int, default=3, help="training steps in each memory subprocess (0 skips it)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default docs/benchmarks)")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="only rewrite the page and figures from a saved throughput.json (into --out or its folder)")
    p.add_argument("--thread-steps", type=int, default=2,
                   help="timed steps of each pinned process in the threads-and-cores check (0 skips it)")
    p.add_argument("--thread-check-only", action="store_true",
                   help="run only the threads-and-cores check and add it to the saved throughput.json in --out")
    p.add_argument("--child", nargs=2, metavar=("LIB", "CASE"), help=argparse.SUPPRESS)
    p.add_argument("--child-threads", nargs=2, metavar=("CASE", "PRECISION"), help=argparse.SUPPRESS)
    p.add_argument("--cores", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.render:
        res, saved = load_results(args.render)
        write_outputs(res, saved, args.out or args.render.parent)
        return
    torch.set_num_threads(args.threads)
    if args.child_threads:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.cores]))
        child_threads(args.child_threads[0], args.child_threads[1], args.mem_steps)
        return
    if args.child:
        child_memory(args.child[0], args.child[1], args.mem_steps)
        return
    if args.quick:
        args.cases, args.reps, args.steps, args.warmup = ["digits 8x8"], 2, [2, 1], 1
        args.proc_seconds, args.curve_steps, args.curve_window, args.mem_steps = 15.0, 40, 20, 1
        args.thread_steps = 1
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="throughput-quick-")) if args.quick else ROOT / "docs" / "benchmarks"
    if not MNIST_DIR.is_dir() and "MNIST 28x28" in args.cases:
        print(f"no MNIST IDX files in {MNIST_DIR} (set DIFFLAB_MNIST); MNIST skipped", flush=True)
        args.cases = [c for c in args.cases if c != "MNIST 28x28"]
    args.command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    uptime = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    if args.thread_check_only:  # add the check to a saved run and rewrite its page
        res, saved = load_results(args.out / "throughput.json")
        when, before, t0 = dt.datetime.now(dt.timezone.utc), uptime(), time.time()
        res["threads"] = {**thread_check(saved.cases, args.thread_steps), "command": args.command,
                          "date": f"{when:%Y-%m-%d %H:%M} UTC", "uptime": [before, uptime()],
                          "seconds": time.time() - t0}
        save_results(res, saved, args.out / "throughput.json")
        write_outputs(res, saved, args.out)
        return
    res: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc), "uptime": [uptime()]}
    print("before:", res["uptime"][0], flush=True)
    t0 = time.time()
    work = Path(tempfile.mkdtemp(prefix="throughput-"))
    try:
        res["mem"] = {(c, lib): measure_memory(lib, c, args.mem_steps, args.threads)
                      for c in args.cases for lib in LIBS} if args.mem_steps else {}
        if res["mem"]:
            print("memory:", {f"{c}/{lib}": round(v["train_mb"]) for (c, lib), v in res["mem"].items()}, flush=True)
        variants = tuple(v for v in VARIANTS if not (args.no_compile and v == "compile"))
        per_rep = dict(zip(CASES, args.steps))
        res["tp"] = {c: measure_throughput(c, load(CASES[c][0], "train"), variants, args.reps, per_rep[c], args.warmup,
                                           args.budget) for c in args.cases}
        res["ops"] = {c: r.pop("ops") for c, r in res["tp"].items() if "ops" in r}
        res["procs"] = (measure_processes(args.cases, args.proc_seconds, args.proc_reps, work)
                        if args.proc_seconds else {})
        res["curves"], res["fw"] = {}, {}
        if args.curve_steps:
            spec, batch = CASES[args.curve_case]
            res["curves"] = loss_curves(spec, batch, args.curve_steps, work)
            res["fw"] = final_window(res["curves"], args.curve_window)
        res["threads"] = thread_check(args.cases, args.thread_steps) if args.thread_steps else {}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["seconds"] = time.time() - t0
    res["uptime"].append(uptime())
    print("after:", res["uptime"][1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    save_results(res, args, args.out / "throughput.json")
    write_outputs(res, args, args.out)
    print(f"wrote {args.out / 'throughput.md'} ({res['seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
