"""Shared plumbing for samplers: per-call noise-level tables and the denoiser call in the scaled variable."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import Tensor

from ..schedules import as_tensor


@dataclass(frozen=True)
class Levels:
    """The grid of one sampling call: sigma_ve, model time t, alpha(t) and sigma(t) at each level (built once per call)."""

    sigma: list[float]  # sigma_ve, decreasing, ends in 0
    t: list[Tensor]  # model time at each nonzero level, a [B] tensor in x's dtype
    tf: list[float]  # same as plain floats
    alpha: list[float]  # alpha(t) at each nonzero level
    sigma_native: list[float]  # sigma(t) at each nonzero level


def levels(model: Any, x: Tensor, sigmas: Tensor) -> Levels:
    """Tabulate the model time and scales at every nonzero level of ``sigmas`` for a batch like ``x``."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if sig.numel() < 2 or float(sig[-1]) != 0.0 or bool((sig[:-1] <= 0).any()) or bool((sig[1:] >= sig[:-1]).any()):
        raise ValueError("sigmas must be a strictly decreasing 1-D tensor of positive levels ending in 0")
    sched = model.schedule
    t = sched.t_from_sigma_ve(sig[:-1])
    a, s = sched.alpha_sigma(t)
    B = x.shape[0]
    tt = [torch.full((B,), float(v), dtype=x.dtype, device=x.device) for v in t.tolist()]
    return Levels(sig.tolist(), tt, t.tolist(), a.tolist(), s.tolist())


def denoise(model: Any, y: Tensor, lv: Levels, i: int, cond: Any) -> Tensor:
    """D at level i for the scaled variable y = x / alpha (the x_0 prediction is the same in both variables)."""
    return model(y * lv.alpha[i], lv.t[i], cond)


def denoise_at(model: Any, y: Tensor, sigma: float, cond: Any) -> Tensor:
    """D at an arbitrary noise level sigma_ve (adaptive solvers)."""
    sched = model.schedule
    t = sched.t_from_sigma_ve(as_tensor(float(sigma)))
    a = float(sched.alpha(t))
    return model(y * a, torch.full((y.shape[0],), float(t), dtype=y.dtype, device=y.device), cond)


def steps(n: int, progress: bool, desc: str = "sampling") -> Iterable[int]:
    """range(n), with a tqdm bar when asked."""
    if not progress:
        return range(n)
    from tqdm.auto import trange

    return trange(n, desc=desc)


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like x, drawn from ``generator`` (on x's device)."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
