"""Packed image sets: a source decoded once into memory-mapped uint8 arrays (``difflab prepare-data``).

A packed folder holds ``images-SPLIT.npy`` (uint8 [N, C, H, W]), ``labels-SPLIT.npy`` (int64 [N]) per split and
``packed.json`` (format, source spec, shapes, class names).  Training opens the arrays with ``mmap_mode="r"``:
nothing is decoded or copied at start, each batch reads only its rows, and the pages are shared by every process
on a machine through the OS page cache (as EDM's dataset tool packs a folder once into a zip, Karras et al. 2022).
Each split holds exactly the examples, order and labels that ``load(SPEC, split)`` gives in memory.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import DataError

META = "packed.json"
FORMAT = 1
SPLITS = ("train", "test", "all")


def is_packed(path: str | Path) -> bool:
    """True for a folder written by :func:`pack` (it holds packed.json)."""
    return (Path(path) / META).is_file()


def _arrays(root: Path, split: str) -> tuple[Path, Path]:
    return root / f"images-{split}.npy", root / f"labels-{split}.npy"


def read_meta(root: str | Path) -> dict[str, Any]:
    """packed.json of a packed folder, checked."""
    path = Path(root) / META
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable packed-data description ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("splits"), dict):
        raise DataError(f"{path}: not a difflab packed-data description (format {FORMAT})")
    return meta


def open_packed(root: str | Path, split: str, spec: str) -> "Any":
    """The split of a packed folder as a :class:`difflab.data.Dataset` whose images are a read-only memory map."""
    from . import Dataset

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data {spec}: no such folder {root}")
    meta = read_meta(root)
    if split not in meta["splits"]:
        raise DataError(f"--data {spec}: {root} holds the splits {', '.join(meta['splits'])}, not {split} "
                        f"(pack it with difflab prepare-data {meta.get('source', 'SPEC')} --splits ...,{split})")
    images, labels = _arrays(root, split)
    try:
        x = np.load(images, mmap_mode="r")
        y = np.load(labels)
    except (OSError, ValueError) as e:
        raise DataError(f"--data {spec}: unreadable packed array in {root} ({e})") from None
    if x.dtype != np.uint8 or x.ndim != 4 or list(x.shape) != meta["splits"][split]["shape"] or len(y) != len(x):
        raise DataError(f"--data {spec}: {images.name} does not match {META} (shape {x.shape}, {len(y)} labels)")
    with warnings.catch_warnings():  # the map is read-only and difflab never writes into a dataset
        warnings.filterwarnings("ignore", message=".*not writable.*")
        stored = torch.from_numpy(x)
    return Dataset(stored, torch.from_numpy(np.asarray(y, dtype=np.int64)), spec, meta.get("class_names"))


def pack(spec: str, out: str | Path, splits: Sequence[str] = ("train", "test"), image_size: int = 32,
         channels: int | None = None, workers: int = 4, progress: bool = False) -> dict[str, Any]:
    """Decode the image source ``spec`` once into a packed folder ``out`` (written beside it, then renamed into
    place, so a failed run leaves nothing half-written).  Image folders are decoded file by file by ``workers``
    threads straight into the memory-mapped output, never whole in memory.  Returns the description."""
    out = Path(out)
    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise DataError(f"--splits: unknown split {bad[0] if bad else '(none)'}; choose among train, test, all")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out} already exists; choose a new folder (nothing was overwritten)")
    if not out.parent.is_dir():
        raise DataError(f"--out {out}: folder {out.parent} does not exist")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        meta: dict[str, Any] = {"format": FORMAT, "source": spec, "splits": {}, "class_names": None}
        for split in dict.fromkeys(splits):
            shape, classes = _pack_split(spec, split, tmp, image_size, channels, workers, progress)
            meta["splits"][split] = {"shape": list(shape)}
            meta["class_names"] = classes
        meta["shape"] = meta["splits"][splits[0]]["shape"][1:]
        (tmp / META).write_text(json.dumps(meta, indent=1))
        if out.exists():
            out.rmdir()  # an empty folder given as --out
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _pack_split(spec: str, split: str, root: Path, image_size: int, channels: int | None, workers: int,
                progress: bool) -> tuple[tuple[int, ...], list[str] | None]:
    """Write one split's arrays under root; returns the images' shape and the class names."""
    from . import _split, load

    images, labels = _arrays(root, split)
    path = Path(spec)
    if path.is_dir() and not is_packed(path):  # an image folder: streamed, never whole in memory
        from .images import list_images

        files, y, classes = list_images(path, channels)
        files, y, c = _readable(files, y, channels)
        if len(files) > 1 and split != "all":
            idx = _split(len(files), split, test_fraction=0.1)
            files, y = [files[i] for i in idx], [y[i] for i in idx]
        elif split == "test":
            raise DataError(f"image folder {spec} has 1 image: no held-out test split (pack --splits train or all)")
        x = np.lib.format.open_memmap(images, mode="w+", dtype=np.uint8, shape=(len(files), c, image_size, image_size))
        _decode_into(x, files, image_size, channels, workers, progress)
        x.flush()
        shape = x.shape
        del x
        np.save(labels, np.asarray(y, dtype=np.int64))
        return shape, classes
    data = load(spec, split, image_size=image_size, channels=channels)
    if data.kind != "image":
        raise DataError(f"prepare-data {spec}: only image sets are packed ({spec} holds points)")
    x = np.lib.format.open_memmap(images, mode="w+", dtype=np.uint8, shape=tuple(data.stored.shape))
    x[:] = data.stored.numpy()
    x.flush()
    del x
    y = data.y if data.y is not None else torch.zeros(len(data), dtype=torch.long)
    np.save(labels, y.numpy().astype(np.int64))
    return tuple(data.stored.shape), data.class_names


def _readable(files: list[Path], labels: list[int], channels: int | None) -> tuple[list[Path], list[int], int]:
    """The files whose header reads (others skipped with a warning, as ``image_folder`` skips them) and the channel
    count ``image_folder`` would choose: 3 when any is in colour."""
    from .images import UnreadableImage, read_image

    keep, ys, n_gray = [], [], 0
    for p, y in zip(files, labels):
        try:
            n_gray += read_image(p, 0, channels, mode_only=True).ndim == 2
        except UnreadableImage as e:
            warnings.warn(str(e), stacklevel=3)
            continue
        keep.append(p)
        ys.append(y)
    if not keep:
        raise DataError(f"none of the {len(files)} image files could be read")
    c = channels or (1 if n_gray == len(keep) else 3)
    if channels is None and 0 < n_gray < len(keep):
        warnings.warn(f"the folder mixes {n_gray} grayscale and {len(keep) - n_gray} colour images: packing all "
                      "with 3 channels (RGB)", stacklevel=3)
    return keep, ys, c


def _decode_into(x: np.ndarray, files: list[Path], size: int, channels: int | None, workers: int,
                 progress: bool) -> None:
    """Decode files into the rows of x, ``workers`` threads at a time (Pillow releases the GIL while decoding);
    grey files broadcast to R = G = B in a colour set, as in ``image_folder``."""
    from tqdm.auto import tqdm

    from .images import chw, read_image

    def one(i: int) -> None:
        x[i] = chw(read_image(files[i], size, channels))

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for _ in tqdm(pool.map(one, range(len(files)), chunksize=64), total=len(files), disable=not progress,
                      desc="pack", unit="img"):
            pass


__all__ = ["pack", "open_packed", "is_packed", "read_meta", "META"]
