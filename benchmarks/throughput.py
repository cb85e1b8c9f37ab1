"""Training throughput and peak memory of difflab's default U-Nets against diffusers' UNet2DModel.

Run from the repository root:  python benchmarks/throughput.py
Writes docs/benchmarks/throughput.md and docs/benchmarks/throughput.png.  diffusers is a benchmark-only
dependency (``pip install -e .[bench]``).

Both networks get the same architecture where the two libraries allow it (widths, ResNet blocks per level,
attention levels and heads, GroupNorm groups, scale-shift time injection, dropout), hence about the same
parameter count; they train with the same batch, data, noise schedule, loss (L_simple, Ho et al. 2020),
AdamW settings and thread count.  Repetitions are interleaved so that drifting background load hits both.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from difflab.models.unet import UNet, UNetConfig, unet_digits, unet_mnist  # noqa: E402
from difflab.schedules import get as get_schedule  # noqa: E402

CASES = {"digits 8x8": (unet_digits, 8, 128), "MNIST 28x28": (unet_mnist, 28, 64)}  # preset, image side, batch
LIBS = ("difflab", "diffusers")


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


def build(lib: str, case: str) -> tuple[nn.Module, Callable[[torch.Tensor, torch.Tensor], torch.Tensor], int]:
    """(model, forward(x, t) -> eps prediction, batch size) for one library and one case."""
    preset, size, batch = CASES[case]
    cfg = preset()
    torch.manual_seed(0)
    if lib == "difflab":
        model: nn.Module = UNet(cfg)
        return model, model, batch
    from diffusers import UNet2DModel
    model = UNet2DModel(**diffusers_kwargs(cfg, size))
    return model, lambda x, t: model(x, t, return_dict=False)[0], batch


def make_step(lib: str, case: str) -> tuple[Callable[[], None], int]:
    """A closure doing one L_simple training step (forward, backward, AdamW); also returns the parameter count."""
    model, fwd, batch = build(lib, case)
    size = CASES[case][1]
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.0)
    abar = get_schedule("linear", T=1000).alphas_cumprod.float()
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(batch, 1, size, size, generator=g) * 2 - 1

    def step() -> None:
        t = torch.randint(0, 1000, (batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = (fwd(xt, t) - eps).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, sum(p.numel() for p in model.parameters())


def child_memory(lib: str, case: str, steps: int) -> None:
    """Peak RSS of a fresh process: after imports/model/optimiser set-up, and after ``steps`` training steps."""
    import diffusers  # noqa: F401  (both children import the same libraries, so baselines compare)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step, _ = make_step(lib, case)
    for _ in range(steps):
        step()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"baseline_kb": rss0, "peak_kb": rss1}))


def measure_memory(lib: str, case: str, steps: int, threads: int) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", lib, case, "--threads", str(threads), "--mem-steps", str(steps)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    r = json.loads(out)
    return {"peak_mb": r["peak_kb"] / 1024, "train_mb": (r["peak_kb"] - r["baseline_kb"]) / 1024}


def measure_throughput(reps: int, steps: int, warmup: int, threads: int) -> dict[tuple[str, str], dict[str, Any]]:
    """Median steps/s per (case, lib) at one thread count, repetitions interleaved across all four models."""
    torch.set_num_threads(threads)
    runs = {}
    for case in CASES:
        for lib in LIBS:
            step, n_params = make_step(lib, case)
            for _ in range(warmup):
                step()
            runs[case, lib] = {"step": step, "params": n_params, "rates": []}
    for rep in range(reps):
        for key, r in runs.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                r["step"]()
            r["rates"].append(steps / (time.perf_counter() - t0))
        print(f"{threads} thread(s), rep {rep + 1}/{reps}: " + ", ".join(f"{c}/{l} {r['rates'][-1]:.2f}" for (c, l), r in runs.items()),
              flush=True)
    for r in runs.values():
        del r["step"]
        r["median"] = statistics.median(r["rates"])
    return runs


def plot(runs: dict, mem: dict, threads: list[int], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 1 + len(threads), figsize=(4.2 * (1 + len(threads)), 3.8))
    cases = list(CASES)
    w = 0.38
    for i, lib in enumerate(LIBS):
        xs = [j + (i - 0.5) * w for j in range(len(cases))]
        for ax, n in zip(axes, threads):
            r = [runs[c, lib, n] for c in cases]
            ax.bar(xs, [x["median"] for x in r], w, label=lib)
            ax.errorbar(xs, [x["median"] for x in r], fmt="none", ecolor="k", capsize=3,
                        yerr=[[x["median"] - min(x["rates"]) for x in r], [max(x["rates"]) - x["median"] for x in r]])
        axes[-1].bar(xs, [mem[c, lib]["train_mb"] for c in cases], w, label=lib)
    titles = [f"training steps/s, {n} thread(s)\n(median, min-max bars)" for n in threads]
    for ax, title in zip(axes, titles + ["training memory above imports (MB)"]):
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([f"{c}\nbatch {CASES[c][2]}" for c in cases])
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write_report(runs: dict, mem: dict, args: argparse.Namespace, load: tuple, path: Path, seconds: float) -> None:
    import diffusers
    lines = [
        "# Training throughput: difflab U-Net vs diffusers UNet2DModel",
        "",
        f"Measured {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC with `{args.command}` "
        f"({seconds / 60:.1f} min).",
        "",
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, Python {platform.python_version()}, "
        f"`torch.set_num_threads(n)` for n in {args.threads} (both libraries at the same n), CPU: {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), no GPU.",
        f"Load average before / after: {load[0]:.2f} / {load[1]:.2f}. The cores may be shared with other "
        "processes, so absolute figures vary between runs; the ratio is the robust number because the "
        "repetitions of all four models are interleaved.",
        "",
        "One step = forward + backward + AdamW step of the L_simple loss ||eps - eps_theta(x_t, t)||^2 (Ho et al. "
        "2020) on a linear 1000-step schedule, random t, same data and batch for both libraries. Both networks "
        "have the same architecture (widths, ResNet blocks per level, attention levels and heads, GroupNorm "
        "groups, scale-shift time injection, dropout 0.1); see `diffusers_kwargs` in the script.",
        f"Throughput: median and best over {args.reps} interleaved repetitions of {args.steps} steps each, "
        f"after {args.warmup} warm-up steps. When other processes compete for the cores, the best repetition is "
        "the closer estimate of the uncontended speed.",
        f"Memory: each configuration runs {args.mem_steps} training steps ({args.threads[0]} thread(s)) in a fresh "
        "subprocess that imports torch, "
        "difflab and diffusers; *peak RSS* is `resource.getrusage(RUSAGE_SELF).ru_maxrss` at the end, "
        "*training memory* is that peak minus the same figure taken right after the imports (model, optimiser "
        "state, activations and gradients).",
        "",
        "| case | batch | threads | library | parameters | steps/s (median) | steps/s (best) | difflab / diffusers (median, best) "
        "| peak RSS (MB) | training memory (MB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, n in ((c, n) for c in CASES for n in args.threads):
        a, b = runs[case, "difflab", n], runs[case, "diffusers", n]
        ratios = f"{a['median'] / b['median']:.2f}x, {max(a['rates']) / max(b['rates']):.2f}x"
        for lib in LIBS:
            r, m = runs[case, lib, n], mem[case, lib]
            lines.append(f"| {case} | {CASES[case][2]} | {n} | {lib} | {r['params']:,} | {r['median']:.2f} | "
                         f"{max(r['rates']):.2f} | {ratios if lib == 'difflab' else ''} "
                         f"| {m['peak_mb']:.0f} | {m['train_mb']:.0f} |")
    lines += ["", "![throughput](throughput.png)", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="thread counts to measure")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions per model")
    p.add_argument("--steps", type=int, default=3, help="training steps per repetition")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--mem-steps", type=int, default=3, help="training steps in each memory subprocess")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    p.add_argument("--child", nargs=2, metavar=("LIB", "CASE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads[0])
    if args.child:
        child_memory(args.child[0], args.child[1], args.mem_steps)
        return
    args.command = "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    t0, load0 = time.time(), os.getloadavg()[0]
    mem = {(c, lib): measure_memory(lib, c, args.mem_steps, args.threads[0]) for c in CASES for lib in LIBS}
    print("memory:", {f"{c}/{lib}": round(v["train_mb"]) for (c, lib), v in mem.items()}, flush=True)
    runs = {(c, lib, n): r for n in args.threads
            for (c, lib), r in measure_throughput(args.reps, args.steps, args.warmup, n).items()}
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(runs, mem, args, (load0, os.getloadavg()[0]), args.out / "throughput.md", time.time() - t0)
    plot(runs, mem, args.threads, args.out / "throughput.png")
    for (c, lib, n), r in runs.items():
        print(f"{c}, {n} thread(s), {lib}: {r['median']:.2f} steps/s median, {max(r['rates']):.2f} best, "
              f"{r['params']:,} params")
    print(f"wrote {args.out / 'throughput.md'} and {args.out / 'throughput.png'}")


if __name__ == "__main__":
    main()
