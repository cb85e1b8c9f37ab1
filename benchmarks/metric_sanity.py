"""Sanity scale for the image metrics: scores of real, degraded and control image sets against the training data.

    python benchmarks/metric_sanity.py                                   # digits
    python benchmarks/metric_sanity.py --mnist /work/shared/data/mnist   # digits and MNIST

Writes docs/benchmarks/metric_sanity.md (tables, command, date) and docs/benchmarks/metric_sanity_<data>.png.
Every set is scored against the features of the training split with the shipped feature net of that data.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from difflab import data
from difflab.evaluation import evaluate_features, extract

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
COLUMNS = ["n", "fd", "kid", "kid_std", "precision", "recall", "density", "coverage", "class_kl", "confidence"]


def noised(x: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    """x + std * N(0, I), clipped to [-1, 1] as a saved image would be."""
    return (x + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(-1, 1)


def blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of each image (std in pixels), edges reflected."""
    return torch.from_numpy(ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest"))


def shuffled_pixels(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Each image's pixels in an independent random order: same pixel histogram, no spatial structure."""
    g = torch.Generator().manual_seed(seed)
    flat = x.flatten(1)
    idx = torch.stack([torch.randperm(flat.shape[1], generator=g) for _ in range(len(x))])
    return flat.gather(1, idx).reshape(x.shape)


def subsample(x: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]]


def cases(spec: str, blur_sigmas: tuple[float, ...], ref_n: int | None) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """Training images (reference, optionally a random subset) and the named image sets to score."""
    train, test = data.load(spec, "train"), data.load(spec, "test")
    reference = train.x.float() if ref_n is None else subsample(train.x.float(), ref_n, 0)
    xt, yt = test.x.float(), test.y
    one = xt[yt == 0]
    rows = [
        ("held-out real", xt),
        (f"held-out real, random {len(one)}", subsample(xt, len(one), 0)),
        ("reference images themselves (memorised)", subsample(reference, len(xt), 1)),
    ]
    rows += [(f"held-out + noise std {s}", noised(xt, s, 1)) for s in (0.05, 0.1, 0.25, 0.5, 1.0)]
    rows += [(f"held-out, blur sigma {s} px", blurred(xt, s)) for s in blur_sigmas]
    rows += [
        (f"single class (held-out 0s, {len(one)})", one),
        ("shuffled pixels (control)", shuffled_pixels(xt, 2)),
        ("uniform noise (control)", torch.rand(xt.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1),
    ]
    return reference, rows


def run(name: str, spec: str, blur_sigmas: tuple[float, ...], ref_n: int | None) -> tuple[list[dict[str, float | str]], float]:
    t0 = time.perf_counter()
    reference, rows = cases(spec, blur_sigmas, ref_n)
    ref = extract(reference, name)  # its k-NN radii are computed once and reused for every row
    out = []
    for label, x in rows:
        m = evaluate_features(extract(x, name), ref, seed=0)
        out.append({"set": label, "n": len(x), **{k: m[k] for k in COLUMNS[1:]}, "ref_n": len(reference)})
        print(f"{name:7s} {label:45s} " + " ".join(f"{k}={m[k]:.4g}" for k in COLUMNS[1:]), flush=True)
    return out, time.perf_counter() - t0


def table(rows: list[dict[str, float | str]]) -> str:
    fmt = {"n": "{:d}", "fd": "{:.3g}", "kid": "{:.3g}", "kid_std": "{:.2g}", "class_kl": "{:.3f}"}
    head = "| set | " + " | ".join(COLUMNS) + " |\n|---|" + "---:|" * len(COLUMNS) + "\n"
    return head + "".join(
        f"| {r['set']} | " + " | ".join(fmt.get(c, "{:.3f}").format(r[c]) for c in COLUMNS) + " |\n" for r in rows
    )


def plot(rows: list[dict[str, float | str]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(r["set"]) for r in rows]
    y = np.arange(len(rows))[::-1]
    fig, axes = plt.subplots(1, 4, figsize=(15, 0.35 * len(rows) + 1.5), sharey=True)
    for ax, key, log in zip(axes, ["fd", "kid", "precision", "recall"], [True, True, False, False]):
        vals = np.array([float(r[key]) for r in rows])
        ax.barh(y, vals, color=np.where(vals < 0, "C1", "C0"))
        if log:  # KID can be slightly negative (unbiased); symlog is linear in [-1, 1]
            ax.set_xscale("symlog", linthresh=1.0)
        ax.set_title(key + (" (symlog)" if log else ""))
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, labels, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


POINT_COLUMNS = ["n", "sw1", "sw2", "mmd", "fd", "precision", "recall", "log_likelihood"]


def eight_gaussians_log_prob(x: torch.Tensor) -> torch.Tensor:
    """Log-density of difflab's toy:8gaussians (8 equal isotropic Gaussians, std 0.05, centres on a circle of radius 0.8)."""
    ang = 2 * torch.pi * torch.arange(8, dtype=x.dtype) / 8
    centres = 0.8 * torch.stack([ang.cos(), ang.sin()], 1)
    comp = torch.distributions.Independent(torch.distributions.Normal(centres, torch.full_like(centres, 0.05)), 1)
    mix = torch.distributions.MixtureSameFamily(torch.distributions.Categorical(torch.ones(8, dtype=x.dtype)), comp)
    return mix.log_prob(x)


def run_points(n: int = 2000) -> tuple[list[dict[str, float | str]], float, float]:
    """Point metrics on toy:8gaussians: held-out points, jitter, shift, dropped modes and two controls."""
    from difflab.evaluation import evaluate_points

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    ref = data.load("toy:8gaussians", "test").x[:n].double()
    train = data.load("toy:8gaussians", "train").x.double()
    train = train[torch.randperm(len(train), generator=g)]
    x = train[:n]
    mode = (torch.atan2(train[:, 1], train[:, 0]) / (2 * torch.pi / 8)).round().remainder(8)
    rows = [
        ("held-out points", x),
        ("+ jitter std 0.02", x + 0.02 * torch.randn(x.shape, generator=g, dtype=x.dtype)),
        ("+ jitter std 0.05", x + 0.05 * torch.randn(x.shape, generator=g, dtype=x.dtype)),
        ("shifted by (0.05, 0)", x + torch.tensor([0.05, 0.0], dtype=x.dtype)),
        ("shifted by (0.2, 0)", x + torch.tensor([0.2, 0.0], dtype=x.dtype)),
        ("4 of 8 modes", train[mode % 2 == 0][:n]),
        ("1 of 8 modes", train[mode == 0][:n]),
        ("Gaussian with the data's mean and covariance", ref.mean(0) + torch.randn(x.shape, generator=g, dtype=x.dtype) @ torch.linalg.cholesky(ref.T.cov()).T),
        ("uniform on [-1, 1]^2", torch.rand(x.shape, generator=g, dtype=x.dtype) * 2 - 1),
    ]
    out = []
    for label, pts in rows:
        m = evaluate_points(pts, ref, eight_gaussians_log_prob)
        out.append({"set": label, "n": len(pts), **{k: m[k] for k in POINT_COLUMNS[1:]}})
        print(f"points  {label:45s} " + " ".join(f"{k}={m[k]:.4g}" for k in POINT_COLUMNS[1:]), flush=True)
    return out, m["reference_log_likelihood"], time.perf_counter() - t0


def point_table(rows: list[dict[str, float | str]]) -> str:
    fmt = {"n": "{:d}", "mmd": "{:.2g}", "fd": "{:.2g}", "log_likelihood": "{:.2f}"}
    head = "| set | " + " | ".join(POINT_COLUMNS) + " |\n|---|" + "---:|" * len(POINT_COLUMNS) + "\n"
    return head + "".join(
        f"| {r['set']} | " + " | ".join(fmt.get(c, "{:.3f}").format(r[c]) for c in POINT_COLUMNS) + " |\n" for r in rows
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", metavar="DIR", help="also score MNIST from this IDX directory")
    ap.add_argument("--out", default=str(DOCS))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [("digits", "digits", (0.5, 1.0), None)]
    if args.mnist:
        runs.append(("mnist", f"mnist:{args.mnist}", (1.0, 2.0), 10000))
    sections = []
    for name, spec, blurs, ref_n in runs:
        rows, seconds = run(name, spec, blurs, ref_n)
        png = out / f"metric_sanity_{name}.png"
        plot(rows, f"{name}: scores against the training split (feature net '{name}')", png)
        sections.append(
            f"## {name}\n\nReference: {'a seeded random subset of ' if ref_n else 'all '}{rows[0]['ref_n']} "
            f"training images of `{spec.split(':')[0]}`; held-out = its test split; "
            f"features of the shipped `{name}` feature net; {seconds:.0f} s wall time.\n\n"
            + table(rows) + f"\n![{name} sanity scale]({png.name})\n"
        )
    rows, ref_ll, seconds = run_points()
    sections.append(
        "## points: toy:8gaussians\n\n`evaluate_points` defaults (200 projections, MMD bandwidths 0.05-2 x the "
        f"reference's median distance, k=3); reference: 2000 test points, whose own mean log-likelihood under the "
        f"true density is {ref_ll:.2f}; {seconds:.0f} s wall time.\n\n" + point_table(rows)
    )
    cmd = "python benchmarks/metric_sanity.py" + (f" --mnist {args.mnist}" if args.mnist else "")
    md = (
        "# Metric sanity scale\n\n"
        f"Generated by `{cmd}` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"(torch {torch.__version__}, Python {platform.python_version()}, {torch.get_num_threads()} threads). "
        "Defaults of `evaluate_features`: precision/recall k=3, density/coverage k=5, KID over 100 subsets of "
        "min(1000, n) points, seed 0. FD and KID are in the feature net's units; FD is biased upward for small n, "
        "so compare rows with the same n (the 'random n' row is the real-data baseline for the single-class row). "
        "See docs/evaluation.md for what each column means.\n\n" + "\n".join(sections)
    )
    (out / "metric_sanity.md").write_text(md)
    print(f"wrote {out / 'metric_sanity.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
