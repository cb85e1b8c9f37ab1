"""Datasets by spec: ``digits``, ``toy:NAME``, ``mnist:DIR`` or a path to a folder of images; ``color:SPEC`` colours a
grayscale image set with a seeded foreground/background pair per image (for colorization); ``size:N:SPEC`` shrinks
any image set to N x N (the base and middle stages of a cascade, e.g. ``size:7:mnist:DIR``); ``packed:DIR`` (or a
folder holding packed.json) opens a set packed by ``difflab prepare-data`` as a memory map (:mod:`.packed`).
An image folder with ``metadata.jsonl``, ``metadata.csv`` or ``.txt`` sidecars carries captions
(:mod:`difflab.data.captions`).

Images are held as uint8 [N, C, H, W] and converted per batch to float32 in [-1, 1] (``Dataset.batch``), a
quarter of the memory of float storage; 2-D toy data is float32 [N, 2].
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from . import captions as _captions
from ..utils.images import to_uint8
from . import images as _images
from .toy import TOYS, toy

Split = Literal["train", "test", "all"]
TOY_SIZE = {"train": 20000, "test": 5000}
_CHUNK = 1 << 22  # elements converted at a time by Dataset.x (bounds the int64 index buffer)


class Dataset:
    """Training data: images [N, C, H, W] or points [N, D], with labels ``y`` [N] or None and, for a captioned
    image folder (docs/data.md), ``captions``: a tuple of one or more captions per example.

    ``stored`` holds the examples as given: uint8 images (0..255) stay uint8 and are converted to [-1, 1] per
    batch; floating tensors (points, or images already in [-1, 1]) are kept as float32 and used as given.
    """

    def __init__(self, x: Tensor, y: Tensor | None, spec: str, class_names: list[str] | None = None,
                 captions: list[tuple[str, ...]] | None = None):
        if x.dtype == torch.uint8:
            if x.ndim != 4:
                raise DataError(f"{spec}: uint8 data must be images [N, C, H, W], got shape {tuple(x.shape)}")
            self.stored = x.contiguous()
        elif x.is_floating_point():
            self.stored = x.float()
        else:
            raise DataError(f"{spec}: examples must be uint8 images or floating-point tensors, got {x.dtype}")
        if y is not None and len(y) != len(x):
            raise DataError(f"{spec}: {len(x)} examples but {len(y)} labels")
        if captions is not None and len(captions) != len(x):
            raise DataError(f"{spec}: {len(x)} examples but {len(captions)} captions")
        self.y = y
        self.captions = captions  # each example's captions (one or more), from a captioned image folder
        self.spec = spec
        self.class_names = class_names

    def batch(self, idx: Tensor) -> Tensor:
        """float32 examples ``idx``: uint8 images mapped to [-1, 1] exactly as ``to_unit`` maps them."""
        part = self.stored[idx]
        return torch.take(_UNIT_TABLE, part.long()) if part.dtype == torch.uint8 else part

    def batches(self, idx: Tensor | None = None, batch_size: int = 4096) -> Iterator[Tensor]:
        """float32 examples ``idx`` (default all, in order), ``batch_size`` at a time: a packed set is read from its
        memory map a batch at a time and never held whole."""
        n = len(self) if idx is None else len(idx)
        for s in range(0, n, batch_size):
            yield self.batch(torch.arange(s, min(n, s + batch_size)) if idx is None else idx[s:s + batch_size])

    def std(self) -> float:
        """Standard deviation of every value of the set (unbiased, as ``x.std()``), accumulated batch by batch in
        float64 so a packed set is never materialised."""
        n, total, squares = 0, 0.0, 0.0
        for b in self.batches():
            b = b.double()
            n, total, squares = n + b.numel(), total + float(b.sum()), squares + float((b * b).sum())
        if n < 2:
            return float("nan")
        mean = total / n
        return max(squares - n * mean * mean, 0.0) ** 0.5 / (n - 1) ** 0.5

    @property
    def x(self) -> Tensor:
        """The whole set as float32: a full conversion of uint8 images (for small in-memory sets and tests; training
        and evaluation code reads ``batch`` or ``batches`` so a packed set is never loaded whole).  Float storage is
        returned as is, without a copy."""
        if self.stored.dtype != torch.uint8:
            return self.stored
        out = torch.empty(self.stored.shape, dtype=torch.float32)
        src, dst = self.stored.view(-1), out.view(-1)
        for s in range(0, src.numel(), _CHUNK):
            dst[s : s + _CHUNK] = torch.take(_UNIT_TABLE, src[s : s + _CHUNK].long())
        return out

    @property
    def kind(self) -> Literal["image", "points"]:
        return "image" if self.stored.ndim == 4 else "points"

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else 0

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example."""
        return tuple(self.stored.shape[1:])

    def __len__(self) -> int:
        return len(self.stored)

    def __repr__(self) -> str:
        return f"Dataset({self.spec!r}, {len(self)} x {self.shape}, {self.stored.dtype})"


class MappedDataset(Dataset):
    """Images computed a batch at a time from another image set: ``size:`` and ``color:`` over a memory-mapped
    (packed) set, so the wrapper never holds a copy of the set.  ``fn(uint8 rows, their indices)`` gives the
    wrapped rows as uint8; the results equal the eager wrappers' bit for bit."""

    def __init__(self, inner: Dataset, fn, spec: str):
        self.inner, self.fn = inner, fn
        self.y, self.captions, self.spec, self.class_names = inner.y, inner.captions, spec, inner.class_names
        self._shape = tuple(self.rows(torch.zeros(1, dtype=torch.long)).shape[1:])

    def rows(self, idx: Tensor) -> Tensor:
        """uint8 rows ``idx`` of the wrapped set."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        inner = self.inner.rows(idx) if isinstance(self.inner, MappedDataset) else self.inner.stored[idx]
        return self.fn(inner, idx)

    def batch(self, idx: Tensor) -> Tensor:
        return torch.take(_UNIT_TABLE, self.rows(idx).long())

    @property
    def stored(self) -> Tensor:  # type: ignore[override]
        """The whole wrapped set as uint8 (a copy: for packing a wrapped set; training reads ``batch``)."""
        return torch.cat([self.rows(torch.arange(s, min(len(self), s + 4096))) for s in range(0, len(self), 4096)])

    @property
    def x(self) -> Tensor:
        return torch.cat(list(self.batches()))

    @property
    def kind(self) -> Literal["image", "points"]:
        return "image"

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    def __len__(self) -> int:
        return len(self.inner)

    def __repr__(self) -> str:
        return f"MappedDataset({self.spec!r}, {len(self)} x {self.shape}, uint8 per batch)"


def _lazy(inner: Dataset) -> bool:
    """Whether a wrapper over ``inner`` maps it per batch (a memory-mapped or already mapped set) instead of
    building its result in memory."""
    return getattr(inner, "packed", None) is not None or isinstance(inner, MappedDataset)


def to_unit(x_uint8: np.ndarray) -> Tensor:
    """uint8 [N, H, W, C] -> float32 [N, C, H, W] in [-1, 1]."""
    return torch.from_numpy(x_uint8.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def _chw(x_uint8: np.ndarray) -> Tensor:
    """uint8 [N, H, W, C] -> uint8 [N, C, H, W] (no scaling)."""
    return torch.from_numpy(np.ascontiguousarray(x_uint8)).permute(0, 3, 1, 2).contiguous()


# to_unit of every byte value: Dataset.batch looks values up here, so it equals to_unit bit for bit
_UNIT_TABLE = to_unit(np.arange(256, dtype=np.uint8).reshape(1, 1, 256, 1)).reshape(256)


def _split(n: int, split: Split, test_fraction: float, seed: int = 0) -> np.ndarray:
    """Fixed, seeded train/test partition of n items."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    if split == "all":
        return np.sort(perm)
    return np.sort(perm[n_test:] if split == "train" else perm[:n_test])


def _keep_rows(x: np.ndarray, idx: np.ndarray, block: int = 4096) -> np.ndarray:
    """x[idx] for sorted, distinct idx, moved to the front of x in place (a view of x's memory, not a copy).

    ``x[idx]`` would hold the decoded folder twice at its peak (1.9x for a 90% train split); since idx[k] >= k,
    each block of rows reads only rows at or after the ones it overwrites.
    """
    for s in range(0, len(idx), block):
        rows = idx[s:s + block]
        x[s:s + len(rows)] = x[rows]
    return x[:len(idx)]


def _colors(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """The seeded foreground and background colours [n, 3, 1, 1] of ``colored``'s n images."""
    rng = np.random.default_rng(10_007 + seed)
    fg = torch.from_numpy(rng.integers(96, 256, (n, 3, 1, 1))).float()
    bg = torch.from_numpy(rng.integers(0, 64, (n, 3, 1, 1))).float()
    return fg, bg


def _paint(x: Tensor, fg: Tensor, bg: Tensor) -> Tensor:
    """uint8 [N, 1, H, W] -> [N, 3, H, W]: v -> bg + (fg - bg) v / 255 per image, rounded to uint8."""
    return (bg.float() + (fg.float() - bg.float()) * x.float() / 255).round().clamp(0, 255).to(torch.uint8)


def colored(x: Tensor, seed: int = 0) -> Tensor:
    """uint8 [N, 1, H, W] -> [N, 3, H, W]: v -> bg + (fg - bg) v / 255 with a seeded random bright foreground
    (each channel 96..255) and dark background (0..63) colour per image, the same for a given N and seed."""
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 1:
        raise DataError(f"color: needs grayscale uint8 images [N, 1, H, W], got {tuple(x.shape)} {x.dtype}")
    return _paint(x, *_colors(len(x), seed))


def shrink(x: Tensor, n: int, spec: str = "") -> Tensor:
    """uint8 images [N, C, H, W] -> [N, C, n, n]: the mean of K x K blocks when n divides both sides by K (the
    low-res image of SR training), Pillow's box filter otherwise; rounded to uint8."""
    h, w = x.shape[-2:]
    if n > min(h, w):
        raise DataError(f"--data {spec}: size {n} is larger than the images ({h}x{w}); size: only shrinks")
    if h % n == 0 and w % n == 0 and h // n == w // n:
        k = h // n
        return torch.nn.functional.avg_pool2d(x.float(), k).round().clamp(0, 255).to(torch.uint8)
    from PIL import Image

    out = np.stack([np.stack([np.asarray(Image.fromarray(c).resize((n, n), Image.Resampling.BOX)) for c in img])
                    for img in x.numpy()])
    return torch.from_numpy(out)


def load(spec: str, split: Split = "train", image_size: int | None = None, channels: int | None = None,
         seed: int = 0) -> Dataset:
    """Load a dataset by spec (see module docstring).  ``image_size`` applies to image folders (default 32)."""
    if split not in ("train", "test", "all"):
        raise DataError(f"unknown split {split!r}; choose train, test or all")
    if spec.startswith("size:"):  # an image set shrunk to N x N (cascade stages)
        n_text, _, rest = spec[5:].partition(":")
        if not n_text.isdigit() or int(n_text) < 2 or not rest:
            raise DataError(f"--data {spec}: expected size:N:SPEC with an integer side N >= 2, e.g. size:14:mnist:DIR")
        inner = load(rest, split, image_size, channels, seed)
        if inner.kind != "image":
            raise DataError(f"--data {spec}: size: applies to images, and {rest!r} holds points")
        n = int(n_text)
        if _lazy(inner):  # shrink's own check runs on the first row when the wrapper takes its shape
            return MappedDataset(inner, lambda x, idx: shrink(x, n, spec), spec)
        return Dataset(shrink(inner.stored, n, spec), inner.y, spec, inner.class_names, inner.captions)
    if spec.startswith("color:"):  # a grayscale set coloured deterministically (colorization)
        inner = load(spec[6:], split, image_size, 1, seed)
        if _lazy(inner):
            if inner.shape[0] != 1:
                raise DataError(f"--data {spec}: color: needs grayscale images, got {inner.shape[0]} channels")
            fg, bg = (c.to(torch.uint8) for c in _colors(len(inner), seed))  # 6 bytes per image, drawn once
            return MappedDataset(inner, lambda x, idx: _paint(x, fg[idx], bg[idx]), spec)
        return Dataset(colored(inner.stored, seed), inner.y, spec, inner.class_names, inner.captions)
    if spec == "digits":
        x, y = _images.digits()
        idx = _split(len(x), split, test_fraction=1 / 6)
        return Dataset(_chw(x[idx]), torch.from_numpy(y[idx]), spec, [str(i) for i in range(10)])
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
        return Dataset(_chw(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)), spec,
                       [str(i) for i in range(10)])
    path = Path(spec)
    if spec.startswith("packed:") or (path.is_dir() and (path / "packed.json").is_file()):
        from .packed import open_packed

        return open_packed(spec[7:] if spec.startswith("packed:") else spec, split, spec)
    if not path.exists():
        raise DataError(f"--data {spec}: no such file or directory (expected digits, toy:NAME, mnist:DIR or an image folder)")
    kept: list[Path] = []
    x, y, classes = _images.image_folder(path, image_size or 32, channels, kept=kept)
    caps = _captions.folder_captions(path, kept) if _captions.is_captioned(path, kept) else None
    if len(x) == 1 and split == "test":
        raise DataError(f"image folder {spec} has 1 image: no held-out test split (add images, or use split all)")
    if len(x) > 1 and split != "all":
        idx = _split(len(x), split, test_fraction=0.1)
        x, y = _keep_rows(x, idx), y[idx]
        caps = None if caps is None else [caps[i] for i in idx]
    return Dataset(torch.from_numpy(x), torch.from_numpy(y), spec, classes, caps)


__all__ = ["Dataset", "MappedDataset", "load", "shrink", "toy", "TOYS", "to_unit", "to_uint8"]
