"""Captions for digit images from the label and measurable attributes: stroke thickness (ink mass), slant
(normalised second-moment skew, as in MNIST deskewing) and size (bounding box), e.g. "a thick slanted seven"."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def attributes(x: Tensor, threshold: float = 0.0) -> dict[str, Tensor]:
    """Per-image attributes of grey digits x [N, 1, H, W] in [-1, 1] (ink = (x + 1) / 2).

    ``ink``: mean ink per pixel (stroke thickness); ``slant``: mu_xy / mu_yy of the ink distribution, the shear
    that deskewing removes (positive = top leaning right); ``size``: bounding-box area of pixels above
    ``threshold`` as a fraction of the image.
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"attributes expects grey images [N, 1, H, W], got {tuple(x.shape)}")
    ink = ((x[:, 0].double() + 1) / 2).clamp(0, 1)
    n, h, w = ink.shape
    mass = ink.sum((1, 2)).clamp_min(1e-8)
    rows = torch.arange(h, dtype=torch.float64).view(1, h, 1)
    cols = torch.arange(w, dtype=torch.float64).view(1, 1, w)
    my = (ink * rows).sum((1, 2)) / mass
    mx = (ink * cols).sum((1, 2)) / mass
    dy, dx = rows - my.view(n, 1, 1), cols - mx.view(n, 1, 1)
    mu_yy = (ink * dy**2).sum((1, 2)) / mass
    mu_xy = (ink * dx * dy).sum((1, 2)) / mass
    slant = -mu_xy / mu_yy.clamp_min(1e-8)  # rows grow downwards: a top-right lean has negative mu_xy
    on = x[:, 0] > threshold
    any_r, any_c = on.any(2), on.any(1)
    idx_r, idx_c = torch.arange(h), torch.arange(w)
    height = torch.where(any_r, idx_r, -1).amax(1) - torch.where(any_r, idx_r, h).amin(1) + 1
    width = torch.where(any_c, idx_c, -1).amax(1) - torch.where(any_c, idx_c, w).amin(1) + 1
    size = (height.clamp_min(0) * width.clamp_min(0)).double() / (h * w)
    return {"ink": ink.mean((1, 2)).float(), "slant": slant.float(), "size": size.float()}


@dataclass(frozen=True)
class CaptionThresholds:
    """Tercile cut points of each attribute over a dataset: below the first is "thin"/"small", above the second "thick"/"large"."""

    ink: tuple[float, float]
    slant: tuple[float, float]
    size: tuple[float, float]

    @classmethod
    def fit(cls, x: Tensor | dict[str, Tensor]) -> "CaptionThresholds":
        """Terciles of the attributes of images x [N, 1, H, W] (or of attributes already measured)."""
        a = x if isinstance(x, dict) else attributes(x)
        q = lambda v: tuple(float(u) for u in np.quantile(v.numpy(), [1 / 3, 2 / 3]))  # noqa: E731
        return cls(q(a["ink"]), q(a["slant"]), q(a["size"]))


def caption_words(label: int, ink: float, slant: float, size: float, th: CaptionThresholds) -> str:
    """One caption: "a [thin|thick] [small|large] [left-slanted|slanted] <digit name>" (middle terciles say nothing)."""
    words = ["a"]
    if ink <= th.ink[0]:
        words.append("thin")
    elif ink > th.ink[1]:
        words.append("thick")
    if size < th.size[0]:
        words.append("small")
    elif size > th.size[1]:
        words.append("large")
    if slant > th.slant[1] and slant > 0:
        words.append("slanted")
    elif slant <= th.slant[0] and slant < 0:
        words.append("left-slanted")
    words.append(DIGIT_NAMES[int(label)])
    return " ".join(words)


def streamed_attributes(batches: Iterable[Tensor]) -> dict[str, Tensor]:
    """:func:`attributes` of images given batch by batch (three floats per image are kept, never the images)."""
    parts = [attributes(b) for b in batches]
    if not parts:
        return {k: torch.empty(0) for k in ("ink", "slant", "size")}
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def captions(x: Tensor | dict[str, Tensor], y: Tensor, thresholds: CaptionThresholds | None = None) -> list[str]:
    """Deterministic captions of digit images x [N, 1, H, W] (or their :func:`attributes`) with labels y [N]
    (thresholds fitted on x if not given)."""
    a = x if isinstance(x, dict) else attributes(x)
    th = thresholds if thresholds is not None else CaptionThresholds.fit(a)
    return [caption_words(int(l), float(i), float(s), float(z), th)
            for l, i, s, z in zip(y.tolist(), a["ink"], a["slant"], a["size"])]


__all__ = ["DIGIT_NAMES", "attributes", "streamed_attributes", "CaptionThresholds", "caption_words", "captions"]
