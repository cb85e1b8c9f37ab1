"""The generative learning trilemma, measured: quality (FD), diversity (recall, coverage) and speed (NFE, time)."""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..errors import UserError
from ..models.protocol import DenoiserLike


def parse_methods(spec: str, samplers: Sequence[str]) -> list[tuple[str, int]]:
    """'ddim:10,dpmpp_2m:20' -> [("ddim", 10), ("dpmpp_2m", 20)], checked against the known samplers."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, steps = item.partition(":")
        if name not in samplers:
            raise UserError(f"--methods: unknown sampler {name!r} in {item!r}; choose from {', '.join(samplers)}")
        if not steps.isdigit() or int(steps) < 1:
            raise UserError(f"--methods: {item!r} needs a positive step count, like {name}:20")
        out.append((name, int(steps)))
    if not out:
        raise UserError("--methods is empty")
    return out


def draw(model: DenoiserLike, shape: Sequence[int], num: int, sampler: str, steps: int, seed: int = 0,
         batch_size: int = 500, cond: Callable[[int], Any] | None = None,
         grid: Tensor | None = None) -> tuple[Tensor, int, float]:
    """num samples with a sampler from the schedule's prior x_T (``sample_prior``): (samples on CPU, model calls per
    batch, wall seconds); ``grid`` is the run's stored grid (:func:`difflab.samplers.tuned.run_grid`) if any."""
    from ..samplers import sample_batches

    t0 = time.perf_counter()
    x, nfe = sample_batches(model, shape, num, sampler, steps, seed=seed, batch_size=batch_size, grid=grid,
                            cond=None if cond is None else lambda n, device: cond(n))
    return x, nfe, time.perf_counter() - t0


def write_report(rows: list[dict[str, Any]], out_dir: Path, title: str, command: str) -> Path:
    """report.md (table) and trilemma.png (FD against time and NFE, recall as colour) in out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    cols = ["method", "nfe", "sec_per_1000", "fd", "kid", "precision", "recall", "coverage"]
    if len({r.get("family") for r in rows}) > 1 or any(r.get("own_sampler") for r in rows):  # their columns too
        cols = ["method", "family", "nfe", "sec_per_1000", "params", "fd", "kid", "precision", "recall", "density",
                "coverage", "modes", "high_quality", "nll"]
        cols = [c for c in cols if any(c in r for r in rows)]
    lines = [f"# {title}", "", f"Command: `{command}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
             "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    lines += ["", "Quality: FD (lower is better). Diversity: recall and coverage (higher is better). "
              "Speed: model calls (NFE) per sample and wall seconds per 1000 samples.", "",
              "![trilemma](trilemma.png)", "", *alignment_table(rows)]
    (out_dir / "report.md").write_text("\n".join(lines))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    for ax, key, xl in [(axes[0], "nfe", "model calls per sample (NFE)"), (axes[1], "sec_per_1000", "seconds per 1000 samples")]:
        for fam in dict.fromkeys(r.get("family") for r in rows):  # one marker per family (its registry entry's)
            sub = [r for r in rows if r.get("family") == fam]
            sc = ax.scatter([r[key] for r in sub], [r["fd"] for r in sub], c=[r.get("recall", math.nan) for r in sub],
                            cmap="viridis", s=60, vmin=0, vmax=1, edgecolors="k", marker=sub[0].get("marker", "o"),
                            label=fam)
        if len({r.get("family") for r in rows}) > 1:
            ax.legend(fontsize=7)
        for r in rows:
            ax.annotate(r["method"], (r[key], r["fd"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xl)
        ax.set_ylabel("FD (lower is better)")
        ax.grid(alpha=0.3, which="both")
    fig.colorbar(sc, ax=axes, label="recall (diversity)")
    fig.suptitle(title)
    fig.savefig(out_dir / "trilemma.png", bbox_inches="tight")
    plt.close(fig)
    return out_dir / "report.md"


ALIGNMENT_COLUMNS = ("prompt_acc", "digit_acc", "colour_acc", "clip_align")


def alignment_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the text-alignment table of rows sampled at guidance scales ("guidance"): prompt accuracy,
    its digit and colour parts, CLIP alignment and FD per method and scale; no lines when no row has a scale."""
    rows = [r for r in rows if "guidance" in r]
    if not rows:
        return []
    cols = ["method", "guidance", *(c for c in ALIGNMENT_COLUMNS if any(c in r for r in rows)), "fd"]
    lines = ["## Text alignment", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return lines + ["", "Samples ask for the run's stored prompts in turn (the class prompts of digit captions). "
                    "prompt_acc: everything a prompt names is right (the digit by the feature net on the grey image, "
                    "the colour by the nearest named colour); clip_align: mean cosine of the --clip model's image "
                    "and prompt embeddings (higher is better).", ""]


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
