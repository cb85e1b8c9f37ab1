"""Step grids: decreasing, end in 0, start at the schedule's t_max."""
import math
import pytest
import torch

import difflab
from difflab.samplers import grids

SCHEDULES = {
    "ddpm": lambda: difflab.schedules.get("linear", T=1000),
    "ddpm-cosine": lambda: difflab.schedules.get("cosine", T=1000),
    "vp": lambda: difflab.schedules.get("vp"),
    "subvp": lambda: difflab.schedules.get("subvp"),
    "ve": lambda: difflab.schedules.get("ve"),
    "cosine": lambda: difflab.schedules.get("cosine"),
}


@pytest.mark.parametrize("sched_name", list(SCHEDULES))
@pytest.mark.parametrize("grid", list(grids.GRIDS))
@pytest.mark.parametrize("n", [1, 2, 5, 10, 37])
def test_grid_shape_and_order(sched_name, grid, n):
    sched = SCHEDULES[sched_name]()
    s = grids.get(grid, sched, n)
    assert s.dtype == torch.float64 and s.ndim == 1 and len(s) == n + 1
    assert float(s[-1]) == 0.0
    assert bool((s[1:] < s[:-1]).all())
    assert torch.isclose(s[0], sched.sigma_ve(torch.tensor(sched.t_max, dtype=torch.float64)), rtol=1e-9)
    if n > 1 and grid not in ("few_step", "consistency", "trailing"):  # these spend no call at s_min
        assert torch.isclose(s[-2], sched.sigma_ve(torch.tensor(sched.t_min, dtype=torch.float64)), rtol=1e-6)


def test_uniform_t_on_ddpm_table_gives_integer_timesteps():
    sched = difflab.schedules.get("linear", T=1000)
    s = grids.uniform_t(sched, 1000)
    t = sched.t_from_sigma_ve(s[:-1])
    assert torch.allclose(t, torch.arange(999, -1, -1, dtype=torch.float64), atol=1e-6)
    t50 = sched.t_from_sigma_ve(grids.uniform_t(sched, 50)[:-1])
    assert torch.allclose(t50, t50.round(), atol=1e-6)


def test_explicit_timesteps_round_trip():
    sched = difflab.schedules.get("linear", T=1000)
    ts = list(range(999, -1, -20))
    s = grids.timesteps(sched, ts[::-1])  # any order in, noisiest first out
    assert torch.allclose(sched.t_from_sigma_ve(s[:-1]), torch.tensor(ts, dtype=torch.float64), atol=1e-6)
    with pytest.raises(ValueError):
        grids.timesteps(sched, [1000.5])


def test_log_snr_is_uniform_in_log_sigma_and_karras_matches_eq5():
    sched = difflab.schedules.get("vp")
    ls = torch.log(grids.log_snr(sched, 9, sigma_top=math.inf)[:-1])
    assert torch.allclose(ls[1:] - ls[:-1], (ls[1] - ls[0]).expand(8), atol=1e-12)
    k = grids.karras(sched, 9, rho=7.0, sigma_top=math.inf)[:-1]
    r = k ** (1 / 7)
    assert torch.allclose(r[1:] - r[:-1], (r[1] - r[0]).expand(8), atol=1e-12)


def test_few_step_tends_to_karras():
    sched = difflab.schedules.get("linear", T=1000)
    big = grids.few_step(sched, 400)
    assert torch.allclose(big[:-1], grids.karras(sched, 401, rho=5.0, sigma_top=math.inf)[:-2], rtol=1e-9)


@pytest.mark.parametrize("name", ["karras", "log_snr"])
def test_levels_above_sigma_top_are_one_jump(name):
    """Under the cosine table (sigma_max ~ 2e4) the first level stays at sigma_max and the rest is the grid from 80."""
    sched = difflab.schedules.get("cosine", T=1000)
    smax = float(sched.sigma_ve(torch.tensor(999.0, dtype=torch.float64)))
    g = grids.get(name, sched, 10)
    assert len(g) == 11 and g[0] == smax and math.isclose(g[1], 80.0, rel_tol=1e-12) and g[-1] == 0 and bool((g[1:] < g[:-1]).all())
    unbounded = grids.get(name, sched, 9, sigma_top=math.inf)
    assert unbounded[1] > 1000  # eq. 5 from sigma_max would spend most levels above 80
    low = difflab.schedules.get("ve")  # sigma_max <= 80: the plain grid
    assert torch.equal(grids.get(name, low, 7), grids.get(name, low, 7, sigma_top=math.inf))
    assert torch.allclose(grids.get(name, sched, 2), torch.tensor([smax, g[-2], 0.0], dtype=torch.float64), rtol=1e-12)


def test_bad_arguments():
    sched = difflab.schedules.get("vp")
    with pytest.raises(ValueError):
        grids.karras(sched, 0)
    with pytest.raises(ValueError):
        grids.get("nope", sched, 5)


def test_trailing_is_uniform_in_the_noise_fraction_and_needs_no_sigma_top():
    """u = s / (1 + s) falls in equal steps from u(s_max) to u(s_max) / n, then 0; on the flow path u is the time t."""
    flow = difflab.schedules.get("flow")
    g = grids.trailing(flow, 8, sigma_top=math.inf)
    t = g[:-1] / (1 + g[:-1])
    assert torch.allclose(t, 0.999 * torch.arange(8, 0, -1, dtype=torch.float64) / 8, rtol=1e-12)
    cosine = difflab.schedules.get("cosine", T=1000)  # s_max ~ 2e4: the second level is ~ n - 1 by itself
    g = grids.trailing(cosine, 10, sigma_top=math.inf)
    assert g[0] > 1e4 and 8.5 < float(g[1]) < 9.5 and float(g[-2]) < 0.12
    top = grids.trailing(cosine, 10)  # the default keeps one jump from s_max to 80, then 9 levels uniform in u
    assert top[0] == g[0] and float(top[1]) == 80.0 and torch.allclose(top[1:], grids.trailing(
        difflab.schedules.VE(0.002, 80.0), 9), rtol=1e-12)


def _old_default(name, sched, n):
    """The default grids before the trailing rule: karras (euler, dpmpp_2m), log_snr (dpmpp_3m, unipc), few_step (ipndm)."""
    old = {"euler": "karras", "dpmpp_2m": "karras", "dpmpp_3m": "log_snr", "unipc": "log_snr", "ipndm": "few_step"}[name]
    return grids.get(old, sched, n)


@pytest.mark.parametrize("kind", ["flow", "vp"])
@pytest.mark.parametrize("name", ["dpmpp_2m", "unipc", "ipndm"])
def test_default_grid_beats_the_old_rule_at_20_calls(kind, name):
    """On a fixed 4-D, 8-component mixture with thin components (eigenvalues down to 0.005) the default (trailing)
    grid's endpoint error against the exact ODE at 20 calls is below 0.8x that of the old default grid."""
    from difflab.models.gaussian_mixture import GaussianMixture

    g = torch.Generator().manual_seed(2024)
    d, k = 4, 8
    means = 1.5 * torch.randn(k, d, generator=g, dtype=torch.float64)
    covs = []
    for _ in range(k):
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        lam = torch.exp(math.log(0.005) + (math.log(0.5) - math.log(0.005)) * torch.rand(d, generator=g, dtype=torch.float64))
        covs.append(q @ torch.diag(lam) @ q.T)
    gm = GaussianMixture(0.2 + torch.rand(k, generator=g, dtype=torch.float64), means, torch.stack(covs))
    sched = difflab.schedules.get("flow") if kind == "flow" else difflab.schedules.get("linear", T=1000)
    model = gm.denoiser(sched, "eps")
    x_T = sched.sample_prior((300, d), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = difflab.sample(model, x_T, "dopri5", grid=grids.log_snr(sched, 2), rtol=1e-9, atol=1e-9)
    n = difflab.samplers.n_levels(name, 20)
    new = difflab.sample(model, x_T, name, steps=20)
    old = difflab.sample(model, x_T, name, grid=_old_default(name, sched, n))
    e_new, e_old = float((new - ref).pow(2).mean().sqrt()), float((old - ref).pow(2).mean().sqrt())
    assert e_new < 0.8 * e_old, (e_new, e_old)
