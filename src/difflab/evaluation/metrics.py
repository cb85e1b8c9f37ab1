"""Sample-quality metrics as pure functions of feature or point arrays [N, D] (numpy or torch).

Image metrics (Fréchet distance, KID, precision/recall, density/coverage, class statistics) act on features of a
feature network (see ``features.py``); point metrics (sliced Wasserstein, MMD, log-likelihood) act on raw
low-dimensional samples. Every random metric takes a ``seed``; nothing reads global random state.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

ArrayLike = Any  # np.ndarray | torch.Tensor | nested sequences


def as_array(x: ArrayLike, ndim: int | None = 2) -> np.ndarray:
    """float64 numpy copy of an array or tensor, optionally checking its number of dimensions."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"expected a {ndim}-D array, got shape {a.shape}")
    return a


# --- Fréchet distance -------------------------------------------------------------------------------------------


def gaussian_stats(x: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] of features x [N, D]."""
    a = as_array(x)
    if a.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {a.shape[0]}")
    return a.mean(0), np.atleast_2d(np.cov(a, rowvar=False))


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative eigenvalues from round-off clipped)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_gaussians(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Squared 2-Wasserstein distance between N(mu1, S1) and N(mu2, S2) (Dowson & Landau 1982; FID, Heusel et al. 2017).

    ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), with Tr (S1 S2)^{1/2} = Tr (S1^{1/2} S2 S1^{1/2})^{1/2}
    computed by symmetric eigendecompositions, so no complex round-off arises and no sqrtm is needed.
    """
    m1, m2 = as_array(mu1, 1), as_array(mu2, 1)
    s1, s2 = np.atleast_2d(as_array(sigma1, None)), np.atleast_2d(as_array(sigma2, None))
    if not (m1.shape == m2.shape and s1.shape == s2.shape == (m1.size, m1.size)):
        raise ValueError(f"shape mismatch: mu {m1.shape} vs {m2.shape}, sigma {s1.shape} vs {s2.shape}")
    r1 = _psd_sqrt(s1)
    w = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_covmean = np.sqrt(np.clip(w, 0.0, None)).sum()
    d = float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(d, 0.0)


def frechet_distance(x: ArrayLike, y: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to feature sets x [N, D] and y [M, D] (Heusel et al. 2017)."""
    return frechet_distance_gaussians(*gaussian_stats(x), *gaussian_stats(y))


# --- Kernel inception distance -----------------------------------------------------------------------------------


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """k(x, y) = (x.y / D + coef0)^degree, the KID kernel (Bińkowski et al. 2018, Sec. 4)."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Unbiased MMD^2 U-statistic from kernel matrices (Gretton et al. 2012, Lemma 6)."""
    m, n = kxx.shape[0], kyy.shape[0]
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def kernel_distance(
    x: ArrayLike, y: ArrayLike, subset_size: int = 1000, num_subsets: int = 100, seed: int = 0
) -> tuple[float, float]:
    """KID: mean and std over random subsets of the unbiased MMD^2 with a cubic polynomial kernel (Bińkowski et al. 2018)."""
    a, b = as_array(x), as_array(y)
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    rng = np.random.default_rng(seed)
    vals = np.empty(num_subsets)
    for i in range(num_subsets):
        xs = a[rng.choice(a.shape[0], m, replace=False)]
        ys = b[rng.choice(b.shape[0], m, replace=False)]
        vals[i] = mmd2_unbiased(polynomial_kernel(xs, xs), polynomial_kernel(ys, ys), polynomial_kernel(xs, ys))
    return float(vals.mean()), float(vals.std())


# --- k-NN manifold metrics ---------------------------------------------------------------------------------------


def _pairwise_dist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Euclidean distances [N, M] (callers keep N a block of rows)."""
    d2 = (x**2).sum(1)[:, None] + (y**2).sum(1)[None, :] - 2.0 * x @ y.T
    return np.sqrt(np.clip(d2, 0.0, None))


def _row_blocks(n: int, m: int, budget: int = 2**24) -> range:
    """Row-block starts so that a block of distances [rows, m] holds at most ~budget entries (128 MiB as float64)."""
    return range(0, n, max(1, budget // max(m, 1)))


def knn_radii(x: ArrayLike, k: int = 3) -> np.ndarray:
    """Distance from each point of x [N, D] to its k-th nearest other point of x (Kynkäänniemi et al. 2019, Eq. 2)."""
    a = as_array(x)
    if not 1 <= k < a.shape[0]:
        raise ValueError(f"k={k} must be in [1, {a.shape[0] - 1}] for {a.shape[0]} points")
    step = _row_blocks(len(a), len(a)).step
    # column 0 of the partition is the point itself (distance 0), so column k is the k-th nearest other point
    return np.concatenate([np.partition(_pairwise_dist(a[i : i + step], a), k, axis=1)[:, k] for i in range(0, len(a), step)])


def _in_manifold(query: np.ndarray, support: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean [N_query]: whether each query point lies in some ball B(support_i, radii_i)."""
    step = _row_blocks(len(query), len(support)).step
    return np.concatenate(
        [(_pairwise_dist(query[i : i + step], support) <= radii[None, :]).any(1) for i in range(0, len(query), step)]
    )


def precision_recall(
    real: ArrayLike, fake: ArrayLike, k: int = 3, real_radii: np.ndarray | None = None
) -> tuple[float, float]:
    """Improved precision and recall with k-NN manifolds (Kynkäänniemi et al. 2019, Eqs. 1-3).

    Precision: fraction of fake points inside the real manifold; recall: fraction of real points inside the fake one.
    ``real_radii`` (= knn_radii(real, k)) may be passed to reuse them across calls.
    """
    r, f = as_array(real), as_array(fake)
    precision = float(_in_manifold(f, r, knn_radii(r, k) if real_radii is None else real_radii).mean())
    recall = float(_in_manifold(r, f, knn_radii(f, k)).mean())
    return precision, recall


def density_coverage(
    real: ArrayLike, fake: ArrayLike, k: int = 5, real_radii: np.ndarray | None = None
) -> tuple[float, float]:
    """Density and coverage from real-sample k-NN balls only (Naeem et al. 2020, Eqs. 3-4); density may exceed 1."""
    r, f = as_array(real), as_array(fake)
    radii = knn_radii(r, k) if real_radii is None else real_radii
    hits, covered = 0, 0
    step = _row_blocks(len(r), len(f)).step
    for i in range(0, len(r), step):
        inside = _pairwise_dist(r[i : i + step], f) <= radii[i : i + step, None]  # [block of real, N_fake]
        hits += int(inside.sum())
        covered += int(inside.any(1).sum())
    return float(hits / (k * len(f))), float(covered / len(r))


# --- Classifier-based metrics ------------------------------------------------------------------------------------


def softmax(logits: ArrayLike) -> np.ndarray:
    """Row-wise softmax of logits [N, K]."""
    z = as_array(logits)
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def class_histogram(logits: ArrayLike, num_classes: int | None = None) -> np.ndarray:
    """Fraction of samples assigned (argmax) to each class, from logits [N, K]."""
    z = as_array(logits)
    k = num_classes or z.shape[1]
    return np.bincount(z.argmax(1), minlength=k)[:k] / z.shape[0]


def kl_divergence(p: ArrayLike, q: ArrayLike, eps: float = 1e-3) -> float:
    """KL(p || q) in nats between histograms, each smoothed by eps and renormalised so empty bins stay finite."""
    p_, q_ = as_array(p, 1) + eps, as_array(q, 1) + eps
    p_, q_ = p_ / p_.sum(), q_ / q_.sum()
    return float((p_ * np.log(p_ / q_)).sum())


def class_metrics(fake_logits: ArrayLike, real_logits: ArrayLike, labels: ArrayLike | None = None) -> dict[str, float]:
    """Class-histogram KL to the data's, mean top-1 confidence, modes hit and, given requested labels, their accuracy.

    ``class_kl`` is KL(p_data || p_samples) of the classifier's argmax histograms, which grows when samples miss
    classes of the data (mode dropping); compare with mode-counting in Metz et al. 2017 and Srivastava et al. 2017.
    """
    fl, rl = as_array(fake_logits), as_array(real_logits)
    k = fl.shape[1]
    h_fake, h_real = class_histogram(fl, k), class_histogram(rl, k)
    out = {
        "class_kl": kl_divergence(h_real, h_fake),
        "confidence": float(softmax(fl).max(1).mean()),
        "classes_covered": float((h_fake > 0).sum()),
    }
    if labels is not None:
        lab = as_array(labels, 1).astype(np.int64)
        if lab.shape[0] != fl.shape[0]:
            raise ValueError(f"{lab.shape[0]} labels for {fl.shape[0]} samples")
        out["label_accuracy"] = float((fl.argmax(1) == lab).mean())
    return out


# --- Low-dimensional distribution distances ----------------------------------------------------------------------


def sliced_wasserstein(
    x: ArrayLike, y: ArrayLike, p: int = 2, num_projections: int = 200, seed: int = 0
) -> float:
    """Sliced p-Wasserstein distance with random directions on the sphere (Rabin et al. 2011; Bonneel et al. 2015), via POT."""
    import ot  # POT

    a, b = as_array(x), as_array(y)
    if a.shape[1] == 1:  # one direction is exact
        return wasserstein_1d(a[:, 0], b[:, 0], p)
    return float(ot.sliced_wasserstein_distance(a, b, n_projections=num_projections, p=p, seed=seed))


def wasserstein_1d(x: ArrayLike, y: ArrayLike, p: int = 2) -> float:
    """Exact p-Wasserstein distance between two 1-D empirical measures (quantile coupling), via POT."""
    import ot

    a, b = as_array(x, 1), as_array(y, 1)
    return float(ot.wasserstein_1d(a, b, p=p) ** (1.0 / p))


def median_distance(x: ArrayLike, max_points: int = 2000, seed: int = 0) -> float:
    """Median pairwise Euclidean distance (the median heuristic for kernel bandwidths, Gretton et al. 2012)."""
    a = as_array(x)
    if a.shape[0] > max_points:
        a = a[np.random.default_rng(seed).choice(a.shape[0], max_points, replace=False)]
    d = _pairwise_dist(a, a)  # at most max_points^2 entries
    return float(np.median(d[np.triu_indices(a.shape[0], 1)]))


def mmd_gaussian(
    x: ArrayLike, y: ArrayLike, bandwidths: Sequence[float] | None = None, scales: Sequence[float] = (0.05, 0.1, 0.25, 0.5, 1, 2)
) -> dict[float, float]:
    """Biased (V-statistic) MMD^2 with Gaussian kernels exp(-|x-y|^2 / 2h^2), one per bandwidth h (Gretton et al. 2012).

    Without explicit ``bandwidths``, h = scale * median pairwise distance of y (the reference). The V-statistic is
    non-negative and exactly 0 for identical sets.
    """
    a, b = as_array(x), as_array(y)
    hs = list(bandwidths) if bandwidths is not None else [s * median_distance(b) for s in scales]
    kxx, kyy, kxy = (_gaussian_kernel_means(u, v, hs) for u, v in ((a, a), (b, b), (a, b)))
    return {float(h): max(float(kxx[i] + kyy[i] - 2.0 * kxy[i]), 0.0) for i, h in enumerate(hs)}


def _gaussian_kernel_means(x: np.ndarray, y: np.ndarray, hs: Sequence[float]) -> np.ndarray:
    """Mean of exp(-|x_i - y_j|^2 / 2h^2) over all pairs, for each bandwidth h, computed in row blocks."""
    sums = np.zeros(len(hs))
    for i in _row_blocks(len(x), len(y)):
        d2 = _pairwise_dist(x[i : i + _row_blocks(len(x), len(y)).step], y) ** 2
        for j, h in enumerate(hs):
            sums[j] += np.exp(d2 * (-0.5 / (h * h))).sum()
    return sums / (len(x) * len(y))


def mean_log_likelihood(x: ArrayLike, log_prob: Callable[[torch.Tensor], torch.Tensor]) -> float:
    """Mean log p(x) of samples x [N, D] under a known density, log_prob: Tensor [N, D] -> Tensor [N]."""
    t = torch.as_tensor(as_array(x), dtype=torch.get_default_dtype())
    with torch.no_grad():
        lp = torch.as_tensor(log_prob(t)).double().reshape(-1)
    if lp.shape[0] != t.shape[0]:
        raise ValueError(f"log_prob returned {lp.shape[0]} values for {t.shape[0]} samples")
    return float(lp.mean())
