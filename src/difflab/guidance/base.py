"""Denoiser wrappers: a guided denoiser is a Denoiser computed from an inner Denoiser under the same schedule.

Samplers only call ``D(x_t, t, cond)`` and read ``D.schedule``, so any wrapper here works with every sampler;
``eps`` and ``score`` are inherited from :class:`~difflab.models.denoiser.Denoiser` and follow from ``raw``.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..models.denoiser import Denoiser, Prediction, _batch_t


class GuidedDenoiser(Denoiser):
    """Base of denoiser wrappers: ``raw`` is the guided output in the parametrisation ``prediction``."""

    def __init__(self, model: Denoiser, prediction: Prediction):
        nn.Module.__init__(self)  # no network of its own: schedule and net are the inner model's
        self.model = model
        self.prediction: Prediction = prediction

    @property
    def schedule(self) -> Any:  # type: ignore[override]
        return self.model.schedule

    @property
    def net(self) -> Any:  # type: ignore[override]
        return self.model.net

    def raw(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        return self.guided(x, _batch_t(t, x), cond)

    def guided(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        """The wrapper's output in its ``prediction`` space, t of shape [B]."""
        raise NotImplementedError


def num_classes_of(model: Any) -> int:
    """Label count of the (possibly wrapped) network inside a denoiser; 0 when it is not class-conditional."""
    cfg = getattr(getattr(model, "net", None), "config", None)
    return int(getattr(cfg, "num_classes", 0) or 0)


def context_dim_of(model: Any) -> int:
    """Context width of the (possibly wrapped) network's cross-attention; 0 when it takes no text context."""
    cfg = getattr(getattr(model, "net", None), "config", None)
    return int(getattr(cfg, "context_dim", 0) or 0)


def null_condition(cond: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    """The unconditional counterpart of ``cond`` (Ho & Salimans 2022): null label, empty context; images kept."""
    out = dict(cond)
    if cond.get("y") is not None:
        out["y"] = torch.full_like(torch.as_tensor(cond["y"]), num_classes)
    if cond.get("context") is not None:
        ctx = cond["context"]
        out["context"] = torch.zeros_like(ctx)
        out["context_mask"] = torch.zeros(ctx.shape[:2], dtype=torch.bool, device=ctx.device)
    return out


def cat_conditions(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Concatenate two conditions along the batch: [a; b] for every tensor key (None stays None)."""
    keys = set(a) | set(b)
    out: dict[str, Any] = {}
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if va is None and vb is None:
            out[k] = None
        elif va is None or vb is None:
            raise ValueError(f"condition key {k!r} is set in one branch only")
        else:
            out[k] = torch.cat([torch.as_tensor(va), torch.as_tensor(vb)])
    return out


__all__ = ["GuidedDenoiser", "num_classes_of", "context_dim_of", "null_condition", "cat_conditions"]
