"""Samplers against closed forms: PF-ODE convergence orders, exact moments, determinism, dtypes, threads."""
import math
import threading

import numpy as np
import pytest
import torch

import difflab
from difflab.models.gaussian_mixture import GaussianMixture
from difflab.samplers import SAMPLERS, grids
from difflab.samplers.sde import langevin_alpha

MU = torch.tensor([1.0, -0.5], dtype=torch.float64)
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
GAUSS = GaussianMixture(torch.ones(1), MU[None], COV[None])

SCHEDULES = {
    "ddpm": lambda: difflab.schedules.get("linear", T=1000),
    "vp": lambda: difflab.schedules.get("vp"),
    "subvp": lambda: difflab.schedules.get("subvp"),
    "ve": lambda: difflab.schedules.get("ve"),
    "cosine": lambda: difflab.schedules.get("cosine"),
}


def x_T(sched, n: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """N(0, I) at t_max in native coordinates (times sigma_max for VE, whose alpha is 1)."""
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return z * float(sched.sigma(torch.tensor(sched.t_max, dtype=torch.float64))) if isinstance(sched, difflab.schedules.VE) else z


def exact_flow(sched, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Closed-form PF-ODE map of Gaussian data from sigmas[0] to sigmas[-2], then E[x_0 | x]: in y = x / alpha,
    y(s) = mu + (Sigma + s^2)^{1/2} (Sigma + s0^2)^{-1/2} (y0 - mu) (eigenbasis), D(y) = mu + Sigma (Sigma + s^2)^{-1} (y - mu)."""
    s0, s1 = float(sigmas[0]), float(sigmas[-2])
    a0 = float(sched.alpha(sched.t_from_sigma_ve(torch.tensor(s0, dtype=torch.float64))))
    lam, U = torch.linalg.eigh(COV)
    z = (x.double() / a0 - MU) @ U
    z = z * torch.sqrt((lam + s1**2) / (lam + s0**2)) * lam / (lam + s1**2)
    return MU + z @ U.T


ORDERS = {"euler": (0.85, 1.2), "ddim": (0.85, 1.2), "heun": (1.8, 2.6), "dpm_solver_2": (1.8, 2.6),
          "dpm_solver_3": (2.7, 4.5), "dpmpp_2m": (1.8, 2.6), "dpmpp_3m": (2.7, 4.6), "unipc": (2.7, 4.6),
          "ipndm": (1.6, 2.6)}


@pytest.mark.parametrize("name", list(ORDERS))
def test_ode_convergence_order_to_closed_form(name):
    sched = difflab.schedules.get("vp")
    model = GAUSS.denoiser(sched)
    x = x_T(sched, 16)
    ns = [16, 32, 64, 128]
    errs = []
    for n in ns:
        sig = grids.log_snr(sched, n)
        errs.append(float((SAMPLERS[name].fn(model, x, sig) - exact_flow(sched, x, sig)).abs().max()))
    slope = -np.polyfit(np.log(ns), np.log(errs), 1)[0]
    lo, hi = ORDERS[name]
    assert lo < slope < hi, (errs, slope)
    assert errs[-1] < 0.05


@pytest.mark.parametrize("sched_name", list(SCHEDULES))
@pytest.mark.parametrize("name,atol", [("heun", 2e-2), ("dpmpp_2m", 1e-2), ("unipc", 2e-4)])
def test_ode_samplers_converge_on_every_schedule(sched_name, name, atol):
    sched = SCHEDULES[sched_name]()
    x = x_T(sched, 8)
    sig = grids.log_snr(sched, 100)
    out = SAMPLERS[name].fn(GAUSS.denoiser(sched), x, sig)
    assert torch.allclose(out, exact_flow(sched, x, sig), atol=atol)


def test_dopri5_matches_closed_form_and_reports_nfe():
    sched = difflab.schedules.get("linear", T=1000)
    x = x_T(sched, 8)
    out, nfe = difflab.sample(GAUSS.denoiser(sched, "eps"), x, "dopri5", rtol=1e-9, atol=1e-9, return_nfe=True)
    assert torch.allclose(out, exact_flow(sched, x, grids.log_snr(sched, 2)), atol=1e-6)
    assert nfe > 20


def test_parametrisations_give_the_same_samples():
    sched = difflab.schedules.get("linear", T=1000)
    x = x_T(sched, 8)
    a = difflab.sample(GAUSS.denoiser(sched, "eps"), x, "dpmpp_3m", steps=15)
    b = difflab.sample(GAUSS.denoiser(sched, "x0"), x, "dpmpp_3m", steps=15)
    assert torch.allclose(a, b, atol=1e-9)


def _moments_ok(x: torch.Tensor, atol_mean: float = 0.04, atol_cov: float = 0.05) -> None:
    assert torch.allclose(x.mean(0), MU, atol=atol_mean), x.mean(0)
    assert torch.allclose(torch.cov(x.T), COV, atol=atol_cov), torch.cov(x.T)


@pytest.mark.parametrize("sampler,options", [("ddpm", {}), ("ddpm", {"variance": "beta"}), ("ddim", {"eta": 1.0}),
                                             ("euler_maruyama", {})])
def test_stochastic_samplers_reproduce_data_moments(sampler, options):
    sched = difflab.schedules.get("linear", T=1000)
    out = difflab.sample(GAUSS.denoiser(sched, "eps"), x_T(sched, 20_000), sampler, steps=200,
                         generator=torch.Generator().manual_seed(1), **options)
    _moments_ok(out)


@pytest.mark.parametrize("sched_name", ["vp", "subvp", "ve"])
def test_predictor_corrector_reproduces_data_moments(sched_name):
    sched = SCHEDULES[sched_name]()
    out = difflab.sample(GAUSS.denoiser(sched), x_T(sched, 20_000), "pc", steps=400, snr=0.16,
                         generator=torch.Generator().manual_seed(2))
    _moments_ok(out)


def test_ddim_eta1_is_ddpm_pathwise_and_in_distribution():
    sched = difflab.schedules.get("linear", T=1000)
    gm = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-2.0, 0.0], [1.5, 1.0]]),
                         torch.stack([0.1 * torch.eye(2), torch.tensor([[0.2, 0.1], [0.1, 0.3]])]))
    model = gm.denoiser(sched, "eps")
    x = x_T(sched, 20_000)
    a = difflab.sample(model, x, "ddim", steps=50, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = difflab.sample(model, x, "ddpm", steps=50, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, b, atol=1e-8)
    c = difflab.sample(model, x, "ddpm", steps=50, generator=torch.Generator().manual_seed(4))
    left = lambda v: float((v[:, 0] < 0).float().mean())
    assert abs(left(a) - 0.3) < 0.02 and abs(left(c) - 0.3) < 0.02
    assert torch.allclose(a.mean(0), c.mean(0), atol=0.05)
    assert torch.allclose(torch.cov(a.T), torch.cov(c.T), atol=0.1)


@pytest.mark.parametrize("name", [n for n in difflab.samplers.names() if n != "dopri5"])
def test_deterministic_with_generator_and_nfe_within_budget(name):
    sched = difflab.schedules.get("linear", T=1000)
    model = GAUSS.denoiser(sched, "eps")
    x = x_T(sched, 4)
    a, nfe = difflab.sample(model, x, name, steps=12, generator=torch.Generator().manual_seed(5), return_nfe=True)
    b = difflab.sample(model, x, name, steps=12, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert nfe <= 12 and nfe == difflab.samplers.nfe(name, difflab.samplers.n_levels(name, 12))
    if SAMPLERS[name].kind == "sde":
        c = difflab.sample(model, x, name, steps=12, generator=torch.Generator().manual_seed(6))
        assert not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", difflab.samplers.names())
def test_dtype_and_device_preserved(name, dtype):
    sched = difflab.schedules.get("linear", T=1000)
    x = x_T(sched, 3, dtype=dtype)
    out = difflab.sample(GAUSS.denoiser(sched, "eps"), x, name, steps=6, generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype and out.device == x.device and out.shape == x.shape
    assert torch.isfinite(out).all()


def test_threads_match_sequential():
    sched = difflab.schedules.get("linear", T=1000)
    model = GAUSS.denoiser(sched, "eps")
    jobs = [("dpmpp_2m", 0), ("ddpm", 1), ("unipc", 2), ("pc", 3)]

    def run(name: str, seed: int) -> torch.Tensor:
        return difflab.sample(model, x_T(sched, 64, seed), name, steps=30, generator=torch.Generator().manual_seed(seed))

    seq = [run(*j) for j in jobs]
    par: dict[int, torch.Tensor] = {}
    threads = [threading.Thread(target=lambda i=i, j=j: par.__setitem__(i, run(*j))) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, s in enumerate(seq):
        assert torch.equal(par[i], s)


class CondCheck:
    """A wrapper denoiser that insists on receiving its condition (as guidance wrappers will)."""

    def __init__(self, inner):
        self.inner, self.schedule, self.seen = inner, inner.schedule, 0

    def __call__(self, x, t, cond=None):
        assert cond == "label-7"
        self.seen += 1
        return self.inner(x, t)


@pytest.mark.parametrize("name", difflab.samplers.names())
def test_condition_reaches_the_denoiser(name):
    sched = difflab.schedules.get("vp")
    wrapped = CondCheck(GAUSS.denoiser(sched))
    difflab.sample(wrapped, x_T(sched, 2), name, steps=6, cond="label-7", generator=torch.Generator().manual_seed(0))
    assert wrapped.seen > 0


def test_names_registry_and_errors():
    ode, sde = difflab.samplers.names(kind="ode"), difflab.samplers.names(kind="sde")
    assert {"ddim", "euler", "heun", "dopri5", "dpm_solver_2", "dpm_solver_3", "dpmpp_2m", "dpmpp_3m", "unipc",
            "ipndm"} <= set(ode)
    assert {"ddpm", "euler_maruyama", "pc"} <= set(sde)
    assert sorted(ode + sde) == sorted(difflab.samplers.names())
    sched = difflab.schedules.get("vp")
    with pytest.raises(ValueError):
        difflab.sample(GAUSS.denoiser(sched), x_T(sched, 2), "nope")
    for bad in ([1.0, 3.0, 0.0], [3.0], [3.0, 0.0, 0.0], [3.0, -1.0]):  # a grid ending above 0 is fine
        with pytest.raises(ValueError, match="strictly decreasing"):
            difflab.sample(GAUSS.denoiser(sched), x_T(sched, 2), "euler", grid=torch.tensor(bad))


def test_explicit_grid_and_progress_bar(capsys):
    sched = difflab.schedules.get("linear", T=1000)
    sig = grids.timesteps(sched, range(999, -1, -111))
    out, nfe = difflab.sample(GAUSS.denoiser(sched, "eps"), x_T(sched, 2), "ddim", grid=sig, progress=True,
                              return_nfe=True)
    assert nfe == len(sig) - 1 and torch.isfinite(out).all()
    assert "sampling" in capsys.readouterr().err


def _levels(sched, sigmas):
    return difflab.samplers._common.levels(GAUSS.denoiser(sched), torch.zeros(1, 2, dtype=torch.float64), sigmas)


def test_langevin_alpha_is_one_minus_beta_on_a_ddpm_table():
    """Song et al. 2021b, Alg. 5: alpha_i = 1 - beta_i at the corrector's level i (every step of the table)."""
    sched = difflab.schedules.get("linear", T=1000)
    lv = _levels(sched, grids.uniform_t(sched, 1000))
    steps = [round(t) for t in lv.tf]
    assert steps == list(range(999, -1, -1))
    a = torch.tensor([langevin_alpha(lv, i) for i in range(len(steps))], dtype=torch.float64)
    assert torch.allclose(a, 1 - sched.betas[steps], rtol=0, atol=1e-12)
    assert bool((a < 1).all())


def test_langevin_alpha_on_a_sub_sequence_is_the_respaced_one_minus_beta():
    """On DDIM-style sub-sequences t > s: alpha-bar_t / alpha-bar_s = prod_{s < k <= t} (1 - beta_k)."""
    sched = difflab.schedules.get("linear", T=1000)
    ts = list(range(999, -1, -37))
    lv = _levels(sched, grids.timesteps(sched, ts))
    for i, (t, s) in enumerate(zip(ts, ts[1:] + [-1])):
        assert math.isclose(langevin_alpha(lv, i), float(torch.prod(1 - sched.betas[s + 1 : t + 1])), rel_tol=1e-11)


@pytest.mark.parametrize("sched_name", ["vp", "subvp"])
def test_langevin_alpha_on_vp_and_subvp_sdes_is_exp_minus_integral_of_beta(sched_name):
    """Both share f = -beta/2, so alpha_i = alpha(t_i)^2 / alpha(t_{i+1})^2 = exp(-int beta dt) = 1 - beta(t_i) dt + O(dt^2)."""
    sched = SCHEDULES[sched_name]()
    lv = _levels(sched, grids.uniform_t(sched, 200))
    t = lv.tf + [0.0]
    B = lambda u: sched.beta_min * u + 0.5 * (sched.beta_max - sched.beta_min) * u**2  # int_0^u beta
    for i in range(len(lv.tf)):
        a = langevin_alpha(lv, i)
        assert 0 < a < 1 and math.isclose(a, math.exp(-(B(t[i]) - B(t[i + 1]))), rel_tol=1e-9)
        dt = t[i] - t[i + 1]
        beta_dt = (sched.beta_min + t[i] * (sched.beta_max - sched.beta_min)) * dt
        # |e^{-I} - (1 - I)| <= I^2 / 2 with I = beta(t_i) dt - beta' dt^2 / 2 (beta linear in t)
        assert abs(a - (1 - beta_dt)) <= 0.5 * beta_dt**2 + 0.5 * (sched.beta_max - sched.beta_min) * dt**2


def test_langevin_alpha_is_one_for_ve():
    sched = SCHEDULES["ve"]()
    lv = _levels(sched, grids.uniform_t(sched, 50))
    assert [langevin_alpha(lv, i) for i in range(50)] == [1.0] * 50


def test_pc_corrector_no_longer_inflates_steps_on_coarse_grids(monkeypatch):
    """On 5 levels the inverted factor alpha-bar_{i-1} / alpha-bar_i (up to 8 at the noisiest level) inflates the
    Langevin steps and the covariance explodes (trace ~33, data 0.8); with 1 - beta_i it stays near the ~4 that
    the coarse predictor leaves.  Margin: 5 standard errors of each trace, sqrt(2 tr(C^2) / N) for Gaussian samples."""
    sched = difflab.schedules.get("linear", T=1000)
    model, x = GAUSS.denoiser(sched), x_T(sched, 4000)

    def trace_and_se():
        out = difflab.sample(model, x, "pc", steps=10, snr=0.3, generator=torch.Generator().manual_seed(7))
        c = torch.cov(out.T)
        return float(torch.trace(c)), math.sqrt(2 * float(torch.trace(c @ c)) / len(out))

    fixed, se_fixed = trace_and_se()
    inverse = lambda lv, i: (lv.alpha[i + 1] / lv.alpha[i]) ** 2 if i + 1 < len(lv.alpha) else 1.0
    monkeypatch.setattr(difflab.samplers.sde, "langevin_alpha", inverse)
    before, se_before = trace_and_se()
    v = float(torch.trace(COV))
    assert abs(fixed - v) + 5 * (se_fixed + se_before) < abs(before - v), (fixed, before, v)
