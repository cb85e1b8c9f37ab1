"""Evaluation metrics on cases with known answers, and the feature networks' determinism and accuracy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg, stats

from difflab.evaluation import (
    EvaluationError,
    Extractor,
    evaluate_images,
    evaluate_points,
    extract,
    load_feature_net,
)
from difflab.evaluation import metrics as M
from difflab.evaluation.features import (
    RECIPES,
    FeatureNet,
    accuracy,
    assets_dir,
    load_feature_net_file,
    net_data,
    save_feature_net,
    train_feature_net,
    weights_digest,
)


def random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# --- Fréchet distance --------------------------------------------------------------------------------------------


def test_fd_closed_form_matches_formula() -> None:
    rng = np.random.default_rng(0)
    for d in (1, 3, 8):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = random_spd(d, rng), random_spd(d, rng)
        covmean = linalg.sqrtm(s1 @ s2).real
        expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
        assert M.frechet_distance_gaussians(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8, abs=1e-10)


def test_fd_special_cases() -> None:
    rng = np.random.default_rng(1)
    s = random_spd(4, rng)
    mu = rng.normal(size=4)
    assert M.frechet_distance_gaussians(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9)
    # commuting covariances: sum of (sqrt(a) - sqrt(b))^2 over eigenvalues plus the mean term
    a, b = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 9.0])
    assert M.frechet_distance_gaussians(np.zeros(3), a, np.ones(3), b) == pytest.approx(3 + 1 + 1 + 0)
    # singular (rank-deficient) covariances stay finite and real
    z = np.zeros((3, 3))
    assert M.frechet_distance_gaussians(np.zeros(3), z, np.zeros(3), a) == pytest.approx(np.trace(a))


def test_fd_identical_sets_is_zero() -> None:
    x = np.random.default_rng(2).normal(size=(200, 16))
    assert M.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert M.frechet_distance(torch.from_numpy(x), x) == pytest.approx(0.0, abs=1e-8)


def test_fd_of_gaussian_samples_approaches_closed_form() -> None:
    rng = np.random.default_rng(3)
    d = 4
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    s1, s2 = random_spd(d, rng), random_spd(d, rng)
    exact = M.frechet_distance_gaussians(mu1, s1, mu2, s2)
    errs = []
    for n in (1000, 50000):
        x = rng.multivariate_normal(mu1, s1, size=n)
        y = rng.multivariate_normal(mu2, s2, size=n)
        errs.append(abs(M.frechet_distance(x, y) - exact))
    assert errs[1] < 0.02 * exact
    assert errs[1] < errs[0] + 1e-3


# --- KID ---------------------------------------------------------------------------------------------------------


def test_kid_unbiased_on_equal_distributions() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8))
    mean, std = M.kernel_distance(x, y, subset_size=200, num_subsets=50, seed=0)
    assert abs(mean) < 3 * std / np.sqrt(50) + 1e-4  # mean of 50 subset estimates is near 0
    shifted, _ = M.kernel_distance(x, y + 1.0, subset_size=200, num_subsets=50, seed=0)
    assert shifted > 10 * std


def test_kid_is_seeded() -> None:
    x = np.random.default_rng(5).normal(size=(300, 4))
    y = x + 0.1
    assert M.kernel_distance(x, y, 100, 10, seed=7) == M.kernel_distance(x, y, 100, 10, seed=7)


# --- precision / recall, density / coverage ----------------------------------------------------------------------


def test_precision_recall_of_a_set_with_itself_is_one() -> None:
    x = np.random.default_rng(6).normal(size=(300, 5))
    assert M.precision_recall(x, x, k=3) == (1.0, 1.0)
    _, coverage = M.density_coverage(x, x, k=5)
    assert coverage == 1.0


def test_precision_recall_of_disjoint_sets_is_zero() -> None:
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(300, 5)), rng.normal(size=(300, 5)) + 100.0
    assert M.precision_recall(x, y, k=3) == (0.0, 0.0)
    assert M.density_coverage(x, y, k=5) == (0.0, 0.0)


def test_precision_recall_separate_fidelity_from_diversity() -> None:
    rng = np.random.default_rng(8)
    real = rng.normal(size=(1000, 2))
    collapsed = rng.normal(size=(1000, 2)) * 0.1  # inside the data manifold, but covering little of it
    p, r = M.precision_recall(real, collapsed, k=3)
    assert p > 0.95 and r < 0.3


# --- class metrics -----------------------------------------------------------------------------------------------


def test_class_metrics() -> None:
    eye = np.eye(10) * 20
    real = np.repeat(eye, 10, axis=0)  # 10 per class
    single = np.repeat(eye[:1], 100, axis=0)
    m_same = M.class_metrics(real, real, labels=np.repeat(np.arange(10), 10))
    assert m_same["class_kl"] == pytest.approx(0.0, abs=1e-12)
    assert m_same["label_accuracy"] == 1.0 and m_same["classes_covered"] == 10
    assert m_same["confidence"] > 0.99
    m_single = M.class_metrics(single, real)
    assert m_single["class_kl"] > 1.0 and m_single["classes_covered"] == 1


# --- low-dimensional distances -----------------------------------------------------------------------------------


def test_sliced_wasserstein_1d_matches_sorted_samples() -> None:
    rng = np.random.default_rng(9)
    x, y = rng.normal(size=500), rng.exponential(size=500)
    w1 = np.abs(np.sort(x) - np.sort(y)).mean()
    w2 = np.sqrt(((np.sort(x) - np.sort(y)) ** 2).mean())
    assert M.sliced_wasserstein(x[:, None], y[:, None], p=1) == pytest.approx(w1)
    assert M.sliced_wasserstein(x[:, None], y[:, None], p=2) == pytest.approx(w2)


def test_sliced_wasserstein_of_a_shift() -> None:
    # shifting by c: every projection onto direction u is shifted by u.c, so SW_2^2 = E_u[(u.c)^2] = |c|^2 / d
    rng = np.random.default_rng(10)
    x = rng.normal(size=(1000, 2))
    c = np.array([3.0, 0.0])
    sw = M.sliced_wasserstein(x, x + c, p=2, num_projections=1000, seed=0)
    assert sw == pytest.approx(np.linalg.norm(c) / np.sqrt(2), rel=0.05)
    assert M.sliced_wasserstein(x, x, p=2, seed=0) == pytest.approx(0.0, abs=1e-12)


def test_mmd_zero_for_identical_and_increasing_with_shift() -> None:
    x = np.random.default_rng(11).normal(size=(400, 2))
    assert all(v == pytest.approx(0.0, abs=1e-12) for v in M.mmd_gaussian(x, x).values())
    vals = [np.mean(list(M.mmd_gaussian(x + s, x, bandwidths=[0.5, 1.0, 2.0]).values())) for s in (0.1, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(vals, vals[1:]))


def test_mean_log_likelihood() -> None:
    x = np.random.default_rng(12).normal(size=(1000, 2))
    dist = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    ll = M.mean_log_likelihood(x, dist.log_prob)
    assert ll == pytest.approx(stats.multivariate_normal(np.zeros(2), np.eye(2)).logpdf(x).mean(), rel=1e-5)


def test_evaluate_points_keys_and_scale() -> None:
    rng = np.random.default_rng(13)
    ref, good, bad = rng.normal(size=(1000, 2)), rng.normal(size=(1000, 2)), rng.normal(size=(1000, 2)) + 2
    dist = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
    g, b = evaluate_points(good, ref, dist.log_prob), evaluate_points(bad, ref, dist.log_prob)
    for key in ("sw1", "sw2", "mmd", "mmd@1", "fd", "precision", "recall", "log_likelihood", "reference_log_likelihood"):
        assert isinstance(g[key], float)
    assert g["sw2"] < b["sw2"] and g["mmd"] < b["mmd"] and g["fd"] < b["fd"]
    assert g["log_likelihood"] > b["log_likelihood"]


# --- feature networks --------------------------------------------------------------------------------------------


def test_feature_net_training_is_deterministic() -> None:
    cfg = RECIPES["digits"].replace(channels=(8, 8), feature_dim=16, batch_size=32)
    x, y = net_data("digits", "train")
    x, y = x[:256], y[:256]
    state = torch.get_rng_state()  # training must not touch the global RNG stream
    a = train_feature_net(cfg, x, y, max_steps=8)
    assert torch.equal(torch.get_rng_state(), state)
    b = train_feature_net(cfg, x, y, max_steps=8)
    assert weights_digest(a) == weights_digest(b)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    c = train_feature_net(cfg.replace(seed=1), x, y, max_steps=8)
    assert weights_digest(a) != weights_digest(c)


def test_feature_net_save_load_roundtrip(tmp_path) -> None:
    cfg = RECIPES["digits"].replace(channels=(4,), feature_dim=8)
    net = FeatureNet(cfg)
    path = save_feature_net(net, tmp_path, {"heldout_accuracy": 0.5})
    net2, info = load_feature_net_file(path)
    assert info["heldout_accuracy"] == 0.5 and info["config"]["channels"] == [4]
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    assert torch.equal(net(x)[1], net2(x)[1])


def _correct_and_near_ties(net, x, y) -> tuple[int, int]:
    """Correct top-1 predictions, and predictions whose top-2 logit gap is within float32 rounding of a tie
    (these may flip with the CPU's kernels: 1e-4 of the logits' scale, ~1000 float32 ulps)."""
    with torch.no_grad():
        logits = net.eval()(x)[1].double()
    top2 = logits.topk(2, dim=1).values
    near = (top2[:, 0] - top2[:, 1]) <= 1e-4 * logits.abs().amax(1)
    return int((logits.argmax(1) == y).sum()), int(near.sum())


def test_shipped_digits_net_classifies_heldout_digits() -> None:
    path = assets_dir() / "feature_net_digits.safetensors"
    assert path.is_file(), "digits feature net weights must ship in difflab/assets"
    net, info = load_feature_net_file(path)
    x, y = net_data("digits", "test")
    correct, near = _correct_and_near_ties(net, x, y)
    assert correct / len(x) >= 0.9 and accuracy(net, x, y) == correct / len(x)
    # the stored held-out accuracy counts the same images: equal, up to the predictions a rounding could flip
    assert abs(correct - round(info["heldout_accuracy"] * len(x))) <= near


def _mnist_dir():
    """The MNIST IDX files: $DIFFLAB_MNIST, or shared/data/mnist beside the repository (as on CI)."""
    import os
    from pathlib import Path

    for d in (os.environ.get("DIFFLAB_MNIST"), Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"):
        if d and Path(d).is_dir():
            return Path(d)
    return None


@pytest.mark.skipif(_mnist_dir() is None, reason="no MNIST IDX files ($DIFFLAB_MNIST or ../shared/data/mnist)")
def test_shipped_mnist_net_loads_and_classifies_real_digits() -> None:
    from difflab import data

    net, info = load_feature_net_file(assets_dir() / "feature_net_mnist.safetensors")
    assert net.input_shape == (1, 28, 28) and info["config"]["name"] == "mnist"
    test = data.load(f"mnist:{_mnist_dir()}", "test")
    idx = torch.arange(500)
    correct, _ = _correct_and_near_ties(net, test.batch(idx), test.y[idx])
    # held-out accuracy 0.9897 over 10000: P(fewer than 480 of 500 right) < 1e-6
    assert correct >= 480


def test_evaluate_images_on_digits() -> None:
    xtr, _ = net_data("digits", "train")
    xte, yte = net_data("digits", "test")
    ref = extract(xtr, "digits")
    real = evaluate_images(xte, ref, labels=yte, kid_subsets=20)
    noisy = evaluate_images((xte + 0.5 * torch.randn(xte.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1), ref, kid_subsets=20)
    assert real["label_accuracy"] >= 0.9 and real["class_kl"] < 0.05
    assert real["fd"] < noisy["fd"] and real["kid"] < noisy["kid"] and real["precision"] > noisy["precision"]
    assert all(isinstance(v, float) for v in real.values())


def test_extractor_shapes_and_plugin() -> None:
    net = load_feature_net("digits", train_if_missing=False)
    ex = Extractor(net, net.input_shape, "digits")
    x8 = torch.rand(4, 1, 8, 8) * 2 - 1
    x32 = x8.repeat_interleave(4, 2).repeat_interleave(4, 3)  # exact 4x area upsampling
    assert np.allclose(ex(x8).features, ex(x32).features, atol=1e-5)
    with pytest.raises(EvaluationError, match=r"\[N, 1, 8, 8\]"):
        ex(torch.zeros(2, 1, 28, 28))
    with pytest.raises(EvaluationError, match=r"\[N, 1, 8, 8\]"):
        ex(torch.zeros(2, 3, 8, 8))
    # any callable returning features only: class metrics are skipped, the rest works
    flat = lambda x: x.flatten(1)  # noqa: E731
    out = evaluate_images(torch.rand(50, 1, 8, 8), torch.rand(60, 1, 8, 8), features=flat, kid_subsets=5)
    assert "fd" in out and "class_kl" not in out


@pytest.mark.slow
def test_digits_recipe_reproduces_shipped_net() -> None:
    from difflab.evaluation.features import build_feature_net

    net, meta = build_feature_net("digits")
    _, info = load_feature_net_file(assets_dir() / "feature_net_digits.safetensors")
    # bit-identical on the same torch build and CPU type; elsewhere the accuracy must still agree closely
    if weights_digest(net) != info["sha256"]:
        assert meta["heldout_accuracy"] == pytest.approx(info["heldout_accuracy"], abs=0.015)


def test_reference_features_for_a_data_spec() -> None:
    from difflab.evaluation import features_for, reference_features

    assert features_for("digits") == "digits" and features_for("mnist:/some/dir") == "mnist"
    with pytest.raises(EvaluationError):
        features_for("toy:moons")
    ref = reference_features("digits", "train", max_n=100)
    assert ref.features.shape == (100, 128) and ref.logits is not None and ref.logits.shape == (100, 10)
    assert np.array_equal(ref.knn_radii(3), M.knn_radii(ref.features, 3))


def test_reference_images_are_a_seeded_subset_of_the_split() -> None:
    import torch

    from difflab import data
    from difflab.evaluation import reference_images

    full = data.load("digits", "train").x
    assert torch.equal(reference_images("digits", "train", max_n=10**6), full)  # not larger than max_n: all, in order
    a = reference_images("digits", "train", max_n=50, seed=3)
    assert a.shape == (50, 1, 8, 8) and torch.equal(a, reference_images("digits", "train", max_n=50, seed=3))
    assert not torch.equal(a, reference_images("digits", "train", max_n=50, seed=4))
    rows = {tuple(r.flatten().tolist()) for r in full}
    assert all(tuple(r.flatten().tolist()) in rows for r in a)  # drawn from the split
    with pytest.raises(EvaluationError):
        reference_images("toy:moons")
