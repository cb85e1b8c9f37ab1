"""Datasets by spec: ``digits``, ``toy:NAME``, ``mnist:DIR`` or a path to a folder of images.

Images come as float32 [N, C, H, W] scaled to [-1, 1]; 2-D toy data as float32 [N, 2].
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from . import images as _images
from .toy import TOYS, toy

Split = Literal["train", "test", "all"]
TOY_SIZE = {"train": 20000, "test": 5000}


@dataclass
class Dataset:
    """Training data: ``x`` [N, C, H, W] in [-1, 1] (images) or [N, D] (points); ``y`` labels [N] or None."""

    x: Tensor
    y: Tensor | None
    spec: str
    class_names: list[str] | None = None

    @property
    def kind(self) -> Literal["image", "points"]:
        return "image" if self.x.ndim == 4 else "points"

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(self.x.shape[1:])

    def __len__(self) -> int:
        return len(self.x)


def to_unit(x_uint8: np.ndarray) -> Tensor:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [-1, 1]."""
    return torch.from_numpy(x_uint8.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def to_uint8(x: Tensor) -> np.ndarray:
    """float [N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C] (values outside are clipped)."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _split(n: int, split: Split, test_fraction: float, seed: int = 0) -> np.ndarray:
    """Fixed, seeded train/test partition of n items."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    if split == "all":
        return np.sort(perm)
    return np.sort(perm[n_test:] if split == "train" else perm[:n_test])


def load(spec: str, split: Split = "train", image_size: int | None = None, channels: int | None = None,
         seed: int = 0) -> Dataset:
    """Load a dataset by spec (see module docstring).  ``image_size`` applies to image folders (default 32)."""
    if split not in ("train", "test", "all"):
        raise DataError(f"unknown split {split!r}; choose train, test or all")
    if spec == "digits":
        x, y = _images.digits()
        idx = _split(len(x), split, test_fraction=1 / 6)
        return Dataset(to_unit(x[idx]), torch.from_numpy(y[idx]), spec, [str(i) for i in range(10)])
    if spec.startswith("toy:"):
        name = spec[4:]
        if name not in TOYS:
            raise DataError(f"unknown toy distribution {name!r} in --data {spec}; choose one of {', '.join(TOYS)}")
        n = TOY_SIZE["test" if split == "test" else "train"]
        pts = toy(name, n, seed=seed + (1 if split == "test" else 0))
        return Dataset(torch.from_numpy(pts), None, spec)
    if spec == "mnist" or spec.startswith("mnist:"):
        directory = spec[6:]
        if not directory:
            raise DataError("--data mnist needs a directory of IDX files: mnist:DIR")
        parts = ["train", "test"] if split == "all" else [split]
        xs, ys = zip(*(_images.mnist(directory, p) for p in parts))
        return Dataset(to_unit(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), spec,
                       [str(i) for i in range(10)])
    path = Path(spec)
    if not path.exists():
        raise DataError(f"--data {spec}: no such file or directory (expected digits, toy:NAME, mnist:DIR or an image folder)")
    x, y, classes = _images.image_folder(path, image_size or 32, channels)
    idx = _split(len(x), split, test_fraction=0.1) if len(x) >= 10 else np.arange(len(x))
    return Dataset(to_unit(x[idx]), torch.from_numpy(y[idx]), spec, classes)


__all__ = ["Dataset", "load", "toy", "TOYS", "to_unit", "to_uint8"]
