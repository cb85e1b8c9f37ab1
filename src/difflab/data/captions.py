"""Captions of an image folder, in the conventions people use: ``metadata.jsonl`` (the imagefolder convention: one
JSON object per line with ``file_name`` and ``text``, a string or a list of strings), ``metadata.csv`` (columns
``file_name`` and ``text``) or a sidecar ``NAME.txt`` beside each image ``NAME.png`` (one caption per non-empty line).

Several captions per image: a list in JSONL, several rows for one file, or several lines in a ``.txt``.  An image
without a caption, or a caption without an image, is a one-line error naming the file.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import DataError

METADATA = ("metadata.jsonl", "metadata.csv")
Captions = list[tuple[str, ...]]


def is_captioned(root: Path, images: list[Path]) -> bool:
    """True when ``root`` has a metadata file or any image has a sidecar ``.txt``."""
    return any((root / m).is_file() for m in METADATA) or any(p.with_suffix(".txt").is_file() for p in images)


def _add(table: dict[str, list[str]], name: object, text: object, where: str) -> None:
    """Record the caption(s) ``text`` of ``name`` (relative path with / separators)."""
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where}: file_name must be a non-empty string, got {name!r}")
    texts = text if isinstance(text, list) else [text]
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise DataError(f"{where}: text of {name} must be a non-empty string or list of strings, got {text!r}")
    table.setdefault(Path(name).as_posix(), []).extend(t.strip() for t in texts)


def read_jsonl(path: Path) -> dict[str, list[str]]:
    """file_name -> captions from a metadata.jsonl."""
    table: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {i}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or "file_name" not in row or "text" not in row:
                raise DataError(f"{path} line {i}: needs the keys file_name and text")
            _add(table, row["file_name"], row["text"], f"{path} line {i}")
    return table


def read_csv(path: Path) -> dict[str, list[str]]:
    """file_name -> captions from a metadata.csv with a header row naming file_name and text."""
    table: dict[str, list[str]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"file_name", "text"} <= set(reader.fieldnames):
            raise DataError(f"{path}: the header must name the columns file_name and text, got {reader.fieldnames}")
        for i, row in enumerate(reader, 2):
            _add(table, row["file_name"], row["text"], f"{path} line {i}")
    return table


def read_sidecar(path: Path) -> list[str]:
    """The captions of a sidecar .txt: its non-empty lines."""
    lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    if not lines:
        raise DataError(f"caption file {path} is empty")
    return lines


def folder_captions(root: Path, images: list[Path]) -> Captions:
    """The captions of each image of ``images`` (the readable image files under ``root``), from the folder's metadata
    or sidecars."""
    found = [root / m for m in METADATA if (root / m).is_file()]
    if len(found) > 1:
        raise DataError(f"image folder {root} has both {found[0].name} and {found[1].name}; keep one")
    try:
        if found:
            return _from_metadata(found[0], root, images)
        return _from_sidecars(root, images)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"image folder {root}: unreadable captions ({e})") from None


def _from_metadata(meta: Path, root: Path, images: list[Path]) -> Captions:
    from .images import IMAGE_SUFFIXES

    table = read_jsonl(meta) if meta.suffix == ".jsonl" else read_csv(meta)
    names = [p.relative_to(root).as_posix() for p in images]
    every = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    missing = [n for n in names if n not in table]
    if missing:
        raise DataError(f"{meta}: no caption for image {missing[0]}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(set(table) - every)  # an unreadable image (skipped with a warning) is not an extra entry
    if extra:
        raise DataError(f"{meta}: caption for {extra[0]}, which is not an image of the folder"
                        + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    return [tuple(table[n]) for n in names]


def _from_sidecars(root: Path, images: list[Path]) -> Captions:
    from .images import IMAGE_SUFFIXES

    stems = {p.with_suffix("") for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES}
    extra = sorted(p for p in root.rglob("*.txt") if p.with_suffix("") not in stems)
    if extra:
        raise DataError(f"caption file {extra[0]} has no image beside it (expected {extra[0].stem}.png or .jpg)")
    missing = [p for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        raise DataError(f"image {missing[0]} has no caption file {missing[0].with_suffix('.txt').name} beside it")
    return [tuple(read_sidecar(p.with_suffix(".txt"))) for p in images]


__all__ = ["METADATA", "Captions", "is_captioned", "folder_captions", "read_jsonl", "read_csv", "read_sidecar"]
