"""One sampler contract: any decreasing grid (a grid stopping above 0 returns the state there), the NFE each sampler
declares for a grid, and the registry per forward process (CLD's samplers under the common names)."""
import pytest
import torch

import difflab
from difflab.errors import UserError
from difflab.models.gaussian_mixture import GaussianMixture
from difflab.samplers import SAMPLERS, canonical, grid_nfe, grids, names, process_name, sample
from difflab.samplers.cld import sample_cld
from difflab.training.cld import CLDConfig, build_score

MIX = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[1.0, 0.0], [-1.0, 0.5]]),
                      torch.stack([0.2 * torch.eye(2), 0.1 * torch.eye(2)]))
FIXED = [n for n, s in SAMPLERS.items() if not s.adaptive and n != "consistency"]


def _run(model, x, name, sigmas, seed=3, **kw):
    g = torch.Generator().manual_seed(seed)
    return sample(model, x.clone(), name, grid=sigmas, generator=g, return_nfe=True, **kw)


@pytest.mark.parametrize("name", [n for n in FIXED if n != "pc"] + ["consistency"])
@pytest.mark.parametrize("stop", [1, 3])
def test_a_grid_stopping_above_zero_gives_the_first_part_of_the_full_run(name, stop):
    sched = difflab.schedules.get("vp")
    model = MIX.denoiser(sched)
    full = grids.karras(sched, 6) if name != "consistency" else grids.consistency(sched, 6)
    x = sched.sample_prior((5, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = {}
    _run(model, x, name, full, callback=lambda d: seen.setdefault(d["i"], d["x"]))
    part, calls = _run(model, x, name, full[: stop + 1])
    assert part.shape == x.shape and calls == grid_nfe(name, full[: stop + 1])
    assert torch.allclose(part, seen[stop], rtol=1e-9, atol=1e-9), float((part - seen[stop]).abs().max())
    x0, calls0 = _run(model, x, name, full)
    assert calls0 == grid_nfe(name, full) and not torch.allclose(x0, part)


@pytest.mark.parametrize("name", ["pc", "ddpm", "euler_maruyama", "euler", "ddim"])
def test_two_segments_of_a_one_step_sampler_make_the_full_run(name):
    """Stopping at level k and restarting there from the returned state (same generator) reproduces the whole run."""
    sched = difflab.schedules.get("vp")
    model = MIX.denoiser(sched)
    full = grids.karras(sched, 6)
    x = sched.sample_prior((5, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    whole, _ = _run(model, x, name, full)
    g = torch.Generator().manual_seed(3)
    mid = sample(model, x.clone(), name, grid=full[:4], generator=g)
    both = sample(model, mid, name, grid=full[3:], generator=g)
    assert torch.allclose(both, whole, rtol=1e-9, atol=1e-9)


def test_grid_nfe_of_a_grid_ending_in_zero_is_the_budget_formula():
    sched = difflab.schedules.get("vp")
    for name in FIXED:
        g = grids.karras(sched, 5)
        assert grid_nfe(name, g) == difflab.samplers.nfe(name, 5)
    assert grid_nfe("heun", g[:4]) == 2 * 3 - 1 and grid_nfe("unipc", g[:4]) == 4 and grid_nfe("pc", g[:4]) == 6


def test_dopri5_stops_at_the_grids_last_level_on_the_exact_gaussian_flow():
    """On Gaussian data the PF-ODE is linear: y(s) = mu + sqrt((v + s^2) / (v + s0^2)) (y0 - mu) per axis."""
    sched = difflab.schedules.get("ve")
    mu, var = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.3, 0.6], dtype=torch.float64)
    gauss = GaussianMixture(torch.ones(1), mu[None], torch.diag(var)[None])
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 20.0
    s0, s1 = 20.0, 0.7
    out = sample(gauss.denoiser(sched), x, "dopri5", grid=torch.tensor([s0, s1], dtype=torch.float64), rtol=1e-8,
                 atol=1e-8)
    want = mu + torch.sqrt((var + s1**2) / (var + s0**2)) * (x - mu)
    assert torch.allclose(out, want, atol=1e-5)


def test_cld_samplers_answer_to_the_common_names():
    model = build_score(CLDConfig(network={"hidden": 16, "depth": 1}), (2,)).eval()
    assert process_name(model) == "cld" and process_name(MIX.denoiser(difflab.schedules.get("vp"))) == "scalar"
    assert names(process="cld") == ["euler_maruyama", "sscs", "dopri5"]
    assert canonical("em", "cld") == "euler_maruyama" and canonical("ode", "cld") == "dopri5"
    u = model.process.sample_prior((6, 2), generator=torch.Generator().manual_seed(0))
    for common, old in (("euler_maruyama", "em"), ("sscs", "sscs")):
        a, calls = sample(model, u, common, steps=5, generator=torch.Generator().manual_seed(4), return_nfe=True)
        b = sample_cld(model, model.process, u, old, 5, generator=torch.Generator().manual_seed(4))
        assert torch.equal(a, b) and calls == 5
    with pytest.raises(UserError, match="sampler 'dpmpp_2m' is for scalar"):
        sample(model, u, "dpmpp_2m", steps=5)
    with pytest.raises(ValueError, match="own time grid"):
        sample(model, u, "sscs", grid=torch.tensor([1.0, 0.0]))
