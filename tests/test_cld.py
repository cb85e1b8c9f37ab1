"""Critically-damped Langevin diffusion: the kernel's closed form, HSM's minimiser, the samplers and the ODE
likelihood on Gaussian data with the exact v-score, and the scalar samplers' refusal."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from torch import nn

from difflab.errors import UserError
from difflab.likelihood.cld import cld_log_likelihood_bound, ode_log_prob
from difflab.models.gaussian_mixture import GaussianMixture
from difflab.samplers import sample
from difflab.samplers.cld import sample_cld
from difflab.schedules import VP, CLD, as_process, is_scalar, require_scalar
from difflab.training.cld import CLDConfig, CLDScore, build_score, hsm_loss
from difflab.utils.config import ConfigError

MEAN, VAR = 0.5, 0.3  # Gaussian data N(0.5, 0.3) per dimension: away from the prior N(0, 1)


def _moments_by_ode(p: CLD, ts: list[float]) -> np.ndarray:
    """Integrate dm/dt = F m and dS/dt = F S + S F^T + G G^T from m = (1, 0), S = diag(0, gamma M)."""

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        F, GG = (a[0].numpy() for a in p.sde_matrices(torch.tensor([t], dtype=torch.float64)))
        m, S = y[:2], y[2:].reshape(2, 2)
        return np.concatenate([F @ m, (F @ S + S @ F.T + GG).ravel()])

    y0 = np.array([1.0, 0.0, 0.0, 0.0, 0.0, p.gamma * p.M])
    sol = solve_ivp(rhs, (0.0, ts[-1]), y0, t_eval=ts, rtol=1e-11, atol=1e-13, method="DOP853")
    return sol.y.T


@pytest.mark.parametrize("beta1", [0.0, 3.0])
def test_kernel_solves_the_moment_odes(beta1):
    p = CLD(beta1=beta1)
    ts = [1e-3, 0.05, 0.3, 0.7, 1.0]
    ref = _moments_by_ode(p, ts)
    t = torch.tensor(ts, dtype=torch.float64)
    m, S = p.mean_coeff(t), p.cov(t)
    np.testing.assert_allclose(m.numpy(), ref[:, :2], rtol=0, atol=1e-9)
    np.testing.assert_allclose(S.reshape(-1, 4).numpy(), ref[:, 2:], rtol=0, atol=1e-9)


def test_prior_is_reached_at_t1():
    p = CLD()
    S1 = float(p.integrated_beta(1.0))
    bound = math.exp(-p.kappa * S1) * (1 + p.kappa * S1 + S1 / p.M)  # |entries of exp(S A)|, the x_0 left in u_1
    m, S = p.mean_coeff(1.0)[0], p.cov(1.0)[0]
    assert float(m.abs().max()) <= bound < 0.02
    np.testing.assert_allclose(S.numpy(), np.diag([1.0, p.M]), atol=2 * bound)


def test_cholesky_factor_and_perturbation():
    p = CLD()
    t = torch.tensor([1e-5, 1e-3, 0.1, 0.9], dtype=torch.float64)
    lxx, lxv, lvv = p.cholesky(t)
    xx, xv, vv = p.kernel_cov(t)
    torch.testing.assert_close(lxx ** 2, xx, rtol=1e-12, atol=0)
    torch.testing.assert_close(lxx * lxv, xv, rtol=1e-12, atol=0)
    torch.testing.assert_close(lxv ** 2 + lvv ** 2, vv, rtol=1e-10, atol=0)
    torch.testing.assert_close(p.ell(t) ** 2, xx / (xx * vv - xv ** 2), rtol=1e-8, atol=0)
    x0 = torch.full((4, 3), 2.0, dtype=torch.float64)
    eps = torch.randn(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = p.perturb(x0, t, eps)
    x, v = p.split(u)
    m = p.mean_coeff(t)
    torch.testing.assert_close(x, m[:, :1] * x0 + lxx[:, None] * eps[:, :3])
    torch.testing.assert_close(v, m[:, 1:] * x0 + lxv[:, None] * eps[:, :3] + lvv[:, None] * eps[:, 3:])


def test_non_critical_damping_is_refused():
    with pytest.raises(ConfigError, match="critical damping"):
        CLD(M=0.25, Gamma=2.0)


@pytest.mark.parametrize("t", [0.02, 0.4])
def test_hsm_target_regresses_to_the_exact_v_score(t):
    """E[-l_t eps_v | u_t] = grad_v log p_t(u_t): least squares of the DSM target on (x_t, v_t, 1) recovers the
    exact (linear) score's coefficients, within 6 standard errors of the regression."""
    p = CLD()
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x0 = MEAN + math.sqrt(VAR) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    tt = torch.full((n,), t, dtype=torch.float64)
    eps = torch.randn(n, 2, generator=g, dtype=torch.float64)
    u = p.perturb(x0, tt, eps)
    target = (-p.ell(tt)[:, None] * eps[:, 1:])[:, 0]
    X = torch.cat([u, torch.ones(n, 1, dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(X, target[:, None]).solution[:, 0]
    resid = target - X @ coef
    se = (resid.var() * torch.linalg.inv(X.T @ X).diagonal()).sqrt()
    score = p.gaussian_score(MEAN, VAR)
    basis = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    s0 = score(basis[2:], torch.tensor([t], dtype=torch.float64))[0, 0]
    exact = torch.stack([score(basis[i:i + 1], torch.tensor([t], dtype=torch.float64))[0, 0] - s0
                         for i in range(2)] + [s0])
    assert bool(((coef - exact).abs() <= 6 * se).all()), (coef, exact, se)


class _Exact(nn.Module):
    """A 'network' returning c times the residual that makes CLDScore exact for Gaussian data."""

    def __init__(self, p: CLD):
        super().__init__()
        self.p, self.c = p, nn.Parameter(torch.ones((), dtype=torch.float64))
        self.score = p.gaussian_score(MEAN, VAR)

    def forward(self, u, t):
        ell = self.p.ell(t)[:, None]
        mixed = (1.0 / (ell * self.p.kernel_cov(t)[2][:, None])) * self.p.split(u)[1]
        return self.c * (-self.score(u, t) / ell - mixed)


def test_hsm_loss_is_minimised_by_the_exact_score():
    p = CLD()
    model = CLDScore(_Exact(p), p, (2,))
    g = torch.Generator().manual_seed(2)
    n = 20_000
    x0 = MEAN + math.sqrt(VAR) * torch.randn(n, 2, generator=g, dtype=torch.float64)
    t = p.eps + (1 - p.eps) * torch.rand(n, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 4, generator=g, dtype=torch.float64)
    u = p.perturb(x0, t, eps)
    torch.testing.assert_close(model(u, t), p.gaussian_score(MEAN, VAR)(u, t))  # the mixed score is exact

    def best_c(sl: slice) -> float:
        """The minimiser of the quadratic c -> HSM loss on the examples sl (three evaluations)."""
        ls = []
        for c in (0.0, 1.0, 2.0):
            with torch.no_grad():
                model.net.c.fill_(c)
                ls.append(float(hsm_loss(model, x0[sl], t[sl], eps[sl])))
        curv = ls[0] - 2 * ls[1] + ls[2]  # 2 C
        return 1.0 - (ls[2] - ls[0]) / (2 * curv)

    chunks = [best_c(slice(i, i + n // 10)) for i in range(0, n, n // 10)]
    se = float(np.std(chunks, ddof=1)) / math.sqrt(10)
    assert abs(best_c(slice(None)) - 1.0) < 6 * se, (chunks, se)


@pytest.mark.parametrize("sampler", ["em", "sscs", "ode"])
def test_samplers_with_the_exact_score_reproduce_gaussian_data(sampler):
    """Mean and variance of x_0 within 6 standard errors plus a first-order step bias 2 / steps (ode: solver tol)."""
    p = CLD()
    n, steps = 4000, 100
    g = torch.Generator().manual_seed(3)
    u = p.sample_prior((n, 2), generator=g, dtype=torch.float64)
    x, calls = sample_cld(p.gaussian_score(MEAN, VAR), p, u, sampler, steps, generator=g, return_nfe=True,
                          **({"rtol": 1e-5, "atol": 1e-5} if sampler == "ode" else {}))
    if sampler != "ode":
        assert calls == steps
    m = n * 2
    bias = 0.0 if sampler == "ode" else 2.0 / steps
    assert abs(float(x.mean()) - MEAN) < 6 * math.sqrt(VAR / m) + bias
    assert abs(float(x.var(0).mean()) - VAR) < 6 * VAR * math.sqrt(2 / m) + bias


def test_sampler_is_deterministic_with_a_seed_and_reports_steps():
    p = CLD()
    seen = []
    outs = [sample_cld(p.gaussian_score(), p, p.sample_prior((8, 2), generator=torch.Generator().manual_seed(5)),
                       "sscs", 6, generator=torch.Generator().manual_seed(6),
                       callback=lambda d: seen.append(d["t"])) for _ in range(2)]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert len(seen) == 12 and seen[-1] == pytest.approx(1e-3)


def test_ode_likelihood_with_the_exact_score_matches_the_gaussian_density():
    p = CLD()
    g = torch.Generator().manual_seed(4)
    x = MEAN + math.sqrt(VAR) * torch.randn(6, 2, generator=g, dtype=torch.float64)
    v = math.sqrt(p.gamma * p.M) * torch.randn(6, 2, generator=g, dtype=torch.float64)
    u = p.join(x, v)
    out = ode_log_prob(p.gaussian_score(MEAN, VAR), p, u, trace="exact", rtol=1e-7, atol=1e-7,
                       log_prior=lambda w: p.gaussian_log_prob(w, 1.0, MEAN, VAR))
    torch.testing.assert_close(out["log_prob"], p.gaussian_log_prob(u, p.eps, MEAN, VAR), rtol=0, atol=1e-3)
    # the reported bound E_v0[log p(x, v0) - log q(v0)] on log p(x): at t = eps, v is nearly independent of x, so
    # the gap KL(q(v0) || p(v0 | x)) is ~0 and the bound's mean matches log p(x) within its Monte-Carlo error
    xs = x.repeat(50, 1)
    bound = cld_log_likelihood_bound(p.gaussian_score(MEAN, VAR), p, xs, trace="exact", rtol=1e-5, atol=1e-5,
                                     generator=torch.Generator().manual_seed(7))
    _, _, (xx, _, _) = p.gaussian_marginal(p.eps, MEAN, VAR)
    px = (-0.5 * (xs - MEAN * p.mean_coeff(p.eps)[0, 0]) ** 2 / xx - 0.5 * torch.log(2 * math.pi * xx)).sum(1)
    diff = bound - px
    assert abs(float(diff.mean())) < 6 * float(diff.std()) / math.sqrt(len(diff)) + 1e-3


def test_scalar_samplers_refuse_cld():
    cfg = CLDConfig()
    model = build_score(cfg, (2,))
    assert not is_scalar(model.schedule) and is_scalar(VP()) and is_scalar(as_process(VP()))
    require_scalar(VP(), "x")
    with pytest.raises(UserError, match="sampler 'ddim' is for scalar alpha.*not the cld process; its samplers: "
                                         "euler_maruyama, sscs, dopri5"):
        sample(model, torch.zeros(3, 4), sampler="ddim", steps=5)
    with pytest.raises(UserError, match="sampler 'sscs' is for the cld process, not the scalar process"):
        sample(GaussianMixture(torch.ones(1), torch.zeros(1, 2), torch.eye(2)[None]).denoiser(VP()),
               torch.zeros(3, 2), sampler="sscs", steps=5)


def test_networks_read_x_and_v():
    img = build_score(CLDConfig(network={"channels": 8, "groups": 4, "num_heads": 2}), (1, 8, 8))
    assert img.net.config.in_channels == 2 and img.net.config.out_channels == 1
    u = torch.randn(2, 2, 8, 8)
    assert img(u, torch.full((2,), 0.5)).shape == (2, 1, 8, 8)
    pts = build_score(CLDConfig(network={"hidden": 16, "depth": 1}), (2,))
    assert pts(torch.randn(5, 4), torch.full((5,), 0.5)).shape == (5, 2)


@pytest.mark.slow
def test_cli_train_sample_evaluate(tmp_path):
    from difflab.cli.main import main

    run = tmp_path / "run"
    assert main(["train", "--family", "cld", "--data", "toy:moons", "--steps", "4", "--batch-size", "32",
                 "--out", str(run), "--quiet", "--config", str(_cfg(tmp_path))]) == 0
    assert main(["sample", "--run", str(run), "--sampler", "em", "--steps", "5", "--num", "20",
                 "--out", str(tmp_path / "s.npz")]) == 0
    assert np.load(tmp_path / "s.npz")["samples"].shape == (20, 2)
    assert main(["sample", "--run", str(run), "--sampler", "ddim", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["sample", "--run", str(run), "--sampler", "heun", "--out", str(tmp_path / "s.png"), "--overwrite"]) == 2
    assert main(["evaluate", "--run", str(run), "--sampler", "sscs", "--steps", "5", "--num", "50", "--nll",
                 "--nll-num", "4", "--json", str(tmp_path / "e.json")]) == 0
    import json

    r = json.loads((tmp_path / "e.json").read_text())
    assert r["nll"]["unit"] == "nats" and math.isfinite(r["nll"]["nll"]) and r["nfe"] == 5


def _cfg(tmp_path):
    path = tmp_path / "cld.json"
    path.write_text('{"network": {"hidden": 32, "depth": 1}, "sample_steps": 4, "warmup_steps": 1}')
    return path


def test_cli_train_and_sample_with_cld_samplers(tmp_path, capsys):
    from difflab.cli.main import main

    run = tmp_path / "run"
    assert main(["train", "--family", "cld", "--data", "toy:moons", "--steps", "2", "--batch-size", "16",
                 "--out", str(run), "--quiet", "--config", str(_cfg(tmp_path))]) == 0
    for sampler, code in (("sscs", 0), ("ode", 0), ("dpmpp_2m", 2)):
        assert main(["sample", "--run", str(run), "--sampler", sampler, "--steps", "3", "--num", "8",
                     "--out", str(tmp_path / "s.npz"), "--overwrite"]) == code
    assert np.load(tmp_path / "s.npz")["samples"].shape == (8, 2)
    for sampler in ("euler_maruyama", "em"):  # the common name and the alias runs were first saved with: same draws
        assert main(["sample", "--run", str(run), "--sampler", sampler, "--steps", "3", "--num", "8",
                     "--out", str(tmp_path / f"{sampler}.npz")]) == 0
    assert np.array_equal(np.load(tmp_path / "em.npz")["samples"], np.load(tmp_path / "euler_maruyama.npz")["samples"])
    capsys.readouterr()
    assert main(["sample", "--run", str(run), "--grid", "karras", "--out", str(tmp_path / "g.npz")]) == 2
    assert "--grid karras:" in capsys.readouterr().err  # CLD's samplers keep their own time grid
    assert main(["train", "--family", "cld", "--data", "toy:moons", "--conditional", "--out",
                 str(tmp_path / "c")]) == 2
