"""Many samples over many processes: a seed per sample, batches of fixed composition, one file per batch.

Sample i's random numbers (its x_T and every noise draw of a stochastic sampler) come from its own generator
seeded by (seed, i), as EDM's generate.py does (Karras et al. 2022), so a sample does not depend on which
process or batch draws it.  Batch k always holds samples [k B, (k + 1) B); process r of W draws the batches
k = r, r + W, ... and writes each to ``NNNNNN.npz`` in a shard folder; rank 0 merges them.  With a fixed batch
size any number of processes gives the same samples bit for bit; another batch size gives the same samples up to
floating-point rounding (the network sees other batch shapes).
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import UserError
from ..samplers.seeds import PerSample, sample_seed

SHARD_SUFFIX = ".npz"
SETTINGS = "generate.json"


class ShardError(UserError, ValueError):
    """A shard folder that does not hold what was asked for."""


class _World(Protocol):
    rank: int
    size: int

    def barrier(self) -> None: ...


class _One:
    rank, size = 0, 1

    def barrier(self) -> None:
        pass


DrawFn = Callable[[Tensor, PerSample], Tensor]


def batches(num: int, batch_size: int, rank: int = 0, size: int = 1) -> list[range]:
    """The sample indices of the batches process ``rank`` of ``size`` draws: batch k = [k B, (k + 1) B), k = rank mod size."""
    return [range(s, min(num, s + batch_size)) for s in range(rank * batch_size, num, size * batch_size)]


def shard_path(folder: Path, first: int) -> Path:
    return Path(folder) / f"{first:09d}{SHARD_SUFFIX}"


def generate(draw: DrawFn, num: int, batch_size: int, seed: int, folder: str | Path, world: _World | None = None,
             progress: bool = False, settings: dict[str, Any] | None = None) -> None:
    """Draw samples 0..num-1 into shard files under ``folder`` (each process its batches, then a barrier).

    ``draw(indices, rng)`` returns the samples of ``indices`` in data space (images [n, C, H, W] in [-1, 1], or
    points [n, D]), taking all its randomness from ``rng``.  A batch whose file exists is not drawn again, so an
    interrupted generation continues where it stopped; ``settings`` (with num, batch size and seed) are recorded
    in ``generate.json`` and a folder holding samples of other settings is refused."""
    from tqdm.auto import tqdm

    world = world or _One()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _claim(folder, {**(settings or {}), "num": num, "batch_size": batch_size, "seed": seed}, world.rank == 0)
    mine = batches(num, batch_size, world.rank, world.size)
    for idx in tqdm(mine, desc="sample", unit="batch", disable=not progress or len(mine) < 2):
        path = shard_path(folder, idx.start)
        if path.is_file():
            continue
        x = draw(torch.tensor(list(idx)), PerSample(seed, idx))
        if len(x) != len(idx):
            raise ValueError(f"draw returned {len(x)} samples for {len(idx)} indices")
        write_shard(path, x.detach().cpu(), idx.start)
    world.barrier()


def _claim(folder: Path, settings: dict[str, Any], write: bool) -> None:
    """Refuse a folder whose generate.json records other settings; record them (rank 0) in a fresh one."""
    path = folder / SETTINGS
    settings = json.loads(json.dumps(settings, default=str))
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
        if old != settings:
            raise ShardError(f"{folder} holds samples drawn with other settings ({path}); remove it or choose "
                             "another output")
    elif write:
        tmp = folder / f".{SETTINGS}.{os.getpid()}"
        tmp.write_text(json.dumps(settings, indent=1))
        os.replace(tmp, path)


def write_shard(path: Path, x: Tensor, first: int) -> None:
    """An .npz of uint8 ``images`` [n, H, W, C] (4-D x in [-1, 1]) or float32 ``samples``, and its ``first`` index;
    written to a temporary file and renamed into place."""
    from ..data import to_uint8

    arrays = {"images": to_uint8(x)} if x.ndim == 4 else {"samples": x.float().numpy()}
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=SHARD_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, first=np.int64(first), **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def shard_files(folder: str | Path) -> list[Path]:
    """The shard files of a folder in sample order."""
    return sorted(p for p in Path(folder).glob(f"*{SHARD_SUFFIX}") if not p.name.startswith("."))


def read_shards(folder: str | Path, num: int | None = None) -> Iterator[np.ndarray]:
    """The arrays (uint8 images [n, H, W, C] or float32 points) of a shard folder, one shard at a time, in order;
    checks that the shards are consecutive from sample 0 (and, given ``num``, that they hold num samples)."""
    expected = 0
    for p in shard_files(folder):
        try:
            with np.load(p, allow_pickle=False) as f:
                first = int(f["first"])
                x = f["images"] if "images" in f else f["samples"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            raise ShardError(f"{p} is not a readable sample shard ({e}); delete it to draw it again") from None
        if first != expected:
            raise ShardError(f"{folder}: samples {expected}..{first - 1} are missing (no shard starts at {expected})")
        expected += len(x)
        yield x
    if num is not None and expected != num:
        raise ShardError(f"{folder}: {expected} samples, expected {num}")


def merge(folder: str | Path, num: int | None = None) -> np.ndarray:
    """All samples of a shard folder as one array, in index order."""
    return np.concatenate(list(read_shards(folder, num)))


__all__ = ["PerSample", "sample_seed", "batches", "generate", "read_shards", "shard_files", "merge", "write_shard"]
