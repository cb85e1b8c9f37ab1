"""Shared plumbing for samplers: per-call noise-level tables, the denoiser call in the scaled variable, step callbacks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from ..schedules import as_tensor

#: A per-step callback: receives {"i", "n", "t", "sigma", "x", "denoised"} (docs/samplers.md, "Step callbacks").
Callback = Callable[[dict], None]


@dataclass(frozen=True)
class Levels:
    """The grid of one sampling call: sigma_ve, model time t, alpha(t) and sigma(t) at each positive level (built once per call)."""

    sigma: list[float]  # sigma_ve, decreasing; ends in 0 (return x_0) or at a positive level (return x there)
    t: list[Tensor]  # model time at each positive level, a [B] tensor in x's dtype
    tf: list[float]  # same as plain floats
    alpha: list[float]  # alpha(t) at each positive level
    sigma_native: list[float]  # sigma(t) at each positive level

    @property
    def to_zero(self) -> bool:
        """True when the grid ends in 0 (the last step returns the denoised sample)."""
        return self.sigma[-1] == 0.0


def levels(model: Any, x: Tensor, sigmas: Tensor) -> Levels:
    """Tabulate the model time and scales at every positive level of ``sigmas`` (strictly decreasing, >= 0) for a batch like ``x``."""
    sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    if sig.numel() < 2 or bool((sig[:-1] <= 0).any()) or float(sig[-1]) < 0 or bool((sig[1:] >= sig[:-1]).any()):
        raise ValueError("sigmas must be a strictly decreasing 1-D tensor of at least 2 levels, positive except a final 0")
    sched = model.schedule
    pos = sig[:-1] if float(sig[-1]) == 0.0 else sig
    t = sched.t_from_sigma_ve(pos)
    a, s = sched.alpha_sigma(t)
    B = x.shape[0]
    tt = [torch.full((B,), float(v), dtype=x.dtype, device=x.device) for v in t.tolist()]
    return Levels(sig.tolist(), tt, t.tolist(), a.tolist(), s.tolist())


def finish(lv: Levels, y: Tensor) -> Tensor:
    """The result of a sampler in the scaled variable y = x / alpha: x_0 (= y) on a grid ending in 0, else x at the last level."""
    return y if lv.to_zero else y * lv.alpha[-1]


def denoise(model: Any, y: Tensor, lv: Levels, i: int, cond: Any) -> Tensor:
    """D at level i for the scaled variable y = x / alpha (the x_0 prediction is the same in both variables)."""
    return model(y * lv.alpha[i], lv.t[i], cond)


def time_alpha(schedule: Any, sigma: float) -> tuple[float, float]:
    """Model time t and alpha(t) at an arbitrary noise level sigma_ve."""
    t = schedule.t_from_sigma_ve(as_tensor(float(sigma)))
    return float(t), float(schedule.alpha(t))


def denoise_at(model: Any, y: Tensor, sigma: float, cond: Any) -> Tensor:
    """D at an arbitrary noise level sigma_ve (adaptive solvers)."""
    t, a = time_alpha(model.schedule, sigma)
    return model(y * a, torch.full((y.shape[0],), t, dtype=y.dtype, device=y.device), cond)


def report(callback: Callback | None, lv: Levels, i: int, x: Tensor, denoised: Tensor, scaled: bool = False) -> None:
    """Call ``callback`` for step i with the state x at grid level i (before the move to level i + 1) and its x0
    estimate, both as copies in native coordinates; ``scaled`` means x is y = x / alpha."""
    if callback is not None:
        emit(callback, i, len(lv.sigma) - 1, lv.tf[i], lv.sigma[i], x * lv.alpha[i] if scaled else x.clone(), denoised)


def emit(callback: Callback, i: int, n: int | None, t: float, sigma: float, x: Tensor, denoised: Tensor) -> None:
    """The callback dict of one step; x must already be a fresh tensor, denoised is copied (callbacks cannot alter a run)."""
    callback({"i": i, "n": n, "t": t, "sigma": sigma, "x": x, "denoised": denoised.clone()})


def steps(n: int, progress: bool, desc: str = "sampling") -> Iterable[int]:
    """range(n), with a tqdm bar when asked."""
    if not progress:
        return range(n)
    from tqdm.auto import trange

    return trange(n, desc=desc)


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like x, drawn from ``generator`` (on x's device); a generator per sample
    (``samplers.seeds.PerSample``) draws each row from its own."""
    if hasattr(generator, "randn"):
        return generator.randn(x.shape, x.dtype, x.device)
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
