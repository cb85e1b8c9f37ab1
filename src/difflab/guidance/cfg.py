"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from ..models.denoiser import Denoiser
from .base import GuidedDenoiser, cat_conditions, null_condition, num_classes_of

NullFn = Callable[[Mapping[str, Any]], Mapping[str, Any]]


class ClassifierFreeGuidance(GuidedDenoiser):
    """eps_w = (1 + w) eps(x, c) - w eps(x, null) (Ho & Salimans 2022, eq. 6), both branches in one batched pass.

    The combination is taken in the inner network's own output space; x_0, eps, v and the score are all
    affine in that output with branch-independent coefficients, so it equals the eps-space (and x_0-space)
    rule exactly.  ``uncond`` maps a condition to its null version (default: null label / empty context).
    At w = 0 the wrapper returns the inner model's output unchanged.  ``interval = (sigma_lo, sigma_hi)`` limits
    guidance to noise levels sigma_lo < sigma_ve(t) <= sigma_hi and gives the conditional output elsewhere
    (Kynkaanniemi et al. 2024, eq. 2); levels outside cost one network pass instead of two.
    """

    def __init__(self, model: Denoiser, scale: float, uncond: NullFn | None = None,
                 interval: tuple[float, float] | None = None):
        super().__init__(model, model.prediction)
        self.scale = float(scale)
        if interval is not None and not 0.0 <= float(interval[0]) < float(interval[1]):
            raise ValueError(f"guidance interval must be (sigma_lo, sigma_hi) with 0 <= sigma_lo < sigma_hi, got {interval}")
        self.interval = None if interval is None else (float(interval[0]), float(interval[1]))
        k = num_classes_of(model)
        self.uncond: NullFn = uncond if uncond is not None else (lambda c: null_condition(c, k))

    def guided(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        if self.scale == 0.0 or cond is None:
            return self.model.raw(x, t, cond)
        if self.interval is not None:
            sig = self.model.schedule.sigma_ve(t.double())
            inside = ((sig > self.interval[0]) & (sig <= self.interval[1])).to(x.device)
            if not bool(inside.any()):
                return self.model.raw(x, t, cond)
            out = self._cfg(x, t, cond)
            if bool(inside.all()):
                return out
            plain = self.model.raw(x, t, cond)
            return torch.where(inside.reshape(-1, *([1] * (x.ndim - 1))), out, plain)
        return self._cfg(x, t, cond)

    def _cfg(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        null = self.uncond(cond)
        both = self.model.raw(torch.cat([x, x]), torch.cat([t, t]), cat_conditions(cond, null))
        out_c, out_u = both.chunk(2)
        return out_c + self.scale * (out_c - out_u)


def classifier_free(model: Denoiser, scale: float, uncond: NullFn | None = None,
                    interval: tuple[float, float] | None = None) -> Denoiser:
    """The CFG-guided denoiser of a jointly trained conditional/unconditional model; w = 0 gives the model itself;
    ``interval`` limits guidance to a range of sigma_ve (Kynkaanniemi et al. 2024)."""
    return ClassifierFreeGuidance(model, scale, uncond, interval)


__all__ = ["ClassifierFreeGuidance", "classifier_free"]
