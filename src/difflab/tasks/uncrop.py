"""Uncropping and panoramas: extend an image by inpainting new borders in windows of the model's size (Saharia et al. 2022, Palette, sec. 5).

The canvas is covered by windows of the model's size laid at half-window strides; the window holding the most
known pixels among those with unknown ones is inpainted next (its known pixels, the overlap with what exists,
are conditioned on, never blended afterwards) and its pixels become known, until none are left.  A panorama is
the same with the canvas widened to the wanted width: repeated 50% extensions.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .inpaint import check_image, inpaint


def _starts(length: int, window: int) -> list[int]:
    """Window offsets along one axis: every half window, plus one flush with the far edge."""
    stride = max(1, window // 2)
    return sorted(set(range(0, length - window + 1, stride)) | {length - window})


def extend(model: Any, canvas: Tensor, known: Tensor, size: tuple[int, int], **options: Any) -> Tensor:
    """Fill the pixels of ``canvas`` [B, C, H', W'] where ``known`` [H', W'] is False, window by window (size = (h, w) the model's)."""
    h, w = size
    H, W = canvas.shape[-2:]
    if H < h or W < w:
        raise ValueError(f"canvas {H}x{W} is smaller than the model's {h}x{w} window")
    known = known.clone().bool()
    canvas = canvas.clone()
    windows = [(y, x) for y in _starts(H, h) for x in _starts(W, w)]
    while not bool(known.all()):
        best, best_known = None, -1
        for y, x in windows:
            k = known[y:y + h, x:x + w]
            if bool(k.all()):
                continue
            n = int(k.sum())
            if n > best_known:
                best, best_known = (y, x), n
        assert best is not None  # the windows cover the canvas
        y, x = best
        m = known[y:y + h, x:x + w].to(canvas.dtype)
        canvas[..., y:y + h, x:x + w] = inpaint(model, canvas[..., y:y + h, x:x + w], m, **options)
        known[y:y + h, x:x + w] = True
    return canvas


def uncrop(model: Any, image: Tensor, *, left: int = 0, right: int = 0, top: int = 0, bottom: int = 0,
           size: tuple[int, int] | None = None, **options: Any) -> Tensor:
    """``image`` [B, C, H, W] extended by the given pixel counts on each side, the new border inpainted (:func:`extend`; options go to :func:`~difflab.tasks.inpaint`).

    ``size`` is the model's (height, width) (default: the image's); the result is [B, C, H + top + bottom,
    W + left + right] with the input's pixels unchanged.
    """
    image = check_image(image)
    if image.ndim != 4:
        raise ValueError(f"uncrop needs images [B, C, H, W], got shape {tuple(image.shape)}")
    for name, v in (("left", left), ("right", right), ("top", top), ("bottom", bottom)):
        if int(v) != v or v < 0:
            raise ValueError(f"{name} must be a whole number of pixels >= 0, got {v}")
    B, C, H, W = image.shape
    size = tuple(size) if size is not None else (H, W)
    canvas = torch.zeros((B, C, H + top + bottom, W + left + right), dtype=image.dtype, device=image.device)
    canvas[..., top:top + H, left:left + W] = image
    known = torch.zeros(canvas.shape[-2:], dtype=torch.bool)
    known[top:top + H, left:left + W] = True
    return extend(model, canvas, known, size, **options)


def panorama(model: Any, image: Tensor, width: int, *, size: tuple[int, int] | None = None, **options: Any) -> Tensor:
    """A strip ``width`` pixels wide grown rightwards from ``image`` by overlapping half-window extensions (Palette's panoramas)."""
    image = check_image(image)
    if image.ndim != 4:
        raise ValueError(f"panorama needs images [B, C, H, W], got shape {tuple(image.shape)}")
    W = image.shape[-1]
    if int(width) != width or width < W:
        raise ValueError(f"width must be a whole number at least the image's width {W}, got {width}")
    return uncrop(model, image, right=int(width) - W, size=size, **options)
