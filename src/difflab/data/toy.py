"""2-D toy distributions, scaled to lie mostly within [-1, 1], except the 25-Gaussian grid, which keeps the
literature's scale (centres on {-4, -2, 0, 2, 4}^2)."""
from __future__ import annotations

import math
from typing import Callable

import numpy as np


def _swiss_roll(n: int, rng: np.random.Generator) -> np.ndarray:
    t = 1.5 * math.pi * (1 + 2 * rng.random(n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], 1) / 15.0
    return x + 0.02 * rng.standard_normal((n, 2))


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    n1 = n // 2
    a = math.pi * rng.random(n1)
    b = math.pi * rng.random(n - n1)
    up = np.stack([np.cos(a), np.sin(a)], 1)
    down = np.stack([1 - np.cos(b), 0.5 - np.sin(b)], 1)
    x = np.concatenate([up, down]) - np.array([0.5, 0.25])
    return (x + 0.05 * rng.standard_normal((n, 2))) / 1.5


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    ang = 2 * math.pi * rng.integers(0, 8, n) / 8
    centers = np.stack([np.cos(ang), np.sin(ang)], 1) * 0.8
    return centers + 0.05 * rng.standard_normal((n, 2))


#: The 25-Gaussian grid (the 5 x 5 mixture of Srivastava et al. 2017, used by Xiao et al. 2022, fig. 4): centres
#: GRID_SPACING = 2 apart on {-4, ..., 4}^2, equal weights, isotropic std GRID_STD = spacing / 20 (their 0.05 is
#: spacing / 40).  At this scale the VP schedule's unit noise leaves the modes apart in x_1 of a 4-step chain
#: (spacing 1.4 against noise 0.7), so each denoising step is nearly unimodal; squeezed into [-1, 1] (spacing 0.4)
#: every step's denoising distribution spans several modes and short DDGAN trainings collapsed.
GRID_SPACING, GRID_STD = 2.0, 0.1


def grid_centers() -> np.ndarray:
    """The 25 centres of the 25-Gaussian grid, [25, 2]."""
    g = np.arange(-2, 3) * GRID_SPACING
    return np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)


def _twenty_five_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    return grid_centers()[rng.integers(0, 25, n)] + GRID_STD * rng.standard_normal((n, 2))


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2.0
    x2 = x2 + (np.floor(x1) % 2)
    return np.stack([x1, x2], 1) / 2.0


def _pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
    k, radial, tangential, rate = 5, 0.3, 0.05, 0.25
    labels = rng.integers(0, k, n)
    feats = rng.standard_normal((n, 2)) * np.array([radial, tangential])
    feats[:, 0] += 1.0
    ang = 2 * math.pi * labels / k + rate * np.exp(feats[:, 0])
    c, s = np.cos(ang), np.sin(ang)
    x = np.stack([c * feats[:, 0] - s * feats[:, 1], s * feats[:, 0] + c * feats[:, 1]], 1)
    return x / 2.0


def _rings(n: int, rng: np.random.Generator) -> np.ndarray:
    radii = np.array([0.25, 0.5, 0.75, 1.0])
    r = radii[rng.integers(0, 4, n)]
    a = 2 * math.pi * rng.random(n)
    x = np.stack([r * np.cos(a), r * np.sin(a)], 1)
    return (x + 0.02 * rng.standard_normal((n, 2))) * 0.9


TOYS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "swiss_roll": _swiss_roll,
    "moons": _moons,
    "8gaussians": _eight_gaussians,
    "25gaussians": _twenty_five_gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "rings": _rings,
}


def toy(name: str, n: int, seed: int = 0) -> np.ndarray:
    """n float32 points [n, 2] of the named toy distribution, in random order."""
    if name not in TOYS:
        from ..errors import DataError

        raise DataError(f"unknown toy distribution {name!r}; choose one of {', '.join(TOYS)}")
    rng = np.random.default_rng(seed)
    pts = TOYS[name](n, rng)
    return pts[rng.permutation(n)].astype(np.float32)  # generators may emit components in blocks
