"""Conditioned-model tasks: super-resolution with an SR3 run (Saharia et al. 2021) and colorization (Saharia et al. 2022)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import samplers
from .inpaint import check_image


def superres(model: Any, low: Tensor, conditioning: Any, *, sampler: str = "ddim", steps: int = 50,
             generator: torch.Generator | None = None, level: float | None = None, prompts: list[str] | None = None,
             **options: Any) -> Tensor:
    """High-res samples [B, C, scale h, scale w] of low-res images ``low`` [B, C, h, w] in [-1, 1] (SR3, sec. 2.3).

    ``conditioning`` is the run's :class:`~difflab.training.conditioning.SuperResConditioning` (its scale and
    channels); the sampler starts from the schedule's prior.  ``level`` is the noise-conditioning augmentation
    level of a run trained with it (default 0.2, Ho et al. 2022's low fixed level; 0 for other runs).  ``prompts``
    (one per image) are the captions of a text-conditional SR run (Saharia et al. 2022); None: the empty caption.
    """
    low = check_image(low)
    if getattr(conditioning, "kind", None) != "superres":
        raise ValueError("superres needs a super-resolution run's conditioning (trained with task = superres)")
    device = low.device
    if level is None:
        level = 0.2 if getattr(conditioning, "augment", False) else 0.0
    try:
        if prompts is not None and not hasattr(conditioning, "text"):
            raise ValueError("prompts: this super-resolution run is not text-conditional")
        extra = {"prompts": prompts} if hasattr(conditioning, "text") else {}
        cond = conditioning.of_low(low, device, level=level, generator=generator, **extra)
    except Exception as e:  # a UserError from the conditioning: the same message as a ValueError here
        raise ValueError(str(e)) from None
    B, _, H, W = cond["image"].shape
    C = low.shape[1]
    x_T = model.schedule.sample_prior((B, C, H, W), generator=generator, device=device, dtype=low.dtype)
    return samplers.sample(model, x_T, sampler=sampler, steps=steps, cond=cond, generator=generator, **options)


def colorize(model: Any, gray: Tensor, conditioning: Any, *, sampler: str = "ddim", steps: int = 50,
             generator: torch.Generator | None = None, **options: Any) -> Tensor:
    """Colour samples [B, 3, H, W] of grayscale images ``gray`` [B, 1, H, W] in [-1, 1] with a colorization run (Palette)."""
    gray = check_image(gray)
    if getattr(conditioning, "kind", None) != "colorize":
        raise ValueError("colorize needs a colorization run's conditioning (trained with task = colorize)")
    cond = conditioning.of_gray(gray, gray.device)
    B, _, H, W = gray.shape
    x_T = model.schedule.sample_prior((B, 3, H, W), generator=generator, device=gray.device, dtype=gray.dtype)
    return samplers.sample(model, x_T, sampler=sampler, steps=steps, cond=cond, generator=generator, **options)
