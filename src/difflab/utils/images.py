"""Pictures people look at: PNG grids of images, scatter plots of 2-D samples, loss curves."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def to_uint8(x: Tensor) -> np.ndarray:
    """float [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (values outside are clipped)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def image_grid(x: Tensor, nrow: int | None = None, pad: int = 1, scale: int = 1) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 grid [rows*(H+pad)+pad, cols*(W+pad)+pad, C]."""
    imgs = to_uint8(x)
    n, h, w, c = imgs.shape
    cols = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = imgs[i]
    if scale > 1:
        grid = grid.repeat(scale, 0).repeat(scale, 1)
    return grid


def save_image_grid(x: Tensor, path: str | Path, nrow: int | None = None) -> None:
    """Write a PNG grid; small images are upscaled so the grid is at least ~256 px wide."""
    from PIL import Image

    h = x.shape[-1]
    scale = max(1, 32 // h)
    g = image_grid(x, nrow, scale=scale)
    Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(path)


def save_scatter(points: Tensor | np.ndarray, path: str | Path, reference: Tensor | np.ndarray | None = None,
                 title: str = "") -> None:
    """Scatter plot of 2-D samples (and reference data in grey) to PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = points.detach().cpu().numpy() if torch.is_tensor(points) else np.asarray(points)
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if reference is not None:
        r = reference.detach().cpu().numpy() if torch.is_tensor(reference) else np.asarray(reference)
        ax.scatter(r[:, 0], r[:, 1], s=2, c="0.75", label="data")
    ax.scatter(p[:, 0], p[:, 1], s=2, c="tab:blue", label="samples")
    ax.set_aspect("equal")
    extent = np.abs(r).max() if reference is not None else np.percentile(np.abs(p), 99.5) if len(p) else 0.0
    lim = max(1.5, 1.1 * float(extent))  # [-1.5, 1.5] for data scaled into [-1, 1]; wider data (the 25-Gaussian grid) in full
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    if title:
        ax.set_title(title)
    if reference is not None:
        ax.legend(loc="upper right", markerscale=4)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def save_loss_curve(steps: list[int], losses: list[float], path: str | Path) -> None:
    """Training loss against step (log scale), with a running mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    if len(losses) >= 10:
        k = max(2, len(losses) // 20)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=1.5, label=f"running mean ({k})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
