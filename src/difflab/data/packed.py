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
from pathlib import Path
from typing import Any, Callable, Sequence

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
    data = Dataset(_tensor(x), torch.from_numpy(np.asarray(y, dtype=np.int64)), spec, meta.get("class_names"))
    data.packed = (root, split)  # type: ignore[attr-defined]  (where packed_latents looks for stored latents)
    return data


def _tensor(x: np.ndarray) -> torch.Tensor:
    """A tensor over a read-only memory map (no copy; difflab never writes into a dataset)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(x)


def _latents_file(root: Path, sha256: str, split: str) -> Path:
    return root / f"latents-{sha256[:16]}-{split}.npy"


def pack_latents(root: str | Path, encode: Callable[[torch.Tensor], torch.Tensor], sha256: str,
                 record: dict[str, Any], batch_size: int = 256, progress: bool = False) -> None:
    """Encode every split of a packed folder once (``encode``: images in [-1, 1] -> latents, an autoencoder's scaled
    posterior means as a latent run uses them, Rombach et al. 2022) into ``latents-SHA-SPLIT.npy``, recorded in
    packed.json under the checkpoint's ``sha256`` with ``record``; a latent run with that checkpoint maps them."""
    from tqdm.auto import tqdm

    root = Path(root)
    meta = read_meta(root)
    for split in meta["splits"]:
        data = open_packed(root, split, f"packed:{root}")
        path = _latents_file(root, sha256, split)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.npy")
        z = None
        try:
            for s in tqdm(range(0, len(data), batch_size), disable=not progress, desc=f"encode {split}", unit="batch"):
                part = encode(data.batch(torch.arange(s, min(len(data), s + batch_size)))).detach().cpu().numpy()
                if z is None:
                    z = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(data), *part.shape[1:]))
                z[s:s + batch_size] = part
            z.flush()
            del z
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    meta.setdefault("latents", {})[sha256] = record
    tmp_meta = root / f".{META}.{os.getpid()}"
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, root / META)


def packed_latents(data: Any, sha256: str) -> Any:
    """The latents ``pack_latents`` stored for this split and autoencoder checkpoint as a memory-mapped Dataset,
    or None (not a packed set, or no latents of that checkpoint)."""
    from . import Dataset

    where = getattr(data, "packed", None)
    if where is None:
        return None
    root, split = where
    meta = read_meta(root)
    path = _latents_file(root, sha256, split)
    if sha256 not in meta.get("latents", {}) or not path.is_file():
        return None
    z = np.load(path, mmap_mode="r")
    if len(z) != len(data):
        raise DataError(f"{path} holds {len(z)} latents for {len(data)} images; pack the latents again")
    return Dataset(_tensor(z), data.y, data.spec, data.class_names)


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
        path = Path(spec)
        if path.is_dir() and not is_packed(path):  # an image folder: streamed, never whole in memory
            shapes, meta["class_names"] = _pack_folder(path, list(dict.fromkeys(splits)), tmp, image_size, channels,
                                                       workers, progress)
        else:
            shapes = {}
            for split in dict.fromkeys(splits):
                shapes[split], meta["class_names"] = _pack_loaded(spec, split, tmp, image_size, channels)
        meta["splits"] = {k: {"shape": list(v)} for k, v in shapes.items()}
        meta["shape"] = meta["splits"][splits[0]]["shape"][1:]
        (tmp / META).write_text(json.dumps(meta, indent=1))
        if out.exists():
            out.rmdir()  # an empty folder given as --out
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def _write(root: Path, split: str, x: Any, y: np.ndarray, chunk: int = 4096) -> tuple[int, ...]:
    """images-SPLIT.npy and labels-SPLIT.npy from x (an array-like [N, C, H, W] read ``chunk`` rows at a time)."""
    images, labels = _arrays(root, split)
    out = np.lib.format.open_memmap(images, mode="w+", dtype=np.uint8, shape=tuple(x.shape))
    for s in range(0, len(x), chunk):
        out[s:s + chunk] = x[s:s + chunk]
    out.flush()
    del out
    np.save(labels, np.asarray(y, dtype=np.int64))
    return tuple(x.shape)


def _pack_loaded(spec: str, split: str, root: Path, image_size: int, channels: int | None
                 ) -> tuple[tuple[int, ...], list[str] | None]:
    """A source other than a folder: loaded as ``load`` does, then written."""
    from . import load

    data = load(spec, split, image_size=image_size, channels=channels)
    if data.kind != "image":
        raise DataError(f"prepare-data {spec}: only image sets are packed ({spec} holds points)")
    y = data.y if data.y is not None else torch.zeros(len(data), dtype=torch.long)
    return _write(root, split, data.stored.numpy(), y.numpy()), data.class_names


class _Rows:
    """Rows ``idx`` of a decoded [N, 3, H, W] array, first ``c`` channels, as an array-like for ``_write``."""

    def __init__(self, x: np.ndarray, idx: np.ndarray, c: int):
        self.x, self.idx, self.c = x, idx, c
        self.shape = (len(idx), c, *x.shape[2:])

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, s: slice) -> np.ndarray:
        return self.x[self.idx[s], : self.c]


def _pack_folder(root: Path, splits: list[str], out: Path, size: int, channels: int | None, workers: int,
                 progress: bool) -> tuple[dict[str, tuple[int, ...]], list[str]]:
    """Decode a folder once into a temporary 3-channel memory map, then write each split's rows: the examples,
    order, labels, channel count, warnings and held-out split of ``image_folder`` + ``load``."""
    from . import _split
    from .images import decode_into, list_images

    files, labels, classes = list_images(root, channels)
    decoded = np.lib.format.open_memmap(out / ".decoded.npy", mode="w+", dtype=np.uint8,
                                        shape=(len(files), 3, size, size))
    gray = decode_into(decoded, files, size, channels, workers, progress)
    ok = np.flatnonzero(gray >= 0)
    if len(ok) == 0:
        raise DataError(f"image folder {root}: none of its {len(files)} image files could be read")
    n_gray = int((gray[ok] == 1).sum())
    c = channels or (1 if n_gray == len(ok) else 3)
    if channels is None and 0 < n_gray < len(ok):
        warnings.warn(f"image folder {root} mixes {n_gray} grayscale and {len(ok) - n_gray} colour images: "
                      "packing all with 3 channels (RGB)", stacklevel=3)
    y = np.asarray(labels, dtype=np.int64)[ok]
    shapes = {}
    for split in splits:
        if split == "test" and len(ok) == 1:
            raise DataError(f"image folder {root} has 1 image: no held-out test split (pack --splits train or all)")
        idx = _split(len(ok), split, test_fraction=0.1) if len(ok) > 1 and split != "all" else np.arange(len(ok))
        shapes[split] = _write(out, split, _Rows(decoded, ok[idx], c), y[idx])
    del decoded
    (out / ".decoded.npy").unlink()
    return shapes, classes


__all__ = ["pack", "pack_latents", "packed_latents", "open_packed", "is_packed", "read_meta", "META"]
