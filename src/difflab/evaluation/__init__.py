"""Sample-quality evaluation: feature-space metrics for images and distribution distances for points.

``evaluate_images`` and ``evaluate_points`` return flat ``dict[str, float]`` (JSON-ready); the metric functions
in :mod:`.metrics` are pure functions of arrays. Reference features can be computed once with
``extract`` (or ``reference_features`` for a ``difflab.data`` spec) and passed as ``reference`` to score many
sample sets against the same data.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from . import metrics
from .features import (
    EvaluationError,
    Extractor,
    FeatureNet,
    FeatureNetConfig,
    Features,
    get_extractor,
    load_feature_net,
)
from .metrics import (
    class_metrics,
    density_coverage,
    frechet_distance,
    frechet_distance_gaussians,
    kernel_distance,
    mean_log_likelihood,
    mmd_gaussian,
    precision_recall,
    sliced_wasserstein,
)

FeatureSpec = Any  # "digits" | "mnist" | Extractor | torch.nn.Module | Callable[[Tensor], Tensor | (Tensor, Tensor)]


def extract(images: Any, features: FeatureSpec = "digits", batch_size: int = 500) -> Features:
    """Features (and logits, if the extractor has them) of images [N, C, H, W] in [-1, 1]."""
    return get_extractor(features)(images, batch_size)


def features_for(spec: str) -> str:
    """Name of the built-in feature net for a ``difflab.data`` spec ("digits" or "mnist:DIR"), else EvaluationError."""
    if spec == "digits":
        return "digits"
    if spec == "mnist" or spec.startswith("mnist:"):
        return "mnist"
    raise EvaluationError(f"no built-in feature net for data {spec!r}; pass features=<torch module or callable>")


def reference_images(spec: str, split: str = "train", max_n: int | None = None, seed: int = 0) -> Tensor:
    """Images [N, C, H, W] in [-1, 1] of a dataset split: all of them, or a seeded random subset of max_n if the
    split is larger (the same subset for the same seed)."""
    from .. import data

    ds = data.load(spec, split)  # type: ignore[arg-type]
    if ds.kind != "image":
        raise EvaluationError(f"data {spec!r} is not an image dataset; use evaluate_points")
    if max_n is not None and len(ds) > max_n:  # only the subset's rows are read (a packed set stays on disk)
        return ds.batch(torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:max_n])
    return ds.x


def reference_features(
    spec: str, split: str = "train", features: FeatureSpec | None = None, max_n: int | None = None, seed: int = 0
) -> Features:
    """Features of a dataset split (seeded random subset of max_n images if given, sorted), for use as ``reference``;
    read batch by batch, so a packed set is never loaded whole."""
    from .. import data
    from .shards import data_features

    ds = data.load(spec, split)  # type: ignore[arg-type]
    if ds.kind != "image":
        raise EvaluationError(f"data {spec!r} is not an image dataset; use evaluate_points")
    return data_features(ds, get_extractor(features if features is not None else features_for(spec)), max_n, seed)


def evaluate_features(
    samples: Features,
    reference: Features,
    *,
    labels: Any | None = None,
    k: int = 3,
    dc_k: int = 5,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    seed: int = 0,
) -> dict[str, float]:
    """FD, KID (mean, std), precision/recall (k-NN, k), density/coverage (dc_k) and, given logits, class metrics."""
    if samples.features.shape[1] != reference.features.shape[1]:
        raise EvaluationError(f"feature dims differ: {samples.features.shape[1]} vs {reference.features.shape[1]}")
    if min(len(samples), len(reference)) <= max(k, dc_k):
        raise EvaluationError(f"need more than {max(k, dc_k)} samples and reference images, got {len(samples)} and {len(reference)}")
    s, r = samples.features, reference.features
    kid, kid_std = kernel_distance(s, r, kid_subset_size, kid_subsets, seed)
    precision, recall = precision_recall(r, s, k, reference.knn_radii(k))
    density, coverage = density_coverage(r, s, dc_k, reference.knn_radii(dc_k))
    out = {
        "num_samples": float(len(s)),
        "num_reference": float(len(r)),
        "fd": frechet_distance(s, r),
        "kid": kid,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "density": density,
        "coverage": coverage,
    }
    if samples.logits is not None and reference.logits is not None:
        out.update(class_metrics(samples.logits, reference.logits, labels))
    elif labels is not None:
        raise EvaluationError("labels given but the feature extractor returns no logits")
    return out


def evaluate_images(
    samples: Any,
    reference: Any,
    *,
    features: FeatureSpec = "digits",
    labels: Any | None = None,
    k: int = 3,
    dc_k: int = 5,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    seed: int = 0,
    batch_size: int = 500,
) -> dict[str, float]:
    """Score samples [N, C, H, W] in [-1, 1] against reference images (or precomputed ``Features``) in a feature space.

    ``labels`` [N] are the classes requested for conditional samples (adds ``label_accuracy``). Keys: num_samples,
    num_reference, fd, kid, kid_std, precision, recall, density, coverage and, with logits, class_kl, confidence,
    classes_covered (, label_accuracy).
    """
    ex = get_extractor(features)
    fs = ex(samples, batch_size)
    fr = reference if isinstance(reference, Features) else ex(reference, batch_size)
    return evaluate_features(
        fs, fr, labels=labels, k=k, dc_k=dc_k, kid_subset_size=kid_subset_size, kid_subsets=kid_subsets, seed=seed
    )


def evaluate_points(
    samples: Any,
    reference: Any,
    log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    num_projections: int = 200,
    bandwidths: Sequence[float] | None = None,
    mmd_scales: Sequence[float] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
    max_points: int = 5000,
    k: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """Distances between low-dimensional samples [N, D] and reference points [M, D]; with log_prob, mean log-likelihoods.

    Keys: num_samples, num_reference, sw1, sw2 (sliced Wasserstein), mmd (mean over bandwidths) and mmd@<s> for
    each bandwidth s x median distance (or mmd@h=<h> for explicit ones), fd (Gaussian fit), precision, recall, and
    with log_prob: log_likelihood (samples) and reference_log_likelihood (the reference's, for scale). Sets larger
    than max_points are subsampled (seeded) for the O(N^2) metrics.
    """
    s, r = metrics.as_array(samples), metrics.as_array(reference)
    if s.shape[1] != r.shape[1]:
        raise EvaluationError(f"dimension mismatch: samples {s.shape} vs reference {r.shape}")
    rng = np.random.default_rng(seed)
    sub = lambda a: a[rng.choice(len(a), max_points, replace=False)] if len(a) > max_points else a  # noqa: E731
    s_sub, r_sub = sub(s), sub(r)
    out = {
        "num_samples": float(len(s)),
        "num_reference": float(len(r)),
        "sw1": sliced_wasserstein(s, r, 1, num_projections, seed),
        "sw2": sliced_wasserstein(s, r, 2, num_projections, seed),
    }
    if bandwidths is None:
        med = metrics.median_distance(r_sub, seed=seed)
        mmds = mmd_gaussian(s_sub, r_sub, [c * med for c in mmd_scales])
        keyed = {f"mmd@{c:g}": v for c, v in zip(mmd_scales, mmds.values())}
    else:
        mmds = mmd_gaussian(s_sub, r_sub, bandwidths)
        keyed = {f"mmd@h={h:g}": v for h, v in mmds.items()}
    out["mmd"] = float(np.mean(list(mmds.values())))
    out.update(keyed)
    out["fd"] = frechet_distance(s, r)
    out["precision"], out["recall"] = precision_recall(r_sub, s_sub, k)
    if log_prob is not None:
        out["log_likelihood"] = mean_log_likelihood(s, log_prob)
        out["reference_log_likelihood"] = mean_log_likelihood(r, log_prob)
    return out


__all__ = [
    "evaluate_images",
    "evaluate_points",
    "evaluate_features",
    "extract",
    "features_for",
    "reference_features",
    "reference_images",
    "Features",
    "Extractor",
    "FeatureNet",
    "FeatureNetConfig",
    "EvaluationError",
    "get_extractor",
    "load_feature_net",
    "metrics",
    "frechet_distance",
    "frechet_distance_gaussians",
    "kernel_distance",
    "precision_recall",
    "density_coverage",
    "class_metrics",
    "sliced_wasserstein",
    "mmd_gaussian",
    "mean_log_likelihood",
]
