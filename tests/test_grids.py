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
    if n > 1 and grid not in ("few_step", "consistency"):  # these spend no call at s_min
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
