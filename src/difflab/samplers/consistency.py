"""Multistep consistency sampling (Song et al. 2023, Alg. 1): x_0 = f(x_T); then re-noise to each next level and apply f again."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ._common import Callback, denoise, finish, levels, randn_like, report, steps


def sample_consistency(model: Any, x: Tensor, sigmas: Tensor, *, cond: Any = None,
                       generator: torch.Generator | None = None, progress: bool = False,
                       callback: Callback | None = None) -> Tensor:
    """One call per nonzero level: x0 = f(y_i, s_i); y_{i+1} = x0 + sqrt(s_{i+1}^2 - s_min^2) z (Song et al. 2023, Alg. 1; y = x / alpha)."""
    lv = levels(model, x, sigmas)
    n = len(lv.sigma) - 1
    s_min = float(getattr(model, "sigma_min", 0.0))
    y = x / lv.alpha[0]
    for i in steps(n, progress):
        x0 = denoise(model, y, lv, i, cond)
        report(callback, lv, i, y, x0, scaled=True)
        s_next = lv.sigma[i + 1]
        if s_next == 0:
            return x0
        y = x0 + max(s_next**2 - s_min**2, 0.0) ** 0.5 * randn_like(x0, generator)
    return finish(lv, y)  # a grid ending at a positive level: the re-noised state there


__all__ = ["sample_consistency"]
