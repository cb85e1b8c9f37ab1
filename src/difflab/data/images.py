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


GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}  # everything else loads as colour


def image_folder(root: str | Path, size: int, channels: int | None = None,
                 kept: list[Path] | None = None, workers: int | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All images under root, resized (shorter side) and centre-cropped to size x size.

    Labels come from the first-level sub-folder (one class per sub-folder, with no images directly in root;
    a folder without sub-folders is one class).  ``channels`` 1 or 3 forces grayscale or RGB; by default the
    images load as RGB when any readable file is in colour, else as grayscale, with a warning when they mix.
    16-bit images are scaled by their bit depth.  Unreadable files are skipped with a warning naming them.
    Returns uint8 [N, C, size, size], labels [N], class names; ``kept`` (if given) receives the N files read.
    The files are decoded by ``workers`` threads straight into the returned array (its size is the only copy);
    a folder whose first image is grey but holds colour ones is decoded a second time, as RGB.
    """
    files, labels_all, classes = list_images(root, channels)
    c0 = channels or _first_channels(files)
    x = np.empty((len(files), c0, size, size), np.uint8)
    kinds = decode_into(x, files, size, channels, workers)
    ok = np.flatnonzero(kinds >= 0)
    if len(ok) == 0:
        raise DataError(f"image folder {root}: none of its {len(files)} image files could be read")
    n_gray = int((kinds[ok] == 1).sum())
    c = channels or (1 if n_gray == len(ok) else 3)
    if channels is None and 0 < n_gray < len(ok):
        warnings.warn(f"image folder {root} mixes {n_gray} grayscale and {len(ok) - n_gray} colour images: "
                      f"loading all with 3 channels (RGB)", stacklevel=2)
    if c != c0:
        x = np.empty((len(files), c, size, size), np.uint8)
        decode_into(x, files, size, channels, workers, warn=False)
    if kept is not None:
        kept.extend(files[i] for i in ok)
    from . import _keep_rows

    return _keep_rows(x, ok), np.asarray(labels_all, dtype=np.int64)[ok], classes


def _first_channels(files: list[Path]) -> int:
    """1 if the first file whose header opens is grey, else 3 (the header only: nothing is decoded)."""
    from PIL import Image

    for p in files:
        try:
            with Image.open(p) as im:
                return 1 if im.mode in GRAY_MODES else 3
        except Exception:  # noqa: BLE001 - an unreadable file: decode_into warns about it
            continue
    return 3


def decode_into(x: np.ndarray, files: list[Path], size: int, channels: int | None, workers: int | None = None,
                progress: bool = False, warn: bool = True) -> np.ndarray:
    """Decode files into the rows of x [N, C, H, W] (grey broadcast to R = G = B when C = 3), ``workers`` threads at
    a time (Pillow releases the GIL while decoding; default min(8, CPUs)).  Returns per file 1 (grey), 0 (colour)
    or -1 (unreadable: skipped with a warning naming it); a colour image is not written into a 1-channel x (its
    kind, 0, tells the caller)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    def one(i: int) -> int | str:
        try:
            a = read_image(files[i], size, channels)
        except UnreadableImage as e:
            return str(e)
        if a.ndim == 2 or x.shape[1] == 3:
            x[i] = chw(a)
        return int(a.ndim == 2)

    kinds = np.empty(len(files), np.int64)
    with ThreadPoolExecutor(max(1, workers or min(8, os.cpu_count() or 1))) as pool:
        for i, r in enumerate(tqdm(pool.map(one, range(len(files)), chunksize=64), total=len(files),
                                   disable=not progress, desc="decode", unit="img")):
            if isinstance(r, str) and warn:
                warnings.warn(r, stacklevel=3)
            kinds[i] = -1 if isinstance(r, str) else r
    return kinds


class UnreadableImage(DataError):
    """A file with an image suffix that does not decode."""


def list_images(root: str | Path, channels: int | None = None) -> tuple[list[Path], list[int], list[str]]:
    """The image files under root in a fixed (sorted) order, their labels (first-level sub-folder) and class names."""
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, got {channels}")
    root = Path(root)
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"image folder {root} contains no PNG/JPEG images")
    parts = [p.relative_to(root).parts for p in files]
    classes = sorted({q[0] for q in parts if len(q) > 1})
    stray = [p for p, q in zip(files, parts) if len(q) == 1]
    if classes and stray:
        raise DataError(f"image folder {root}: {stray[0].name} lies beside the class sub-folders "
                        f"({', '.join(classes)}); move it into a class sub-folder or remove it")
    index = {c: i for i, c in enumerate(classes)}
    return files, [index[q[0]] if len(q) > 1 else 0 for q in parts], classes or ["all"]


def read_image(path: Path, size: int, channels: int | None = None) -> np.ndarray:
    """One file as uint8 [size, size] (grayscale) or [size, size, 3], resized and centre-cropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            gray = channels == 1 or (channels is None and im.mode in GRAY_MODES)
            im.load()
            return _resize_crop(_to_8bit(im, "L" if gray else "RGB"), size)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UnreadableImage(f"skipping unreadable image {path}: {e}") from None


def chw(a: np.ndarray) -> np.ndarray:
    """One decoded image [H, W] or [H, W, 3] as [C, H, W] (grey broadcasts to R = G = B, as PIL's L -> RGB)."""
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _to_8bit(im, mode: str):
    """``im`` in mode L or RGB; 16-bit levels (mode I;16 or I, 0..65535) scaled to 0..255 by v / 257, rounded."""
    from PIL import Image

    if im.mode.startswith("I"):
        v = np.asarray(im).astype(np.int64).clip(0, 65535)
        im = Image.fromarray(((2 * v + 257) // 514).astype(np.uint8))  # round(v / 257): 257 is odd, no ties
    return im if im.mode == mode else im.convert(mode)


def _resize_crop(im, size: int) -> np.ndarray:
    from PIL import Image

    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
