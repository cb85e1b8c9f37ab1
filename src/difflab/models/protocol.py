"""The denoiser contract as a type: anything callable as D(x_t, t, cond) -> x0 that carries its schedule."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from ..schedules import Schedule


@runtime_checkable
class DenoiserLike(Protocol):
    """D(x_t, t, cond) -> x0 estimate [B, ...] with the noise schedule it was trained under (Karras et al. 2022,
    eq. 2's D); :class:`difflab.models.denoiser.Denoiser`, its wrappers (Clamped, guidance) and students match it."""

    schedule: Schedule

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor: ...


__all__ = ["DenoiserLike"]
