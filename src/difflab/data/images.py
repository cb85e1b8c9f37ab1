"""Image sources: scikit-learn digits, MNIST IDX files, folders of PNG/JPEG images."""
from __future__ import annotations

import gzip
import struct
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits: uint8 images [1797, 8, 8, 1] with 17 grey levels scaled to 0..255, labels [1797]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return x, d.target.astype(np.int64)


def _find(directory: Path, stem: str) -> Path:
    # accept both 'train-images-idx3-ubyte' and 'train-images.idx3-ubyte', gzipped or raw
    kind, idx = stem.rsplit("-", 1)
    for name in (f"{kind}-{idx}-ubyte", f"{kind}.{idx}-ubyte"):
        for suffix in (".gz", ""):
            p = directory / (name + suffix)
            if p.is_file():
                return p
    raise DataError(f"{directory}: no MNIST file {stem}-ubyte[.gz] (or {kind}.{idx}-ubyte[.gz])")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (raw or gzip)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise DataError(f"{path}: not an unsigned-byte IDX file")
        dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
        body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if body.size != int(np.prod(dims)):
            raise DataError(f"{path}: truncated IDX file ({body.size} of {int(np.prod(dims))} bytes)")
        return body.reshape(dims)
    except (OSError, EOFError, struct.error, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: unreadable IDX file ({e})") from None


def mnist(directory: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST from a directory of IDX files: uint8 images [N, 28, 28, 1], labels [N]."""
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"MNIST directory {d} does not exist")
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(_find(d, f"{prefix}-images-idx3"))
    y = read_idx(_find(d, f"{prefix}-labels-idx1"))
    if len(x) != len(y):
        raise DataError(f"{d}: {len(x)} images but {len(y)} labels")
    return x[..., None], y.astype(np.int64)


def image_folder(root: str | Path, size: int, channels: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All images under root, resized (shorter side) and centre-cropped to size x size.

    Labels come from the first-level sub-folder (one class per sub-folder; images directly in root are class 0
    when there are no sub-folders).  Unreadable files are skipped with a warning naming them.
    Returns uint8 [N, size, size, C], labels [N], class names.
    """
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"image folder {root} contains no PNG/JPEG images")
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    index = {c: i for i, c in enumerate(classes)}
    imgs, labels = [], []
    mode = None
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                if mode is None:
                    mode = {1: "L", 3: "RGB"}.get(channels or 0) or ("L" if im.mode in ("L", "1", "I;16", "I") else "RGB")
                imgs.append(_resize_crop(im.convert(mode), size))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            warnings.warn(f"skipping unreadable image {p}: {e}", stacklevel=2)
            continue
        parts = p.relative_to(root).parts
        labels.append(index[parts[0]] if len(parts) > 1 else 0)
    if not imgs:
        raise DataError(f"image folder {root}: none of its {len(files)} image files could be read")
    x = np.stack(imgs)
    if x.ndim == 3:
        x = x[..., None]
    return x, np.asarray(labels, dtype=np.int64), classes or ["all"]


def _resize_crop(im, size: int) -> np.ndarray:
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
