"""LSGM (Vahdat et al. 2021): the bound with a Normal prior is the VAE's ELBO, the DSM cross entropy is exact for a
Gaussian prior, the latent ODE sampler, and the lsgm family through train / sample / evaluate / report."""
import json
import math

import numpy as np
import pytest
import torch

from difflab.cli.main import main
from difflab.errors import UserError
from difflab.likelihood.lsgm import (ce_constant, latent_gaussian, lsgm_bound,
                                     sample_time, terminal_cross_entropy, dsm_cross_entropy)
from difflab.models.denoiser import Denoiser
from difflab.models.lsgm import LSGMNetConfig, build_lsgm_nets
from difflab.training.lsgm import LSGMConfig, LSGMFamily, lsgm_nll, sample_latent

TINY = {"channels": 8, "prior_channels": 8, "prior_blocks": 1}
SCHED = LSGMConfig().schedule()  # VP beta 0.1 -> 20 on [0.01, 1]


@pytest.fixture(scope="module")
def digits():
    from difflab.data import load

    return load("digits", "train")


def _nets(mixing_logit=-5.0, dtype=torch.float64):
    torch.manual_seed(0)
    nets = build_lsgm_nets(LSGMNetConfig(shape=(1, 8, 8), **TINY), SCHED)
    with torch.no_grad():
        nets["prior"].net.mixing_logit.fill_(mixing_logit)  # -inf: the residual is switched off exactly
    return {k: m.to(dtype).eval() for k, m in nets.items()}


def _gaussian_prior(m0: float, s0: float) -> Denoiser:
    """The exact eps of p_t = N(alpha m0, alpha^2 s0^2 + sigma^2), the VP diffusion of N(m0, s0^2)."""
    def eps(z, t):
        a, s = (v.to(z.dtype)[:, None, None, None] for v in SCHED.alpha_sigma(t.to(torch.float64)))
        return s * (z - a * m0) / (a * a * s0 * s0 + s * s)
    return Denoiser(eps, SCHED, "eps")


def _gauss_ce(mq, vq, mp, vp):
    """CE(N(mq, vq) || N(mp, vp)) summed over dimensions."""
    mp, vp = (torch.as_tensor(v, dtype=torch.float64) for v in (mp, vp))
    return float((0.5 * (math.log(2 * math.pi) + torch.log(vp) + (vq + (mq - mp) ** 2) / vp)).sum())


@pytest.mark.parametrize("sde", ["vp", "geometric_vp"])
def test_time_sampling_weight_is_the_likelihood_weighting_over_the_density(sde):
    # w / r = (g^2 / sigma^2)(t(u)) dt/du for each scheme (central differences of the inverse CDF u -> t), and t(0),
    # t(1) are the ends of [eps, 1]
    sched = LSGMConfig(sde=sde).schedule()
    u, h = torch.linspace(0.01, 0.99, 99, dtype=torch.float64), 1e-6
    for mode in ("ll_iw", "logsnr", "uniform"):
        t, w = sample_time(sched, u, mode)
        dt = (sample_time(sched, u + h, mode)[0] - sample_time(sched, u - h, mode)[0]) / (2 * h)
        g2 = sched.sde(t)[1]
        assert torch.allclose(w, g2 / sched.sigma(t) ** 2 * dt, rtol=1e-5)
        ends = sample_time(sched, torch.tensor([0.0, 1.0], dtype=torch.float64), mode)[0]
        assert torch.allclose(ends, torch.tensor([0.01, 1.0], dtype=torch.float64), rtol=1e-9)


def test_geometric_vp_sde():
    # sigma^2(t) geometric and alpha^2 + sigma^2 = 1; beta = g^2 = -d log alpha^2 / dt (central differences);
    # t_from_log_snr inverts log_snr; the likelihood weighting's importance sampling is uniform t (LSGM sec. 3.4)
    from difflab.schedules import GeometricVP, from_config

    g = LSGMConfig(sde="geometric_vp").schedule()
    assert isinstance(g, GeometricVP) and from_config(g.config()).config() == g.config()
    t, h = torch.linspace(0.02, 0.98, 49, dtype=torch.float64), 1e-6
    var = g.sigma(t) ** 2
    assert torch.allclose(var, 3e-5 * (0.999 / 3e-5) ** t, rtol=1e-12)
    assert torch.allclose(g.alpha(t) ** 2 + var, torch.ones_like(t), atol=1e-14)
    dlog_a2 = (torch.log(g.alpha(t + h) ** 2) - torch.log(g.alpha(t - h) ** 2)) / (2 * h)
    f, g2 = g.sde(t)
    assert torch.allclose(g2, -dlog_a2, rtol=1e-6) and torch.allclose(f, -0.5 * g2)
    assert torch.allclose(g.t_from_log_snr(g.log_snr(t)), t, atol=1e-12)
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(sample_time(g, u, "ll_iw")[0], 0.01 + 0.99 * u, atol=1e-12)
    with pytest.raises(Exception, match="sigma2_min < sigma2_max"):
        LSGMConfig(sde="geometric_vp", sigma2_min=0.5, sigma2_max=0.1).check()


def test_ce_formula_exact_for_a_diffused_gaussian_prior_by_quadrature():
    # CE(q_eps || p_eps) = CE(q_1 || p_1) + D/2 log(s_eps^2 / s_1^2) + 1/2 int w E||n - eps(z_t)||^2 dt, with the
    # inner expectation in closed form for the linear eps of a Gaussian prior: an identity, checked to 1e-7
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64), -1 + 0.5 * torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64)
    m0, s0 = 0.4, 0.7
    u, wq = np.polynomial.legendre.leggauss(400)
    t, w = sample_time(SCHED, torch.tensor((u + 1) / 2), "ll_iw")
    a, s = (v[:, None, None, None, None] for v in SCHED.alpha_sigma(t))
    vp = a * a * s0 * s0 + s * s
    c1, c0 = s / vp, -s * a * m0 / vp
    inner = ((1 - c1 * s) ** 2 + c1 ** 2 * a ** 2 * logvar.exp() + (c1 * a * mu + c0) ** 2).flatten(1).sum(1)
    dsm = float((torch.tensor(wq / 2) * 0.5 * w * inner).sum())
    a1, s1 = (float(v) for v in SCHED.alpha_sigma(torch.tensor(1.0, dtype=torch.float64)))
    ae, se = (float(v) for v in SCHED.alpha_sigma(torch.tensor(0.01, dtype=torch.float64)))
    q1 = (a1 * mu, a1 * a1 * logvar.exp() + s1 * s1)
    ce_1 = _gauss_ce(*q1, torch.tensor(a1 * m0), torch.tensor(a1 * a1 * s0 * s0 + s1 * s1))
    assert abs(_gauss_ce(*q1, torch.tensor(0.0), torch.tensor(1.0)) - float(terminal_cross_entropy(SCHED, mu, logvar))) < 1e-9
    lhs = ce_1 + ce_constant(SCHED, mu[0].numel()) + dsm
    m, v = latent_gaussian(SCHED, mu, logvar)
    exact = _gauss_ce(m, v, torch.tensor(ae * m0), torch.tensor(ae * ae * s0 * s0 + se * se))
    assert abs(lhs - exact) < 1e-7 * abs(exact)


def _dsm_against_monte_carlo(mode):
    # the code's one-sample DSM estimate, averaged, against a Monte Carlo estimate of E_q[-log p_eps(z)] (and its
    # closed form); p the diffused N(m0, s0^2) with its exact eps; tolerance 4 standard errors of both estimates
    K, m0, s0 = 4000, 0.4, 0.7
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64).expand(K, -1, -1, -1)
    logvar = (-1 + 0.5 * torch.randn(1, 2, 4, 4, generator=g, dtype=torch.float64)).expand(K, -1, -1, -1)
    prior = _gaussian_prior(m0, s0)
    u0, n = torch.randn(mu.shape, generator=g, dtype=torch.float64), torch.randn(mu.shape, generator=g, dtype=torch.float64)
    est = dsm_cross_entropy(prior, mu, logvar, u0, n, torch.rand(K, generator=g, dtype=torch.float64), mode)
    a1, s1 = (float(v) for v in SCHED.alpha_sigma(torch.tensor(1.0, dtype=torch.float64)))
    ae, se = (float(v) for v in SCHED.alpha_sigma(torch.tensor(0.01, dtype=torch.float64)))
    m1, v1 = a1 * mu[:1], a1 * a1 * logvar[:1].exp() + s1 * s1  # the code's p_1 is N(0, I); this prior's is not
    correction = (_gauss_ce(m1, v1, torch.tensor(a1 * m0), torch.tensor(a1 * a1 * s0 * s0 + s1 * s1))
                  - _gauss_ce(m1, v1, torch.tensor(0.0), torch.tensor(1.0)))
    dsm_mean, dsm_se = float(est.mean()) + correction, float(est.std()) / math.sqrt(K)
    m, v = latent_gaussian(SCHED, mu, logvar)
    z = m + v.sqrt() * torch.randn(mu.shape, generator=g, dtype=torch.float64)
    vp = ae * ae * s0 * s0 + se * se
    mc = (0.5 * (math.log(2 * math.pi * vp) + (z - ae * m0) ** 2 / vp)).flatten(1).sum(1)
    mc_mean, mc_se = float(mc.mean()), float(mc.std()) / math.sqrt(K)
    exact = _gauss_ce(m[:1], v[:1], torch.tensor(ae * m0), torch.tensor(vp))
    assert abs(dsm_mean - mc_mean) < 4 * math.hypot(dsm_se, mc_se)
    assert abs(dsm_mean - exact) < 4 * dsm_se and abs(mc_mean - exact) < 4 * mc_se
    return dsm_se


def test_dsm_cross_entropy_matches_monte_carlo_on_a_gaussian_encoder():
    se = {mode: _dsm_against_monte_carlo(mode) for mode in ("ll_iw", "logsnr", "uniform")}
    assert se["ll_iw"] < 0.2 * se["uniform"] and se["ll_iw"] < 0.02 * 72  # importance sampling: a usable estimate


def test_bound_with_zero_residual_is_the_normal_prior_vae_negative_elbo():
    # mixing logit -inf: eps = sigma_t z_t exactly, the prior is N(0, I), and E[bound] = rec + KL(q(z_eps|x) || N(0, I))
    nets = _nets(mixing_logit=-math.inf)
    K = 1500
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(1, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1).expand(K, -1, -1, -1)
    shape = (K, *nets["decoder"].latent_shape)
    noise = {k: torch.randn(shape, generator=g, dtype=torch.float64) for k in ("u_rec", "u0", "n")}
    noise["t_u"] = torch.rand(K, generator=g, dtype=torch.float64)
    with torch.no_grad():
        out = lsgm_bound(nets["encoder"], nets["decoder"], nets["prior"], x, noise, "ll_iw")
        # q(z_eps | x) = N(alpha_eps mu, alpha_eps^2 e^logvar + sigma_eps^2), written out here
        a, s = (float(c) for c in SCHED.alpha_sigma(torch.tensor([SCHED.t_min], dtype=torch.float64)))
        m, v = a * out["mean"], a * a * out["logvar"].exp() + s * s
        mean = nets["decoder"](m + v.sqrt() * noise["u_rec"])
    # -log p(x | z): normal CDFs over each pixel's 8-bit bin [x - 1/255, x + 1/255], the edge bins open (Ho et al. 2020)
    scale = nets["decoder"].log_scale.detach().clamp(-7.0, 2.0).exp()[None, :, None, None]
    lo = torch.where(x < -1 + 1 / 255, -math.inf, (x - 1 / 255 - mean) / scale)
    hi = torch.where(x > 1 - 1 / 255, math.inf, (x + 1 / 255 - mean) / scale)
    rec = -torch.log(torch.special.ndtr(hi) - torch.special.ndtr(lo)).flatten(1).sum(1)
    kl = 0.5 * (m ** 2 + v - 1 - torch.log(v)).flatten(1).sum(1)  # closed form, per example
    assert float(((out["rec"] - rec) / rec).abs().max()) < 1e-6  # plain CDF differences lose digits in the tails
    assert torch.allclose(out["neg_entropy"], -0.5 * torch.log(2 * math.pi * math.e * v).flatten(1).sum(1), rtol=1e-12)
    prior_part = out["neg_entropy"] + out["ce"]
    se = float(prior_part.std()) / math.sqrt(K)
    assert abs(float(prior_part.mean()) - float(kl[0])) < 4 * se
    assert abs(float(out["nll"].mean()) - float((rec + kl).mean())) < 4 * se


def test_prior_starts_near_normal_and_the_ode_of_a_normal_prior_is_the_identity():
    nets = _nets(mixing_logit=-math.inf)
    z1 = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    (z, nfe), (z_fine, nfe_fine) = (sample_latent(nets["prior"], z1, "dopri5", rtol=tol, atol=tol) for tol in (1e-5, 1e-9))
    assert float((z - z1).abs().max()) < 1e-3 and float((z_fine - z1).abs().max()) < 1e-6 and 0 < nfe < nfe_fine  # N(0, I) under a VP SDE: the PF-ODE drift is 0
    for sampler, order in (("heun", 2), ("euler", 1)):  # fixed steps: the error falls as steps^-order
        (z20, nfe), (z80, _) = (sample_latent(nets["prior"], z1, sampler, steps=k) for k in (20, 80))
        e20, e80 = float((z20 - z1).abs().max()), float((z80 - z1).abs().max())
        assert nfe == (39 if sampler == "heun" else 20) and e80 < e20 * 4.0 ** -order * 1.5 and e80 < 0.1
    mix = _nets()["prior"].net.mixing()
    assert torch.allclose(mix, torch.full_like(mix, 1 / (1 + math.exp(5))))


def test_family_samples_decode_to_the_data_shape_deterministically(digits):
    cfg = LSGMConfig(network=TINY, steps=2, batch_size=16)
    fam = LSGMFamily(cfg, digits)
    a, nfe = fam.draw(fam.modules, cfg, 5, torch.Generator().manual_seed(0))
    b, _ = fam.draw(fam.modules, cfg, 5, torch.Generator().manual_seed(0))
    assert a.shape == (5, 1, 8, 8) and float(a.abs().max()) <= 1 and torch.equal(a, b) and nfe > 0
    assert LSGMFamily.nfe(LSGMConfig(sampler="heun", sample_steps=7)) == 13  # the registry's heun: Euler first step
    c, calls = fam.draw(fam.modules, LSGMConfig(network=TINY, sampler="dpmpp_2m", sample_steps=4), 3,
                        torch.Generator().manual_seed(0))  # a difflab sampler over the prior, to sigma = 0
    assert c.shape == (3, 1, 8, 8) and calls == 4
    assert [p.optimizer for p in fam.phases] == ["vae", "prior"] and fam.phases[1].minimize == "prior_loss"
    assert [p.optimizer for p in LSGMFamily(LSGMConfig(network=TINY, update="joint"), digits).phases] == ["model"]
    geo = LSGMConfig(network=TINY, steps=2, batch_size=16, sde="geometric_vp", sampler="heun", sample_steps=3)
    g_fam = LSGMFamily(geo, digits)
    d, _ = g_fam.draw(g_fam.modules, geo, 2, torch.Generator().manual_seed(0))  # the geometric VP's latent ODE
    assert d.shape == (2, 1, 8, 8) and bool(torch.isfinite(d).all())


def test_lsgm_needs_images():
    from difflab.data import load

    with pytest.raises(UserError, match="image data"):
        LSGMFamily(LSGMConfig(network=TINY), load("toy:moons"))


def test_lsgm_run_through_train_sample_evaluate_and_report(tmp_path):
    cfg = tmp_path / "lsgm.json"
    cfg.write_text(json.dumps({"network": TINY, "batch_size": 16, "sampler": "heun", "sample_steps": 3}))
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--family", "lsgm", "--steps", "3", "--config", str(cfg), "--out", str(run),
                 "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["family"] == "lsgm"
    assert main(["sample", "--run", str(run), "--num", "4", "--out", str(tmp_path / "g.png")]) == 0
    assert main(["sample", "--run", str(run), "--num", "4", "--sampler", "dopri5", "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (4, 8, 8, 1)
    assert main(["evaluate", "--run", str(run), "--num", "20", "--nll", "--nll-num", "8", "--json",
                 str(tmp_path / "e.json")]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["nll"]["unit"] == "bits/dim" and ev["nll"]["n"] == 8 and ev["nll"]["ci95"] > 0 and ev["nfe"] == 5
    assert set(ev["nll"]["terms"]) >= {"rec", "neg_entropy", "ce"}  # the bound's value: tested in closed form above
    assert main(["report", "--run", str(run), "--num", "20", "--out", str(tmp_path / "rep")]) == 0
    row = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"][0]
    assert row["family"] == "lsgm" and row["nfe"] == 5 and row["nll"] > 0 and row["params"] > 0
    assert main(["train", "--data", "digits", "--family", "lsgm", "--conditional", "--out", str(tmp_path / "c")]) == 2


def test_lsgm_nll_is_deterministic_and_the_ode_variant_runs(digits):
    nets = build_lsgm_nets(LSGMNetConfig(shape=(1, 8, 8), **TINY), SCHED)
    x = digits.x[:6]
    a = lsgm_nll(nets, LSGMConfig(), x, num_t=16, seed=5)
    assert a == lsgm_nll(nets, LSGMConfig(), x, num_t=16, seed=5) and a["method"] == "lsgm-dsm"
    o = lsgm_nll(nets, LSGMConfig(), x, method="ode", seed=5)
    assert o["method"] == "lsgm-ode" and math.isfinite(o["nll"]) and o["terms"]["neg_entropy"] == a["terms"]["neg_entropy"]
    # the DSM bound and the ODE density of the prior estimate the same -log p(x) here (the untrained prior is almost
    # N(0, I), where the SDE and ODE priors coincide): within 4 standard errors of the two estimates
    assert abs(o["nll"] - a["nll"]) < 4 * math.hypot(o["ci95"], a["ci95"]) / 1.96
