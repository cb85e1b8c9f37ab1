"""Feature statistics over shards: sums that combine exactly, so 50,000 samples never sit in memory as images.

A Gaussian fit needs only the count, the sum and the sum of outer products of the features; these add across
shards and processes, and the mean and the unbiased covariance (as pytorch-fid's ``np.cov``) follow at the end.
Features themselves (N x D floats) are kept for KID and precision / recall; the images are read one shard at a time.
Reference features of a data set are cached per (data, split, subset, feature network) under ``cache_dir()``.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .features import EvaluationError, Extractor, Features, cache_dir, weights_digest
from .metrics import frechet_distance_gaussians


@dataclass
class MomentSums:
    """Count, sum [D] and sum of outer products [D, D] of feature vectors, in float64."""

    n: int
    total: np.ndarray
    outer: np.ndarray

    @classmethod
    def of(cls, features: Any) -> "MomentSums":
        f = np.asarray(features, dtype=np.float64)
        return cls(len(f), f.sum(0), f.T @ f)

    def __add__(self, other: "MomentSums") -> "MomentSums":
        return MomentSums(self.n + other.n, self.total + other.total, self.outer + other.outer)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean [D] and unbiased covariance [D, D]: (sum x x^T - n mu mu^T) / (n - 1)."""
        if self.n < 2:
            raise EvaluationError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        mu = self.total / self.n
        return mu, (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)

    def save(self, path: str | Path) -> None:
        np.savez(path, n=np.int64(self.n), total=self.total, outer=self.outer)

    @classmethod
    def load(cls, path: str | Path) -> "MomentSums":
        with np.load(path, allow_pickle=False) as f:
            return cls(int(f["n"]), f["total"], f["outer"])


def frechet_from_sums(a: MomentSums, b: MomentSums) -> float:
    """FD between the Gaussians of two sets of sums (Heusel et al. 2017)."""
    return frechet_distance_gaussians(*a.mean_cov(), *b.mean_cov())


def _as_images(x: Any) -> torch.Tensor:
    """A shard's images as float [N, C, H, W] in [-1, 1] (uint8 [N, H, W, C] from an .npz is converted)."""
    from ..data import to_unit

    if isinstance(x, np.ndarray) and x.dtype == np.uint8:
        return to_unit(x)
    return torch.as_tensor(x)


def shard_features(shards: Iterable[Any], extractor: Extractor, batch_size: int = 250) -> tuple[MomentSums, Features]:
    """Features (and logits, if the extractor gives them) of images given shard by shard (arrays or tensors), and
    the features' summed moments."""
    sums, parts, logits = None, [], []
    for x in shards:
        out = extractor(_as_images(x), batch_size)
        parts.append(out.features.astype(np.float32))
        if out.logits is not None:
            logits.append(out.logits)
        sums = MomentSums.of(out.features) if sums is None else sums + MomentSums.of(out.features)
    if sums is None:
        raise EvaluationError("no samples: the shard list is empty")
    return sums, Features(np.concatenate(parts).astype(np.float64), np.concatenate(logits) if logits else None)


def subset_indices(n: int, max_n: int | None, seed: int = 0) -> torch.Tensor:
    """All of 0..n-1, or a seeded random subset of max_n of them (sorted, so a memory map is read forwards)."""
    if max_n is None or n <= max_n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_n].sort().values


def data_features(data: Any, extractor: Extractor, max_n: int | None = None, seed: int = 0,
                  batch_size: int = 250) -> Features:
    """Features (and logits) of a ``difflab.data.Dataset`` (a seeded subset of max_n if larger), computed batch by
    batch through ``Dataset.batch``: only the rows needed are read, and a packed set is never loaded whole."""
    idx = subset_indices(len(data), max_n, seed)
    return shard_features(data.batches(idx, batch_size), extractor, batch_size)[1]


def reference_features_cached(data: Any, split: str, extractor: Extractor, net: torch.nn.Module,
                              max_n: int = 50_000, seed: int = 0, batch_size: int = 250) -> Features:
    """Features of a ``difflab.data.Dataset`` split (a seeded subset of max_n if larger), computed batch by batch
    through ``Dataset.batch`` (a packed set is never loaded whole) and cached by data, split, subset and weights."""
    key = json.dumps([data.spec, split, max_n, seed, len(data), weights_digest(net)])
    path = cache_dir().parent / "reference_features" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.npy"
    if path.is_file():
        return Features(np.load(path).astype(np.float64))
    feats = data_features(data, extractor, max_n, seed, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.npy")
    np.save(tmp, feats.features.astype(np.float32))
    os.replace(tmp, path)
    return feats


PRETRAINED = ("inception", "dinov2")  # feature networks read from a local weights file


def pretrained_extractor(name: str, weights: str | Path | None = None, device: str | None = None
                         ) -> tuple[Extractor, torch.nn.Module]:
    """(extractor, network) of FID's Inception-v3 or FD-DINOv2's ViT with weights from a local file (``weights``,
    else $DIFFLAB_INCEPTION_WEIGHTS or $DIFFLAB_DINOV2_WEIGHTS)."""
    if name == "inception":
        from .inception import load_inception as load
    elif name == "dinov2":
        from .dinov2 import load_dinov2 as load
    else:
        raise EvaluationError(f"unknown pretrained feature network {name!r}; choose {' or '.join(PRETRAINED)}")
    net = load(weights, device)
    return Extractor(lambda x: net(x).cpu(), None, name), net


def _check_shape(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    if tuple(x.shape[1:]) != tuple(shape):
        raise EvaluationError(f"samples have shape {tuple(x.shape[1:])} but the reference data has {tuple(shape)}")
    return x


def evaluate_samples(samples: torch.Tensor | Path, data: Any, split: str = "train", features: Any = "digits", *,
                     weights: str | Path | None = None, ref_num: int = 50_000, device: str | None = None,
                     seed: int = 0) -> dict[str, float]:
    """Metrics of samples (images [N, C, H, W] in [-1, 1], points [N, D], or a shard folder written by ``difflab
    sample --out DIR``) against a ``difflab.data.Dataset`` split; ``features="inception"`` (FID's Inception-v3) or
    ``"dinov2"`` (FD-DINOv2's ViT) reads ``weights`` from a local file and caches the reference features.  FD comes from the summed moments."""
    from . import evaluate_features, evaluate_points, get_extractor
    from .generate import merge, read_shards

    if data.kind == "points":
        x = torch.from_numpy(merge(samples)) if isinstance(samples, Path) else samples
        return evaluate_points(_check_shape(x, data.shape), data.x)
    if features in PRETRAINED:
        extractor, net = pretrained_extractor(features, weights, device)
        ref = reference_features_cached(data, split, extractor, net, ref_num, seed)
    else:
        extractor = get_extractor(features)
        ref = data_features(data, extractor, ref_num, seed)
    shards = read_shards(samples) if isinstance(samples, Path) else [samples]
    sums, feats = shard_features((_check_shape(_as_images(x), data.shape) for x in shards), extractor)
    out = evaluate_features(feats, ref, seed=seed)
    out["fd"] = frechet_from_sums(sums, MomentSums.of(ref.features))
    return out


__all__ = ["evaluate_samples", "MomentSums", "frechet_from_sums", "shard_features", "data_features",
           "reference_features_cached", "subset_indices", "pretrained_extractor", "PRETRAINED"]
