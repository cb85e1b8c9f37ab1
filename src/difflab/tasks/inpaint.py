"""Training-free inpainting on any unconditional denoiser, with RePaint's resampling schedule (Lugmayr et al. 2022).

The known pixels enter through the denoiser (:class:`Known`): the wrapped model sees there a fresh draw of
q(x_t | x_0) at the level of each call (RePaint's re-noising of the known image, eq. 8) and returns the known
pixels as its x_0 estimate there.  Every sampler's update is elementwise in the state and the x_0 estimate, so
the unknown pixels follow the sampler given a known region at the right noise level, with any sampler and
without touching it.  Resampling (r > 1) runs the sampler over a block of j levels, diffuses the state back up
the same j levels with q(x_t | x_s) (eq. 9 of the paper, the forward transition) and repeats, r times per
block; r = 1 is plain replacement in one sampler call, which is biased (docs/tasks.md).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .. import samplers
from ..samplers import grids


class Known:
    """D'(x_t, t) = m x_known + (1 - m) D(m x~_t + (1 - m) x_t, t): the known image is D's x_0 estimate where the
    mask m is 1, and the network sees there x~_t = alpha_t x_known + sigma_t eps, a fresh draw of q(x_t | x_0)
    at every call (RePaint's re-noising of the known region, Lugmayr et al. 2022, eq. 8), eps from ``generator``;
    ``fresh=False`` shows the network the sampler's own state there instead."""

    def __init__(self, model: Any, image: Tensor, mask: Tensor, generator: torch.Generator | None = None,
                 fresh: bool = True):
        self.model, self.schedule, self.image, self.mask = model, model.schedule, image, mask
        self.generator, self.fresh = generator, fresh and bool(mask.any())

    def __call__(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        m = self.mask.to(x)
        if self.fresh:
            x = m * self._noised(x, t) + (1 - m) * x
        d = self.model(x, t, cond)
        return m.to(d) * self.image.to(d) + (1 - m.to(d)) * d

    def _noised(self, x: Tensor, t: Tensor) -> Tensor:
        """A fresh draw of q(x_t | x_known) = N(alpha_t x_known, sigma_t^2 I) shaped like x."""
        tt = torch.as_tensor(t, dtype=torch.float64, device=x.device).reshape(-1)
        a, s = self.schedule.alpha_sigma(tt.expand(x.shape[0]) if tt.numel() == 1 else tt)
        shape = (-1,) + (1,) * (x.ndim - 1)
        where = self.generator.device if self.generator is not None else torch.device("cpu")
        eps = torch.randn(x.shape, generator=self.generator, dtype=x.dtype, device=where).to(x.device)
        return a.to(x).reshape(shape) * self.image.to(x) + s.to(x).reshape(shape) * eps


def check_mask(image: Tensor, mask: Tensor | Any) -> Tensor:
    """The mask as a 0/1 tensor like image (1 = keep, 0 = generate); ValueError naming both shapes if it does not broadcast."""
    m = torch.as_tensor(mask)
    if m.dtype == torch.bool:
        m = m.to(image.dtype)
    m = m.to(device=image.device, dtype=image.dtype)
    try:
        torch.broadcast_shapes(m.shape, image.shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(m.shape)} does not fit the image of shape {tuple(image.shape)}") from None
    if torch.broadcast_shapes(m.shape, image.shape) != image.shape:
        raise ValueError(f"mask of shape {tuple(m.shape)} is larger than the image of shape {tuple(image.shape)}")
    if not bool(((m == 0) | (m == 1)).all()):
        raise ValueError("mask values must be 0 (generate) or 1 (keep)")
    return m


def check_image(image: Tensor) -> Tensor:
    """A batch [B, ...] of at least two dimensions; a single [C, H, W] image is refused (add a batch dimension)."""
    if not isinstance(image, Tensor) or image.ndim < 2:
        raise ValueError(f"image must be a tensor [B, ...] with a batch dimension, got "
                         f"{tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
    if not bool(torch.isfinite(image).all()):
        raise ValueError("image holds non-finite values")
    return image


def sampler_grid(model: Any, sampler: str, steps: int, grid: str | Tensor | None) -> Tensor:
    """The grid :func:`difflab.samplers.sample` would use for this sampler and budget (or the explicit one)."""
    if isinstance(grid, Tensor):
        return grid.to(torch.float64)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    info = samplers.get(sampler)
    return grids.get(grid or info.grid, model.schedule, samplers.n_levels(sampler, steps))


def renoise(schedule: Any, x: Tensor, sigma_from: float, sigma_to: float, generator: torch.Generator | None) -> Tensor:
    """One draw of q(x_t | x_s) from level sigma_from (s) up to sigma_to (t): alpha_{t|s} x_s + sigma_{t|s} z (Kingma et al. 2021, eq. 3-4)."""
    t = schedule.t_from_sigma_ve(torch.tensor([sigma_to, sigma_from], dtype=torch.float64))
    a, s = schedule.alpha_sigma(t)
    a_ts = float(a[0] / a[1])
    var = max(float(s[0]) ** 2 - a_ts**2 * float(s[1]) ** 2, 0.0)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device if generator else "cpu")
    return a_ts * x + var**0.5 * z.to(x.device)


def run_segment(model: Any, x: Tensor, sigmas: Tensor, sampler: str, cond: Any, generator: torch.Generator | None,
                options: dict[str, Any]) -> Tensor:
    """Run ``sampler`` from sigmas[0] down to sigmas[-1]; a grid ending above 0 stops there (docs/samplers.md)."""
    with torch.no_grad():
        return samplers.get(sampler).fn(model, x, sigmas, cond=cond, generator=generator, callback=None,
                                        **options).to(x.dtype)


def repaint_plan(n: int, jump: int, resample: int) -> list[tuple[int, int, bool]]:
    """RePaint's schedule over level indices 0..n (n = the final 0): (start, end, go_back) segments (Lugmayr et al. 2022, Alg. 1).

    Blocks of ``jump`` levels over 0..n-1; each is sampled ``resample`` times, diffusing back to its start between
    passes; the last step to sigma = 0 is never resampled.  ``resample = 1`` gives one segment 0..n.
    """
    if jump < 1:
        raise ValueError(f"jump must be >= 1, got {jump}")
    if resample < 1:
        raise ValueError(f"resample must be >= 1, got {resample}")
    if resample == 1 or n < 2:
        return [(0, n, False)]
    plan: list[tuple[int, int, bool]] = []
    a = 0
    while a < n - 1:
        b = min(a + jump, n - 1)
        plan += [(a, b, True)] * (resample - 1) + [(a, b, False)]
        a = b
    plan.append((n - 1, n, False))
    return plan


def fill(model: Any, x: Tensor, sigmas: Tensor, image: Tensor, mask: Tensor, *, sampler: str, jump: int,
         resample: int, cond: Any, generator: torch.Generator | None, options: dict[str, Any]) -> Tensor:
    """Sample from state x at sigmas[0] with the known pixels imposed (:class:`Known`) along RePaint's plan; the known pixels pasted at the end."""
    known = Known(model, image, mask, generator)
    s = sigmas.to(torch.float64)
    for a, b, back in repaint_plan(len(s) - 1, jump, resample):
        seg = s[a:b + 1]
        x = run_segment(known, x, seg, sampler, cond, generator, options)
        if back:
            x = renoise(model.schedule, x, float(s[b]), float(s[a]), generator)
    return mask * image + (1 - mask) * x


def start_state(schedule: Any, image: Tensor, mask: Tensor, sigma: float, generator: torch.Generator | None,
                prior: bool) -> Tensor:
    """x at level sigma: the known pixels drawn from q(x_t | x_0); the rest from the prior (``prior``) or from q(x_t | image)."""
    where = generator.device if generator is not None else torch.device("cpu")
    t = schedule.t_from_sigma_ve(torch.tensor([sigma], dtype=torch.float64)).to(image.dtype)
    eps = torch.randn(image.shape, generator=generator, dtype=image.dtype, device=where).to(image.device)
    noised = schedule.q_sample(image, t.expand(image.shape[0]).to(image.device), eps)
    if not prior:
        return noised
    z = schedule.sample_prior(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    return mask * noised + (1 - mask) * z


#: RePaint's (jump length j, resamples r) by default: inpaint(), ``difflab edit inpaint`` and the page.
REPAINT = (5, 10)


def inpaint(model: Any, image: Tensor, mask: Tensor | Any, *, sampler: str = "ddim", steps: int = 50,
            grid: str | Tensor | None = None, jump: int = REPAINT[0], resample: int = REPAINT[1], cond: Any = None,
            generator: torch.Generator | None = None, **options: Any) -> Tensor:
    """Fill the pixels where ``mask`` is 0 given those where it is 1 (RePaint, Lugmayr et al. 2022, Alg. 1: jump j, resamples r).

    ``image`` [B, ...] in the model's data coordinates, ``mask`` broadcastable to it (1 = keep, 0 = generate).
    The default r = 10, j = 5 costs about r (1 + 1/j) = 12 times the ``steps`` model calls of plain replacement
    (``resample = 1``, one pass), which is biased towards the unconditional mean (docs/tasks.md).  Any registered sampler; ``options`` go to it.  Returns a tensor like image
    whose known pixels equal the input's exactly.
    """
    image = check_image(image)
    mask = check_mask(image, mask)
    samplers.get(sampler)
    sigmas = sampler_grid(model, sampler, steps, grid)
    x = start_state(model.schedule, image, mask, float(sigmas[0]), generator, prior=True)
    return fill(model, x, sigmas, image, mask, sampler=sampler, jump=jump, resample=resample, cond=cond,
                generator=generator, options=options)


def inpaint_conditioned(model: Any, image: Tensor, mask: Tensor | Any, conditioning: Any, *, sampler: str = "ddim",
                        steps: int = 50, generator: torch.Generator | None = None, **options: Any) -> Tensor:
    """Fill the holes (mask 0) with a mask-conditioned run (Palette, Saharia et al. 2022): one plain sampler call
    conditioned on the masked image and the mask; the known pixels pasted. ``conditioning`` is the run's
    :class:`~difflab.training.conditioning.InpaintConditioning`; ``mask`` broadcasts to [B, 1, H, W]."""
    image = check_image(image)
    if getattr(conditioning, "kind", None) != "inpaint":
        raise ValueError("inpaint_conditioned needs a mask-conditioned run's conditioning (trained with task = inpaint)")
    if image.ndim != 4:
        raise ValueError(f"inpaint_conditioned needs images [B, C, H, W], got shape {tuple(image.shape)}")
    m = check_mask(image[:, :1], mask)
    x_T = model.schedule.sample_prior(image.shape, generator=generator, device=image.device, dtype=image.dtype)
    out = samplers.sample(model, x_T, sampler=sampler, steps=steps, cond=conditioning.of_masked(image, m, image.device),
                          generator=generator, **options)
    return m * image + (1 - m) * out
