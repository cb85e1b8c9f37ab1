"""Mode coverage of samples from a mixture of isotropic Gaussians (the 25-Gaussian grid of Srivastava et al. 2017,
used by Xiao et al. 2022): modes covered and the fraction of high-quality samples."""
from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import as_array


def mode_coverage(samples: Any, centers: Any, std: float, *, radius: float = 3.0, min_share: float = 0.2) -> dict[str, float]:
    """A sample is high-quality if it lies within ``radius`` std of its nearest centre; a mode is covered if it holds
    at least ``min_share`` of its expected share n / K of the high-quality samples (20 of 2500 for K = 25).

    Keys: modes (covered), num_modes (K), high_quality (fraction), mode_kl (KL of the high-quality samples' mode
    histogram from uniform, 0 when balanced).
    """
    x, c = as_array(samples), as_array(centers)
    d = np.sqrt(((x[:, None, :] - c[None, :, :]) ** 2).sum(-1))
    nearest, dist = d.argmin(1), d.min(1)
    good = dist <= radius * std
    counts = np.bincount(nearest[good], minlength=len(c)).astype(np.float64)
    covered = int((counts >= min_share * len(x) / len(c)).sum())
    p = counts / max(counts.sum(), 1.0)
    nz = p > 0
    kl = float((p[nz] * np.log(p[nz] * len(c))).sum()) if nz.any() else float("nan")
    return {"modes": float(covered), "num_modes": float(len(c)), "high_quality": float(good.mean()), "mode_kl": kl}


__all__ = ["mode_coverage"]
