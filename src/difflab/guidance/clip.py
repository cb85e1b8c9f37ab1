"""CLIP-style guidance (GLIDE, Nichol et al. 2022, sec. 2.4): the gradient of a noisy CLIP model's image-caption
similarity added to the score, as a denoiser wrapper (the model: difflab.models.clip; its training: difflab.training.clip)."""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..models.clip import NoisyClip
from ..models.denoiser import Denoiser
from ..schedules import Schedule
from .base import GuidedDenoiser
from .classifier import to_schedule


def similarity_grad(clip: NoisyClip, x: Tensor, t: Tensor, text: Tensor, schedule: Schedule | None = None,
                    clip_schedule: Schedule | None = None) -> tuple[Tensor, Tensor]:
    """(grad_x f(x_t, t) . g(c), f(x_t, t) . g(c)) for unit text features text [B or 1, E] (Nichol et al. 2022, eq. 5)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        xc, tc = (xg, t) if schedule is None or clip_schedule is None else to_schedule(xg, t, schedule, clip_schedule)
        sim = (clip.image_features(xc, tc) * text.to(x.dtype)).sum(1)
        (grad,) = torch.autograd.grad(sim.sum(), xg)
    return grad, sim.detach()


class ClipGuidance(GuidedDenoiser):
    """Score + s grad_x (f(x_t, t) . g(c)) (GLIDE, Nichol et al. 2022, eq. 5); in x_0 space x0 += s sigma^2 / alpha grad.

    ``prompts`` (one, or one per sample) fix the caption c; ``cond`` is passed unchanged to the inner model.
    At s = 0 the wrapper returns the inner model's x_0 unchanged.
    """

    def __init__(self, model: Denoiser, clip: NoisyClip, prompts: Sequence[str] | str, scale: float,
                 clip_schedule: Schedule | None = None):
        super().__init__(model, "x0")
        self.clip = clip
        self.scale = float(scale)
        self.clip_schedule = clip_schedule if clip_schedule is not None else model.schedule
        with torch.no_grad():
            self.register_buffer("text", clip.text_features([prompts] if isinstance(prompts, str) else list(prompts)),
                                 persistent=False)

    def guided(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        x0 = self.model(x, t, cond)
        if self.scale == 0.0:
            return x0
        if self.text.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"CLIP guidance has {self.text.shape[0]} prompts for a batch of {x.shape[0]}")
        grad, _ = similarity_grad(self.clip, x, t, self.text, self.model.schedule, self.clip_schedule)
        a, s = self.model.coefficients(t, x)
        return x0 + self.scale * s**2 / a * grad


__all__ = ["similarity_grad", "ClipGuidance"]
