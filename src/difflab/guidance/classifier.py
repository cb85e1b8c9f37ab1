"""Classifier guidance (Dhariwal & Nichol 2021): a noise-conditional classifier p_phi(y | x_t, t) and its gradient
added to the score of a denoiser, as a wrapper that works with every sampler."""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.denoiser import Denoiser
from ..schedules import Schedule, append_dims
from .base import GuidedDenoiser, null_condition, num_classes_of


def same_schedule(a: Schedule, b: Schedule) -> bool:
    """True when two schedules have the same config (then times need no mapping)."""
    return a is b or a.config() == b.config()


def to_schedule(x: Tensor, t: Tensor, src: Schedule, dst: Schedule) -> tuple[Tensor, Tensor]:
    """Re-express x_t at time t of ``src`` as the point of equal logSNR in ``dst``: (x alpha_dst / alpha_src, t_dst) (Kingma et al. 2021)."""
    if same_schedule(src, dst):
        return x, t
    t64 = t.detach().double()
    t_dst = dst.t_from_log_snr(src.log_snr(t64)).clamp(dst.t_min, dst.t_max)
    ratio = dst.alpha(t_dst) / src.alpha(t64)
    return x * append_dims(ratio.to(x.dtype), x.ndim), t_dst.to(x.dtype)


def log_prob_grad(classifier: nn.Module, x: Tensor, t: Tensor, y: Tensor, schedule: Schedule | None = None,
                  classifier_schedule: Schedule | None = None) -> tuple[Tensor, Tensor]:
    """(grad_x log p_phi(y | x_t, t), log p_phi(y | x_t, t)) for labels y [B] (Dhariwal & Nichol 2021, Alg. 1).

    With two schedules, x_t at time t of ``schedule`` is first mapped to ``classifier_schedule`` (equal logSNR).
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        xc, tc = (xg, t) if schedule is None or classifier_schedule is None else \
            to_schedule(xg, t, schedule, classifier_schedule)
        logp = F.log_softmax(classifier(xc, tc), dim=1).gather(1, y.long().view(-1, 1)).squeeze(1)
        (grad,) = torch.autograd.grad(logp.sum(), xg)
    return grad, logp.detach()


class ClassifierGuidance(GuidedDenoiser):
    """Score + s grad_x log p_phi(y | x_t) (Dhariwal & Nichol 2021, eq. 12 / Alg. 2); in x_0 space x0 += s sigma^2 / alpha grad.

    Target labels come from ``cond["y"]``; rows holding the inner model's null label are left unguided, so an
    outer classifier-free wrapper may batch its unconditional branch through this one.  ``conditional`` says whether the inner model sees them too
    (default: when it is class-conditional); when False a class-conditional inner model gets the null label,
    i.e. its unconditional branch.  The classifier may be trained under another schedule: its input is mapped
    to the time of equal logSNR.  At s = 0 the wrapper returns the inner model's x_0 unchanged.
    """

    def __init__(self, model: Denoiser, classifier: nn.Module, scale: float,
                 classifier_schedule: Schedule | None = None, conditional: bool | None = None):
        super().__init__(model, "x0")
        self.classifier = classifier
        self.scale = float(scale)
        self.classifier_schedule = classifier_schedule if classifier_schedule is not None else model.schedule
        k = num_classes_of(model)
        if conditional and not k:
            raise ValueError("conditional=True needs a class-conditional inner model")
        self.conditional = bool(k) if conditional is None else conditional
        self._null = k

    def inner_condition(self, cond: Any) -> Any:
        """The condition the inner model sees: labels kept, replaced by the null label, or dropped."""
        if not isinstance(cond, Mapping) or cond.get("y") is None or self.conditional:
            return cond
        if self._null:
            return null_condition({"y": cond["y"]}, self._null) | {k: v for k, v in cond.items() if k != "y"}
        return {k: v for k, v in cond.items() if k != "y"} or None

    def guided(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        x0 = self.model(x, t, self.inner_condition(cond))
        if self.scale == 0.0:
            return x0
        y = cond.get("y") if isinstance(cond, Mapping) else None
        if y is None:
            raise ValueError("classifier guidance needs the target labels in cond['y']")
        y = torch.as_tensor(y, device=x.device).expand(x.shape[0])
        k = getattr(getattr(self.classifier, "config", None), "num_classes", None)
        null = (y == self._null) if self._null else torch.zeros_like(y, dtype=torch.bool)
        if k is not None and bool((((y < 0) | (y >= k)) & ~null).any()):
            raise ValueError(f"classifier guidance: labels must lie in 0..{k - 1}")
        # rows with the null label (e.g. the unconditional half of an outer CFG pass) are not guided
        grad, _ = log_prob_grad(self.classifier, x, t, torch.where(null, 0, y), self.model.schedule,
                                self.classifier_schedule)
        grad = grad * append_dims((~null).to(grad.dtype), grad.ndim)
        a, s = self.model.coefficients(t, x)
        return x0 + self.scale * s**2 / a * grad


def classifier_guided(model: Denoiser, classifier: nn.Module, scale: float,
                      classifier_schedule: Schedule | None = None, conditional: bool | None = None) -> Denoiser:
    """The classifier-guided denoiser; s = 0 gives the model itself."""
    return ClassifierGuidance(model, classifier, scale, classifier_schedule, conditional)


__all__ = ["ClassifierGuidance", "classifier_guided", "log_prob_grad",
           "to_schedule", "same_schedule"]
