"""Image-to-image tasks as wrappers over the denoiser/sampler contract: inpainting (RePaint), SDEdit, uncropping, panoramas;
super-resolution samples an SR3 run (its conditioning lives in :mod:`difflab.training.conditioning`); a cascade
(:mod:`difflab.training.cascade`) chains a base run and SR runs.

Each takes any denoiser D(x_t, t, cond) -> x_0 with a ``.schedule`` and any registered sampler by name; none
changes a sampler (docs/tasks.md).
"""
from __future__ import annotations

from .inpaint import REPAINT, Known, inpaint, inpaint_conditioned, repaint_plan
from .sdedit import sdedit
from .superres import colorize, superres
from .uncrop import extend, panorama, uncrop

__all__ = ["inpaint", "inpaint_conditioned", "sdedit", "uncrop", "panorama", "superres", "colorize", "extend", "repaint_plan", "Known", "REPAINT"]
