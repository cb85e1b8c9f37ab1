"""Exact Gaussian-mixture marginals and denoisers: against scipy, Monte Carlo and autograd."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import difflab
from difflab.models.gaussian_mixture import GaussianMixture


def mixture(d: int = 2, k: int = 3, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(k, d, generator=g, dtype=torch.float64)
    a = torch.randn(k, d, d, generator=g, dtype=torch.float64)
    covs = 0.1 * a @ a.transpose(-1, -2) / d + 0.05 * torch.eye(d, dtype=torch.float64)
    return GaussianMixture(torch.rand(k, generator=g, dtype=torch.float64) + 0.2, means, covs)


SCHEDULES = {
    "ddpm": lambda: difflab.schedules.get("linear", T=1000),
    "vp": lambda: difflab.schedules.get("vp"),
    "subvp": lambda: difflab.schedules.get("subvp"),
    "ve": lambda: difflab.schedules.get("ve"),
    "cosine": lambda: difflab.schedules.get("cosine"),
}


def test_log_prob_matches_scipy():
    gm = mixture(d=3, k=4)
    x = gm.sample(50, torch.Generator().manual_seed(1))
    ref = np.log(sum(float(w) * multivariate_normal(m.numpy(), c.numpy()).pdf(x.numpy())
                     for w, m, c in zip(gm.weights, gm.means, gm.covs)))
    assert np.allclose(gm.log_prob(x).numpy(), ref, rtol=1e-10, atol=1e-10)


def test_log_prob_is_stable_far_away():
    gm = mixture()
    lp = gm.log_prob(torch.full((2, 2), 1e3, dtype=torch.float64))
    assert torch.isfinite(lp).all() and (lp < -1e4).all()


def test_sample_moments():
    gm = mixture(d=2, k=3)
    x = gm.sample(200_000, torch.Generator().manual_seed(0))
    assert torch.allclose(x.mean(0), gm.mean, atol=0.02)
    assert torch.allclose(torch.cov(x.T), gm.cov, atol=0.03)


@pytest.mark.parametrize("name", ["ddpm", "ve", "subvp"])
def test_marginal_matches_forward_process(name):
    sched = SCHEDULES[name]()
    gm = mixture(d=2, k=2)
    t = 0.3 * sched.t_max
    g = torch.Generator().manual_seed(2)
    x0 = gm.sample(200_000, g)
    xt = sched.q_sample(x0, torch.full((len(x0),), t, dtype=torch.float64), torch.randn(x0.shape, generator=g, dtype=torch.float64))
    m = gm.marginal(sched, t)
    scale = float(m.cov.diagonal().sqrt().max())
    assert torch.allclose(xt.mean(0), m.mean, atol=0.02 * scale)
    assert torch.allclose(torch.cov(xt.T), m.cov, atol=0.02 * scale**2)


def test_denoiser_equals_monte_carlo_posterior_mean():
    sched = difflab.schedules.get("vp")
    gm = mixture(d=2, k=3)
    t = torch.tensor([0.25, 0.25], dtype=torch.float64)
    a, s = (float(v) for v in sched.alpha_sigma(t[:1]))
    x0 = gm.sample(2_000_000, torch.Generator().manual_seed(3))
    xt = torch.stack([a * gm.means[0] + 0.3, a * gm.means[1] - 0.2])
    for i in range(2):  # self-normalised importance weights p(x_t | x_0) under the prior
        logw = -0.5 * ((xt[i] - a * x0) ** 2).sum(1) / s**2
        w = torch.softmax(logw, 0)
        mc = (w[:, None] * x0).sum(0)
        ess = 1.0 / float((w**2).sum())
        assert ess > 1000
        exact = gm.denoiser(sched)(xt[i : i + 1], t[:1])[0]
        assert torch.allclose(exact, mc, atol=5 * float(s) / math.sqrt(ess) + 1e-3)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_score_is_gradient_of_marginal_log_density(name):
    sched = SCHEDULES[name]()
    gm = mixture(d=3, k=3)
    t = 0.2 * sched.t_max + 0.1 * (sched.t_max - sched.t_min)
    x = gm.marginal(sched, t).sample(8, torch.Generator().manual_seed(4)).requires_grad_(True)
    grad = torch.autograd.grad(gm.marginal(sched, t).log_prob(x).sum(), x)[0]
    tt = torch.full((8,), t, dtype=torch.float64)
    for pred in ("x0", "eps"):
        score = gm.denoiser(sched, pred).score(x.detach(), tt)
        assert torch.allclose(score, grad, rtol=1e-7, atol=1e-9), pred
    assert torch.allclose(gm.score(x.detach(), sched, tt), grad, rtol=1e-7, atol=1e-9)


def test_eps_and_x0_parametrisations_agree_and_keep_dtype():
    sched = difflab.schedules.get("linear", T=1000)
    gm = mixture()
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.full((5,), 400.0, dtype=torch.float64)
    assert torch.allclose(gm.denoiser(sched, "x0")(x, t), gm.denoiser(sched, "eps")(x, t), atol=1e-10)
    assert gm.denoiser(sched)(x.float(), t.float()).dtype == torch.float32


def test_rejects_bad_parameters():
    with pytest.raises(ValueError):
        GaussianMixture(torch.ones(2), torch.zeros(2, 2), torch.eye(2)[None].repeat(3, 1, 1))
    with pytest.raises(ValueError):
        GaussianMixture(torch.ones(1), torch.zeros(1, 2), -torch.eye(2)[None])
