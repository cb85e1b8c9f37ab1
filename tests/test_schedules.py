import json
import math

import pytest
import torch

from difflab import schedules
from difflab.schedules import DiscreteSchedule

DISCRETE = ["linear", "cosine", "quadratic", "sigmoid"]
CONTINUOUS = ["vp", "subvp", "ve", "cosine"]


@pytest.mark.parametrize("name", DISCRETE)
def test_closed_form_equals_iterating_the_markov_chain(name):
    s = schedules.get(name, T=200)
    mean, var = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    for t in range(s.T):  # x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps
        mean = mean * torch.sqrt(1 - s.betas[t])
        var = (1 - s.betas[t]) * var + s.betas[t]
        tt = torch.tensor([float(t)], dtype=torch.float64)
        assert torch.allclose(s.alpha(tt), mean, rtol=1e-10)
        assert torch.allclose(s.sigma(tt) ** 2, var, rtol=1e-9, atol=1e-12)


def test_closed_form_matches_simulated_chain():
    s = schedules.get("linear", T=100)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000,), 0.7, dtype=torch.float64)
    x = x0.clone()
    for t in range(60):
        x = torch.sqrt(1 - s.betas[t]) * x + torch.sqrt(s.betas[t]) * torch.randn(x.shape, generator=g, dtype=x.dtype)
    t = torch.tensor([59.0], dtype=torch.float64)
    assert abs(x.mean() - 0.7 * s.alpha(t)) < 4 * s.sigma(t) / math.sqrt(len(x))
    assert abs(x.var() / s.sigma(t) ** 2 - 1) < 0.02


@pytest.mark.parametrize("name", DISCRETE)
def test_alpha_bar_and_log_snr_strictly_decreasing(name):
    s = schedules.get(name, T=1000)
    assert (s.alphas_cumprod.diff() < 0).all()
    t = torch.linspace(0, 999, 20001, dtype=torch.float64)
    assert (s.log_snr(t).diff() < 0).all()


@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_log_snr_strictly_decreasing_and_invertible(name):
    s = schedules.get(name)
    t = torch.linspace(max(s.t_min, 1e-4), s.t_max - 1e-4, 5001, dtype=torch.float64)
    lam = s.log_snr(t)
    assert (lam.diff() < 0).all()
    assert torch.allclose(s.t_from_log_snr(lam), t, atol=1e-9)
    assert torch.allclose(s.t_from_sigma_ve(s.sigma_ve(t)), t, atol=1e-9)
    assert torch.allclose(2 * torch.log(s.alpha(t) / s.sigma(t)), lam, atol=1e-9)


def test_published_formulas():
    T = 1000
    lin = schedules.get("linear", T=T)
    assert torch.allclose(lin.betas, torch.linspace(1e-4, 0.02, T, dtype=torch.float64))
    quad = schedules.get("quadratic", T=T)
    t = torch.arange(1, T + 1, dtype=torch.float64)
    expected = (math.sqrt(1e-4) + (t - 1) / (T - 1) * (math.sqrt(0.02) - math.sqrt(1e-4))) ** 2
    assert torch.allclose(quad.betas, expected)
    sig = schedules.get("sigmoid", T=T)
    expected = 1e-4 + (0.02 - 1e-4) / (1 + torch.exp(6 * (1 - 2 * (t - 1) / (T - 1))))
    assert torch.allclose(sig.betas, expected)
    cos = schedules.get("cosine", T=T)
    f = lambda u: torch.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    abar = f(t) / f(torch.zeros(1, dtype=torch.float64))
    unclipped = cos.betas < 0.999
    assert unclipped[:-5].all() and cos.betas.max() <= 0.999
    k = int(unclipped.nonzero().max())  # before the first clipped beta the table is exact
    assert torch.allclose(cos.alphas_cumprod[:k], abar[:k], rtol=1e-10)


@pytest.mark.parametrize("name", DISCRETE)
def test_posterior_matches_bayes_rule(name):
    """mu-tilde and beta-tilde of Ho et al. eq. 6-7 equal the Gaussian product q(x_t|x_{t-1}) q(x_{t-1}|x_0)."""
    s = schedules.get(name, T=300)
    c0, ct = s.posterior_mean_coefs
    x0, xt = 0.3, -1.1
    for t in [1, 7, 150, 299]:
        b, ab_prev = s.betas[t], s.alphas_cumprod[t - 1]
        prec = (1 - b) / b + 1 / (1 - ab_prev)
        mean = (torch.sqrt(1 - b) * xt / b + torch.sqrt(ab_prev) * x0 / (1 - ab_prev)) / prec
        assert torch.allclose(1 / prec, s.posterior_variance[t], rtol=1e-9)
        assert torch.allclose(c0[t] * x0 + ct[t] * xt, mean, rtol=1e-9)
    assert s.posterior_variance[0] == 0


def test_discrete_interpolation_hits_table_and_is_linear_in_log_alpha_bar():
    s = schedules.get("linear", T=1000)
    t = torch.arange(1000, dtype=torch.float64)
    assert torch.allclose(s.alpha(t) ** 2, s.alphas_cumprod, rtol=1e-12)
    mid = s.log_alpha_bar(torch.tensor([10.25], dtype=torch.float64))
    la = torch.log(s.alphas_cumprod)
    assert torch.allclose(mid, 0.75 * la[10] + 0.25 * la[11])


@pytest.mark.parametrize("name", ["vp", "subvp", "ve", "cosine", "linear_T"])
def test_sde_coefficients_reproduce_the_marginal_variance(name):
    """d sigma^2/dt = 2 f sigma^2 + g^2 and d log alpha/dt = f (the SDE has exactly the schedule's marginals)."""
    s = schedules.get("linear", T=1000) if name == "linear_T" else schedules.get(name)
    t = torch.linspace(s.t_min + 0.05 * s.t_max, 0.95 * s.t_max, 7, dtype=torch.float64)
    f, g2 = s.sde(t)
    h = 1e-6 * s.t_max
    dvar = (s.sigma(t + h) ** 2 - s.sigma(t - h) ** 2) / (2 * h)
    dlog_alpha = (torch.log(s.alpha(t + h)) - torch.log(s.alpha(t - h))) / (2 * h)
    assert torch.allclose(dlog_alpha, f, rtol=1e-4, atol=1e-8)
    assert torch.allclose(dvar, 2 * f * s.sigma(t) ** 2 + g2, rtol=1e-4)
    assert (g2 > 0).all()


def test_variance_preserving_and_ve_and_subvp_relations():
    t = torch.linspace(0.01, 1, 50, dtype=torch.float64)
    for name in ["vp", "cosine"]:
        s = schedules.get(name)
        assert torch.allclose(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones_like(t))
    vp, sub = schedules.get("vp"), schedules.get("subvp")
    assert torch.allclose(vp.alpha(t), sub.alpha(t)) and (sub.sigma(t) <= vp.sigma(t)).all()
    ve = schedules.get("ve", sigma_min=0.01, sigma_max=50)
    assert torch.allclose(ve.alpha(t), torch.ones_like(t))
    assert math.isclose(float(ve.sigma(torch.tensor(1.0))), 50, rel_tol=1e-12)


def test_ornstein_uhlenbeck_vp():
    s = schedules.get("vp", beta_min=2.0, beta_max=2.0)
    t = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    assert torch.allclose(s.alpha(t), torch.exp(-t))
    assert torch.allclose(s.sigma(t), torch.sqrt(1 - torch.exp(-2 * t)))
    assert torch.allclose(s.t_from_log_snr(s.log_snr(t)), t)


@pytest.mark.parametrize("spec", [("linear", 1000), ("cosine", 50), ("quadratic", 30), ("sigmoid", 21),
                                  ("vp", None), ("subvp", None), ("ve", None), ("cosine", None), ("vp", 100)])
def test_config_round_trip(spec):
    name, T = spec
    s = schedules.get(name, T=T)
    r = schedules.from_config(s.config())
    t = torch.linspace(s.t_min, s.t_max, 11, dtype=torch.float64)[1:]
    assert type(r) is type(s) and torch.allclose(r.log_snr(t), s.log_snr(t))


def test_discrete_view_of_continuous_schedule():
    vp = schedules.get("vp")
    d = vp.discretize(1000)
    t = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(d.alpha(t * 1000 - 1), vp.alpha(t), rtol=1e-3)


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="unknown schedule"):
        schedules.get("nope", T=10)
    with pytest.raises(ValueError, match="give the number of steps"):
        schedules.get("quadratic")
    with pytest.raises(ValueError, match="beta"):
        schedules.get("linear", T=100, beta_end=1.5)
    with pytest.raises(ValueError):
        DiscreteSchedule(torch.tensor([0.1]))


# ---- DDPM betas for any T: defaults scaled by 1000/T (Nichol & Dhariwal 2021) -------------------------------
def _closed_form_log_alpha_bar(kind: str, T: int, b1: float, bT: float) -> float:
    """log prod_t (1 - beta_t) summed in plain Python from the published formulas."""
    u = [i / (T - 1) for i in range(T)]
    if kind == "linear":
        betas = [b1 + v * (bT - b1) for v in u]
    elif kind == "quadratic":
        betas = [(math.sqrt(b1) + v * (math.sqrt(bT) - math.sqrt(b1))) ** 2 for v in u]
    else:
        betas = [b1 + (bT - b1) / (1 + math.exp(6 * (1 - 2 * v))) for v in u]
    return math.fsum(math.log1p(-b) for b in betas)


@pytest.mark.parametrize("kind", ["linear", "quadratic", "sigmoid"])
def test_default_betas_scale_with_T_so_the_last_alpha_bar_stays_put(kind):
    last, total = {}, {}
    for T in (50, 100, 1000):
        s = schedules.get(kind, T=T)
        b1, bT = 1e-4 * 1000 / T, 0.02 * 1000 / T
        assert s.config()["beta_start"] == pytest.approx(b1, rel=1e-15)
        assert s.config()["beta_end"] == pytest.approx(bT, rel=1e-15)
        la = _closed_form_log_alpha_bar(kind, T, b1, bT)
        assert float(torch.log(s.alphas_cumprod[-1])) == pytest.approx(la, rel=1e-12)
        last[T], total[T] = la, float(s.betas.sum())
    # sum(beta) does not depend on T (exactly for linear and sigmoid, whose shapes average 1/2 on any grid), so
    # -log alpha-bar_{T-1} = sum(beta) + sum(beta^2)/2 + ... moves only at second order: linear -10.1 (T = 1000),
    # -10.8 (100), -11.8 (50); sigmoid -10.1 .. -12.3; quadratic -7.2 .. -8.3.  Unscaled, T = 50 ends at 0.6.
    for T in (50, 100):
        assert total[T] == pytest.approx(total[1000], rel=1e-12 if kind != "quadratic" else 0.01)
        assert abs(last[T] - last[1000]) < 2.5
    assert max(last.values()) < -7.0  # alpha-bar_{T-1} < 1e-3
    unscaled = schedules.get(kind, T=50, beta_start=1e-4, beta_end=0.02)
    assert float(unscaled.alphas_cumprod[-1]) > 0.5


def test_ddpm_tables_at_T_1000_are_unchanged_bit_for_bit():
    T = 1000
    assert torch.equal(schedules.get("linear", T=T).betas, torch.linspace(1e-4, 0.02, T, dtype=torch.float64))
    quad = torch.linspace(math.sqrt(1e-4), math.sqrt(0.02), T, dtype=torch.float64) ** 2
    assert torch.equal(schedules.get("quadratic", T=T).betas, quad)
    u = torch.linspace(0.0, 1.0, T, dtype=torch.float64)
    assert torch.equal(schedules.get("sigmoid", T=T).betas, 1e-4 + (0.02 - 1e-4) * torch.sigmoid(-6.0 * (1.0 - 2.0 * u)))
    assert schedules.get("linear", T=T).config() == {"kind": "linear", "T": 1000, "beta_start": 1e-4, "beta_end": 0.02}


def test_explicit_betas_are_not_scaled_and_saved_runs_rebuild_identically():
    s = schedules.get("linear", T=50, beta_start=1e-4, beta_end=0.02)
    assert torch.equal(s.betas, torch.linspace(1e-4, 0.02, 50, dtype=torch.float64))
    # a run saved before the scaling recorded its endpoints explicitly: it loads the table it was trained with
    old = {"kind": "linear", "T": 50, "beta_start": 0.0001, "beta_end": 0.02}
    assert torch.equal(schedules.from_config(json.loads(json.dumps(old))).betas, s.betas)
    # a new run records the scaled endpoints it used, so it rebuilds the same table whatever the defaults become
    for kind in ("linear", "quadratic", "sigmoid"):
        new = schedules.get(kind, T=50)
        assert torch.equal(schedules.from_config(json.loads(json.dumps(new.config()))).betas, new.betas)
    # only the missing endpoint is scaled
    half = schedules.get("linear", T=50, beta_end=0.3)
    assert half.config()["beta_end"] == 0.3 and half.config()["beta_start"] == pytest.approx(2e-3, rel=1e-15)
    assert schedules.get("linear", T=10, beta_start=1e-3, beta_end=0.1).T == 10  # explicit betas: any T >= 2


@pytest.mark.parametrize("kind", ["linear", "quadratic", "sigmoid"])
@pytest.mark.parametrize("T", [2, 10, 20])
def test_too_few_steps_for_the_scaled_defaults_are_refused(kind, T):
    from difflab.utils.config import ConfigError

    with pytest.raises(ConfigError, match=f"T={T}.*T >= 21"):
        schedules.get(kind, T=T)
    assert schedules.get(kind, T=21).betas.max() < 1
    with pytest.raises(ConfigError, match="T must be an integer >= 2"):
        schedules.get(kind, T=1)


def test_dtype_follows_input():
    s = schedules.get("linear", T=1000)
    assert s.log_snr(torch.tensor([3.5])).dtype == torch.float32
    assert s.alpha(torch.tensor([3.5], dtype=torch.float64)).dtype == torch.float64
