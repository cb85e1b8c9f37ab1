"""Likelihoods and bounds: closed forms, the exact Gaussian case, and the bound-below-likelihood ordering."""
import math

import pytest
import torch
from scipy import integrate, stats

from difflab import schedules
from difflab.likelihood import (LearnedVarianceDenoiser, analytic_dpm_gamma, analytic_variances, bits_per_dim,
                                ddpm_bound, ddpm_prior, ddpm_step_terms, discretized_gaussian_log_likelihood,
                                evaluate_nll, learned_log_variance, log_likelihood, normal_kl,
                                ode_log_likelihood, reverse_log_variance, vdm_bound)
from difflab.models.denoiser import Denoiser
from difflab.models.gaussian_mixture import GaussianMixture

G = torch.Generator


def gauss(d=2, scale=0.5):
    mu = torch.linspace(-0.3, 0.4, d, dtype=torch.float64)
    return GaussianMixture(torch.ones(1), mu[None], (scale**2 * torch.eye(d, dtype=torch.float64))[None])


def mixture():
    covs = torch.stack([0.25 * torch.eye(2), torch.tensor([[0.3, 0.1], [0.1, 0.2]])]).double()
    return GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[0.3, -0.2], [-1.0, 0.5]]), covs)


# ---- closed forms -------------------------------------------------------------------------------------
def test_normal_kl_matches_torch_distributions():
    g = G().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, (0.5 * lv1).exp()),
                                            torch.distributions.Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref)


@pytest.mark.parametrize("mean,scale", [(0.1, 0.3), (0.93, 0.004), (-0.999, 0.02), (0.5, 1e-4), (3.0, 0.5)])
def test_discretized_gaussian_matches_integration_and_normalises(mean, scale):
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)
    lp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), torch.full_like(x, math.log(scale)))
    assert abs(float(lp.exp().sum()) - 1.0) < 1e-9
    h = 1 / 255
    for i in (0, 17, 128, 200, 255):
        lo = -math.inf if i == 0 else float(x[i]) - h
        hi = math.inf if i == 255 else float(x[i]) + h
        p = stats.norm.cdf(hi, mean, scale) - stats.norm.cdf(lo, mean, scale)
        if p > 1e-300:
            assert float(lp[i]) == pytest.approx(math.log(p), rel=1e-6, abs=1e-9)
    # numerical integration of the density over one interior bin
    i = int(torch.argmin((x - mean).abs()))
    if 0 < i < 255 and scale > 1e-3:
        p, _ = integrate.quad(lambda u: stats.norm.pdf(u, mean, scale), float(x[i]) - h, float(x[i]) + h)
        assert float(lp[i].exp()) == pytest.approx(p, rel=1e-6)


def test_ddpm_prior_and_step_kl_match_formulas():
    sched = schedules.get("linear", T=50)
    g = G().manual_seed(1)
    x0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    abar = float(sched.alphas_cumprod[-1])
    ref = 0.5 * (abar * (x0**2).sum(1) + 3 * (1 - abar) - 3 - 3 * math.log(1 - abar))
    torch.testing.assert_close(ddpm_prior(sched, x0), ref)
    # a step KL against q(x_{t-1}|x_t,x_0) built from Ho et al. eq. 7 by hand, with a known x0-predictor
    t, eps = 20, torch.randn(4, 3, generator=g, dtype=torch.float64)
    model = Denoiser(lambda x, tt: 0.5 * x, sched, "x0")
    got = ddpm_step_terms(model, x0, torch.full((4,), t), eps, variance="beta")
    ab, abp, b = sched.alphas_cumprod[t], sched.alphas_cumprod[t - 1], sched.betas[t]
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    mq = (abp.sqrt() * b * x0 + (1 - b).sqrt() * (1 - abp) * xt) / (1 - ab)
    mp = (abp.sqrt() * b * 0.5 * xt + (1 - b).sqrt() * (1 - abp) * xt) / (1 - ab)
    q = torch.distributions.Normal(mq, ((1 - abp) / (1 - ab) * b).sqrt())
    p = torch.distributions.Normal(mp, b.sqrt())
    torch.testing.assert_close(got, torch.distributions.kl_divergence(q, p).sum(1))


def test_learned_variance_interpolation_endpoints():
    lb, lbt = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -9.0])
    torch.testing.assert_close(learned_log_variance(torch.ones(2), lb, lbt), lb)
    torch.testing.assert_close(learned_log_variance(-torch.ones(2), lb, lbt), lbt)
    sched = schedules.get("cosine", T=20)
    x = torch.zeros(3, 2)
    t = torch.tensor([0, 5, 19])
    bt = sched.posterior_variance.clone()
    bt[0] = bt[1]
    torch.testing.assert_close(reverse_log_variance(sched, "learned", t, x, torch.ones(3, 2)),
                               reverse_log_variance(sched, "beta", t, x).expand(3, 2))
    torch.testing.assert_close(reverse_log_variance(sched, "learned", t, x, -torch.ones(3, 2))[:, 0],
                               torch.log(bt[t]).float())
    # a 2C-channel network through LearnedVarianceDenoiser: raw() is the prediction, log_variance() the interpolation
    net = lambda x, tt: torch.cat([0.1 * x, torch.ones_like(x)], 1)  # noqa: E731
    m = LearnedVarianceDenoiser(net, sched)
    torch.testing.assert_close(m.raw(x + 1, t.float()), 0.1 * (x + 1))
    torch.testing.assert_close(m.log_variance(x, t), reverse_log_variance(sched, "beta", t, x).expand(3, 2))


# ---- the exact Gaussian case --------------------------------------------------------------------------
@pytest.mark.parametrize("sched", [schedules.get("linear", T=1000), schedules.get("vp"), schedules.get("ve")],
                         ids=["ddpm-linear", "vp", "ve"])
def test_ode_likelihood_exact_trace_equals_analytic_density(sched):
    gm = mixture()
    x = gm.sample(64, G().manual_seed(0))
    r = ode_log_likelihood(gm.denoiser(sched), x, trace="exact", rtol=1e-7, atol=1e-7, return_details=True)
    # the ODE carries p_{t_min} exactly onto p_{t_max}; only the prior at t_max differs, and that we can compute
    p_hi = gm.marginal(sched, sched.t_max).log_prob(r["x_T"])
    torch.testing.assert_close(r["delta"] + p_hi, gm.marginal(sched, sched.t_min).log_prob(x), atol=2e-5, rtol=0)
    mismatch = r["log_prior"] - p_hi  # log N(x_T; 0, I) - log p_{t_max}(x_T): small, as the schedule ends near N(0, I)
    assert float(mismatch.abs().max()) < 0.05
    torch.testing.assert_close(r["log_likelihood"] - mismatch, gm.marginal(sched, sched.t_min).log_prob(x),
                               atol=2e-5, rtol=0)


@pytest.mark.parametrize("probes", ["rademacher", "gaussian"])
def test_ode_likelihood_hutchinson_within_standard_error(probes):
    gm, sched = mixture(), schedules.get("vp")
    x = gm.sample(200, G().manual_seed(1))
    ll = log_likelihood(gm.denoiser(sched), x, method="ode", probes=probes, rtol=1e-6, atol=1e-6,
                        generator=G().manual_seed(2))
    err = ll - gm.marginal(sched, sched.t_min).log_prob(x)
    assert abs(float(err.mean())) < 4 * float(err.std()) / math.sqrt(len(err)) + 1e-3
    assert float(err.std()) > 0  # a real stochastic estimate


def test_ddpm_bound_full_sum_is_above_entropy_and_tight_with_beta():
    gm, sched = gauss(), schedules.get("linear", T=100)
    x = gm.sample(1000, G().manual_seed(3))
    entropy = float(-gm.log_prob(x).mean())
    model = gm.denoiser(sched, "eps")
    nll_beta = ddpm_bound(model, x, variance="beta", generator=G().manual_seed(0)).nll
    nll_tilde = ddpm_bound(model, x, variance="beta_tilde", generator=G().manual_seed(0)).nll
    se = float(nll_beta.std()) / math.sqrt(len(x))
    assert float(nll_beta.mean()) > entropy - 3 * se
    assert float(nll_beta.mean()) < entropy + 0.3  # T = 100 steps: prior 0.2 nats
    assert float(nll_tilde.mean()) > float(nll_beta.mean())  # beta-tilde is the worse choice at T = 100


def test_ddpm_bound_stratified_estimate_is_unbiased():
    gm, sched = gauss(), schedules.get("linear", T=100)
    x = gm.sample(2000, G().manual_seed(4))
    model = gm.denoiser(sched, "eps")
    full = ddpm_bound(model, x, variance="beta", generator=G().manual_seed(0)).diffusion
    est = ddpm_bound(model, x, variance="beta", num_t=20, generator=G().manual_seed(1)).diffusion
    se = float((est - full).std()) / math.sqrt(len(x))
    assert abs(float(est.mean() - full.mean())) < 4 * se


def test_elbo_not_above_ode_likelihood():
    gm = mixture()
    x = gm.sample(400, G().manual_seed(5))
    for sched, kw in ((schedules.get("linear", T=200), {"variance": "beta"}), (schedules.get("vp"), {"num_t": 4})):
        model = gm.denoiser(sched, "eps")
        elbo = log_likelihood(model, x, method="elbo", generator=G().manual_seed(0), **kw)
        ode = log_likelihood(model, x, method="ode", trace="exact", rtol=1e-6, atol=1e-6)
        diff = elbo - ode
        assert float(diff.mean()) < 3 * float(diff.std()) / math.sqrt(len(x))


def test_vdm_bound_matches_closed_form_for_gaussian_data():
    """For N(mu, s^2 I) data and the exact denoiser, E[L_inf] = d/2 log((1/s^2 + SNR_max)/(1/s^2 + SNR_min))."""
    d, s = 2, 0.5
    gm, sched = gauss(d, s), schedules.get("cosine", log_snr_min=-10.0, log_snr_max=8.0)
    x = gm.sample(20000, G().manual_seed(6))
    ref = d / 2 * math.log((1 / s**2 + math.exp(8.0)) / (1 / s**2 + math.exp(-10.0)))
    for sampling in ("t", "log_snr"):
        b = vdm_bound(gm.denoiser(sched, "eps"), x, generator=G().manual_seed(7), sampling=sampling)
        se = float(b.diffusion.std()) / math.sqrt(len(x))
        assert abs(float(b.diffusion.mean()) - ref) < 4 * se


def test_bits_per_dim_and_evaluate_nll_on_images():
    """8-bit data under the exact Gaussian model: the ODE NLL with uniform dequantisation has a closed form,
    E_u[-log N(x + u; mu, s^2 I)] - d log h (bin width h = 2/255), and the two bounds lie above -log P(bin)."""
    d, s = 4, 0.4
    gm, sched = gauss(d, s), schedules.get("vp")
    x = gm.sample(64, G().manual_seed(8)).clamp(-1, 1)
    x = torch.round((x + 1) * 127.5) / 127.5 - 1  # 8-bit values
    images = x.view(64, 1, 2, 2)
    net = lambda z, t: gm.denoiser(sched, "eps").raw(z.flatten(1), t).view_as(z)  # noqa: E731
    model = Denoiser(net, sched, "eps")
    h, bpd = 2 / 255, 1 / (d * math.log(2))
    r2 = (x - gm.means[0]) ** 2
    exact = float(((0.5 * math.log(2 * math.pi * s**2) + (r2 + h**2 / 12) / (2 * s**2)).sum(1) - d * math.log(h)).mean()) * bpd
    # tolerance: 4 standard errors of the one dequantisation draw per example, plus the prior's mismatch at t = 1
    # (x_1 ~ N(alpha_1 mu, ~1), not N(0, 1): |log-density change| <= alpha_1 |mu| |x_1| per example, |x_1| < 4)
    se_u = float((r2 * h**2 / 12 / s**4).sum().sqrt()) / len(x) * bpd
    alpha_1 = float(sched.alpha_sigma(torch.ones(1, dtype=torch.float64))[0])
    tol = 4 * se_u + alpha_1 * float(gm.means[0].norm()) * 4 * bpd
    assert tol < 0.01
    ode = evaluate_nll(model, images, "ode", batch_size=32, rtol=1e-5, atol=1e-5)
    assert ode["unit"] == "bits/dim" and ode["n"] == 64 and ode["dims"] == d and ode["terms"] == {}
    assert abs(ode["nll"] - exact) < tol
    # -log P(bin) of the model's discretised density (edge bins open to +-inf): what both bounds lie above
    lo = torch.where(x <= -1, -math.inf, x - h / 2)
    hi = torch.where(x >= 1, math.inf, x + h / 2)
    normal = torch.distributions.Normal(gm.means[0], s)
    discrete = -torch.log(normal.cdf(hi) - normal.cdf(lo)).sum(1) * bpd
    per = -log_likelihood(model, images, method="ode", bins=256, rtol=1e-5, atol=1e-5, dequantization="gaussian",
                          generator=G().manual_seed(0)) * bpd
    assert float((per - discrete).mean()) > -3 * float((per - discrete).std()) / math.sqrt(len(x))
    elbo = evaluate_nll(model, images, "elbo", batch_size=32, num_t=2)
    assert set(elbo["terms"]) == {"prior", "diffusion", "reconstruction"} and elbo["ci95"] > 0
    assert sum(elbo["terms"].values()) == pytest.approx(elbo["nll"], rel=1e-12)
    assert elbo["nll"] > float(discrete.mean()) - 4 * elbo["std"] / math.sqrt(elbo["n"])
    assert bits_per_dim(4 * math.log(2), 4) == pytest.approx(1.0)


# ---- Analytic-DPM -------------------------------------------------------------------------------------
def test_analytic_dpm_variance_is_the_optimum_for_gaussian_data_and_within_bounds():
    d, s = 3, 0.4
    gm, sched = gauss(d, s), schedules.get("linear", T=50)
    data = gm.sample(4000, G().manual_seed(9))
    gamma = analytic_dpm_gamma(gm.denoiser(sched, "eps"), data, num_samples=4000, batch_size=20000,
                               generator=G().manual_seed(10))
    var = analytic_variances(sched, gamma, data_range=None)
    abar, bt = sched.alphas_cumprod, sched.posterior_variance
    c0, _ = sched.posterior_mean_coefs
    post = 1.0 / (1.0 / s**2 + abar / (1 - abar))  # Var[x_0 | x_t] per dimension
    torch.testing.assert_close(var, bt + c0**2 * post, rtol=0.03, atol=1e-6)
    assert bool((var >= bt - 1e-15).all()) and bool((var <= bt + c0**2 * (1 - abar) / abar + 1e-15).all())
    clipped = analytic_variances(sched, torch.zeros_like(gamma), data_range=(-1.0, 1.0))
    assert bool((clipped <= bt + c0**2 + 1e-12).all())


# ---- learned variances: the hybrid objective and importance sampling ------------------------------------
class _TwoHead(torch.nn.Module):
    """prediction a * x (the mean's parameter) and v = tanh(b) (the variance's parameter)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3))
        self.b = torch.nn.Parameter(torch.tensor(0.2))

    def forward(self, x, t):
        return torch.cat([self.a * x, torch.tanh(self.b).expand_as(x)], 1)


def test_hybrid_loss_stops_the_mean_gradient_of_the_vlb_term():
    from difflab.likelihood.objectives import hybrid_loss

    sched = schedules.get("linear", T=100)
    x = torch.randn(32, 2, generator=G().manual_seed(0))
    grads = {}
    for lam in (0.0, 10.0):
        net = _TwoHead()
        m = Denoiser(net, sched, "eps")
        hybrid_loss(m, x, generator=G().manual_seed(1), lam=lam).mean().backward()
        grads[lam] = (net.a.grad.clone(), net.b.grad.clone())
    torch.testing.assert_close(grads[0.0][0], grads[10.0][0])  # the mean sees L_simple only
    assert float(grads[0.0][1]) == 0.0 and float(grads[10.0][1]) != 0.0  # the variance sees L_vlb only
    net = _TwoHead()
    hybrid_loss(Denoiser(net, sched, "eps"), x, generator=G().manual_seed(1), simple=False).mean().backward()
    assert float(net.a.grad) != 0.0  # L_vlb alone trains the mean too


def test_importance_sampling_is_unbiased_and_follows_the_loss_history():
    from difflab.likelihood.objectives import importance_t, record_losses

    sched = schedules.get("linear", T=20, beta_start=1e-4, beta_end=0.02)  # explicit betas: any T
    m = LearnedVarianceDenoiser(_TwoHead(), sched, history=4)
    t, w = importance_t(m, 8, G().manual_seed(0))
    assert bool((w == 1).all())  # uniform until the history is full
    levels = torch.linspace(0.1, 3.0, 20, dtype=torch.float64)
    for _ in range(4):
        record_losses(m, torch.arange(20), levels)
    t, w = importance_t(m, 200000, G().manual_seed(1))
    f = levels**2  # any function of t
    assert float((w * f[t]).mean()) == pytest.approx(float(f.mean()), rel=0.01)
    freq = torch.bincount(t, minlength=20).double() / len(t)
    torch.testing.assert_close(freq, levels / levels.sum(), atol=0.01, rtol=0.05)


def test_hybrid_objective_trains_a_learned_variance_denoiser():
    from difflab.training.objectives import OBJECTIVES
    from difflab.models.mlp import MLP, MLPConfig

    torch.manual_seed(0)
    sched = schedules.get("linear", T=50)
    net = MLP(MLPConfig(dim=2, hidden=32, depth=2, time_scale=20.0))
    m = LearnedVarianceDenoiser(_Widen(net), sched, history=2)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x = torch.randn(256, 2) * 0.3
    vals = []
    for step in range(40):
        loss = OBJECTIVES["hybrid"](m, x, None, G().manual_seed(step), None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        vals.append(loss.item())
    assert int(m.loss_count.sum()) == 40 * 256
    assert {"hybrid", "hybrid_is", "vlb"} <= set(OBJECTIVES)
    assert sum(vals[-5:]) < sum(vals[:5])
    bound = ddpm_bound(m, x[:64], variance="learned", num_t=5, generator=G().manual_seed(0))
    assert bool(torch.isfinite(bound.nll).all())


class _Widen(torch.nn.Module):
    """A 2-output network plus a learned per-step v head: [B, 2] -> [B, 4]."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.v = torch.nn.Linear(1, 2)

    def forward(self, x, t):
        return torch.cat([self.net(x, t), torch.tanh(self.v(t.float()[:, None] / 50.0))], 1)


def test_sampler_variance_callables_match_the_step_tables():
    from difflab.likelihood import analytic_sampler_variance, learned_sampler_variance

    sched = schedules.get("linear", T=50)
    gamma = torch.linspace(0.99, 0.2, 50, dtype=torch.float64)
    table = analytic_variances(sched, gamma)
    f = analytic_sampler_variance(sched, gamma)
    x = torch.zeros(2, 3)
    for t in (1, 10, 49):
        args = (x, torch.full((2,), float(t)), torch.full((2,), float(t - 1)), float(sched.betas[t]),
                float(sched.posterior_variance[t]))
        assert f(*args) == pytest.approx(float(table[t]), rel=1e-6)
    m = LearnedVarianceDenoiser(lambda z, tt: torch.cat([z, torch.full_like(z, 0.5)], 1), sched)
    got = learned_sampler_variance(m)(*args)
    torch.testing.assert_close(torch.log(got), m.log_variance(x, torch.full((2,), 49)))


def test_ddpm_sampler_with_analytic_variance_reproduces_the_data_variance_in_few_steps():
    import difflab
    from difflab.likelihood import analytic_sampler_variance

    gm = GaussianMixture(torch.ones(1), torch.tensor([[0.3, -0.2]]), (0.09 * torch.eye(2))[None])
    sched = schedules.get("linear", T=1000)
    m = gm.denoiser(sched, "eps")
    gamma = analytic_dpm_gamma(m, gm.sample(200, G().manual_seed(0)), num_samples=200, batch_size=20000,
                               generator=G().manual_seed(1))
    xT = torch.randn(4000, 2, generator=G().manual_seed(2), dtype=torch.float64)
    out = {}
    for name, var in (("beta_tilde", "beta_tilde"), ("analytic", analytic_sampler_variance(sched, gamma, None))):
        x = difflab.sample(m, xT, sampler="ddpm", steps=20, variance=var, generator=G().manual_seed(3))
        out[name] = float(x.var(0).mean())
    assert abs(out["analytic"] - 0.09) < 0.01  # the optimal variance is right even with 20 of 1000 steps
    assert out["beta_tilde"] < 0.07  # beta-tilde is far too small on so coarse a sub-sequence
