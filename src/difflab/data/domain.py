"""Data domains: what kind of thing a model makes (images, points, latents) and what follows from it.

A domain owns the rules written once here instead of at every consumer: which x_0 predictions are clamped to the
data range ("clamp images, never latents"), how samples are written (a PNG grid or scatter, an .npz of uint8
images or float32 points), the preview picture, the default network, the key of a stored grid, and the map from
the model's space to the data (a latent domain decodes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from torch import Tensor

from ..errors import UserError
from ..utils.images import save_image_grid, save_scatter, to_uint8

Denoised = Literal["clip", "none"] | str  # 'threshold:P' too (dynamic thresholding, Saharia et al. 2022)
SUFFIXES = (".png", ".npz")


@dataclass(frozen=True)
class Domain:
    """Base: points [N, D] in the model's own space; nothing is clamped."""

    shape: tuple[int, ...]
    name = "points"
    network = "mlp"  # the default network of a diffusion run ('auto')
    preview_count = 2000  # samples in a training preview

    @property
    def clamps(self) -> bool:
        """True when the sampler's x_0 predictions may be clamped to the data range [-1, 1]."""
        return False

    def denoised_mode(self, no_clip: bool = False, threshold: float | None = None) -> str:
        """How sampling treats x_0: 'clip', 'none' or 'threshold:P' (the key of a stored grid, samplers.tuned)."""
        from ..samplers.tuned import denoised_mode

        if threshold is not None and not self.clamps:
            raise UserError(f"--threshold: {self.name} are never thresholded")
        return denoised_mode(self.clamps, no_clip, threshold)

    def denoiser(self, model: Any, no_clip: bool = False, threshold: float | None = None) -> Any:
        """``model`` wrapped as sampling in this domain uses it: Clamped / Thresholded for images, as is otherwise."""
        from ..models.denoiser import Clamped, Thresholded

        mode = self.denoised_mode(no_clip, threshold)
        if mode == "clip":
            return Clamped(model)
        return Thresholded(model, float(threshold)) if mode.startswith("threshold:") else model

    def to_data(self, x: Tensor) -> Tensor:
        """Samples in the model's space -> the data's (identity except for latents)."""
        return x

    def arrays(self, x: Tensor) -> dict[str, np.ndarray]:
        """The .npz arrays of samples in the data's space."""
        return {"samples": x.detach().cpu().numpy().astype(np.float32)}

    def picture(self, x: Tensor, path: Path, reference: Tensor | None = None, title: str = "") -> None:
        """A scatter plot of the points (over ``reference`` data, if given)."""
        save_scatter(x, path, reference=reference, title=title)

    def write(self, x: Tensor, path: str | Path, **picture: Any) -> None:
        """Samples in the model's space to FILE.png (picture) or FILE.npz (arrays), written atomically."""
        from ..training.checkpoint import atomic_write

        path = Path(path)
        if path.suffix.lower() not in SUFFIXES:
            raise UserError(f"{path}: the file must end in .png or .npz")
        data = self.to_data(x)
        if path.suffix.lower() == ".png":
            atomic_write(path, lambda p: self.picture(data, p, **picture))
        else:
            arrays = self.arrays(data)
            atomic_write(path, lambda p: np.savez(p, **arrays))


@dataclass(frozen=True)
class PointDomain(Domain):
    """Low-dimensional points [N, D] (toy data): never clamped, scatter plots, an MLP."""


@dataclass(frozen=True)
class ImageDomain(Domain):
    """Images [N, C, H, W] in [-1, 1]: x_0 clamped while sampling, PNG grids and uint8 arrays, a U-Net."""

    name = "images"
    network = "unet"
    preview_count = 64

    @property
    def clamps(self) -> bool:
        return True

    def arrays(self, x: Tensor) -> dict[str, np.ndarray]:
        return {"images": to_uint8(x)}

    def picture(self, x: Tensor, path: Path, reference: Tensor | None = None, title: str = "",
                nrow: int | None = None) -> None:
        """A grid of the images (clamped to [-1, 1])."""
        save_image_grid(x.clamp(-1, 1), path, nrow=nrow)


@dataclass(frozen=True)
class LatentDomain(ImageDomain):
    """Latents [N, c, h, w] of an autoencoder: never clamped while sampling, decoded to images to be written."""

    decode: Callable[[Tensor], Tensor] | None = field(default=None, compare=False)
    name = "latents"

    @property
    def clamps(self) -> bool:
        return False

    def to_data(self, x: Tensor) -> Tensor:
        return self.decode(x) if self.decode is not None else x


def domain_of(run: Any) -> Domain:
    """The domain of a loaded run (``shape``; ``latent`` and ``decode`` for latent diffusion) or of a Dataset (``kind``)."""
    shape = tuple(run.shape)
    if getattr(run, "latent", False):
        return LatentDomain(shape, decode=run.decode)
    if getattr(run, "kind", None) == "image" or len(shape) == 3:
        return ImageDomain(shape)
    return PointDomain(shape)


__all__ = ["Domain", "PointDomain", "ImageDomain", "LatentDomain", "domain_of", "SUFFIXES"]
