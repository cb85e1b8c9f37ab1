"""Per-step sampler callbacks: they cannot change a run, fire once per step at the grid's levels, and report
native-coordinate states together with the model's x0 estimate of exactly those states."""
import pytest
import torch

import difflab
from difflab.models.gaussian_mixture import GaussianMixture
from difflab.samplers import SAMPLERS, grids

GM = GaussianMixture(torch.tensor([0.4, 0.6]), torch.tensor([[-1.0, 0.5], [1.0, -0.5]]),
                     torch.stack([0.2 * torch.eye(2), torch.tensor([[0.3, 0.1], [0.1, 0.2]])]))
STEPS = 12
ALL = difflab.samplers.names()
GRID = [n for n in ALL if not SAMPLERS[n].adaptive]
SCHEDULES = {"ddpm": lambda: difflab.schedules.get("linear", T=1000), "vp": lambda: difflab.schedules.get("vp"),
             "ve": lambda: difflab.schedules.get("ve")}


class Recorder:
    """Keeps a copy of every callback dict, then overwrites the tensors it was given (a careless callback)."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, info: dict) -> None:
        self.calls.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in info.items()})
        info["x"].fill_(float("nan"))
        info["denoised"].zero_()


def x_T(sched) -> torch.Tensor:
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return z * float(sched.sigma(torch.tensor(sched.t_max))) if isinstance(sched, difflab.schedules.VE) else z


def run(name: str, sched, callback=None, **options):
    return difflab.sample(GM.denoiser(sched, "eps"), x_T(sched), name, steps=STEPS, callback=callback,
                          generator=torch.Generator().manual_seed(5), return_nfe=True, **options)


@pytest.mark.parametrize("name", ALL)
def test_callback_does_not_change_the_sample(name):
    sched = SCHEDULES["ddpm"]()
    plain, nfe = run(name, sched)
    rec = Recorder()
    watched, nfe2 = run(name, sched, rec)
    assert torch.equal(plain, watched) and nfe == nfe2
    assert rec.calls


@pytest.mark.parametrize("sched_name", list(SCHEDULES))
@pytest.mark.parametrize("name", GRID)
def test_one_call_per_step_at_the_grid_levels(name, sched_name):
    sched = SCHEDULES[sched_name]()
    rec = Recorder()
    out, nfe = run(name, sched, rec)
    L = difflab.samplers.n_levels(name, STEPS)
    assert nfe == difflab.samplers.nfe(name, L)
    assert [c["i"] for c in rec.calls] == list(range(L))
    assert all(c["n"] == L for c in rec.calls)
    sigma = [c["sigma"] for c in rec.calls]
    assert sigma == grids.get(SAMPLERS[name].grid, sched, L)[:-1].tolist()
    assert all(a > b for a, b in zip(sigma, sigma[1:]))
    t = torch.tensor([c["t"] for c in rec.calls], dtype=torch.float64)
    assert torch.allclose(t, sched.t_from_sigma_ve(torch.tensor(sigma, dtype=torch.float64)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_corrector", [0, 2])
def test_pc_counts_levels_not_corrector_calls(n_corrector):
    rec = Recorder()
    run("pc", SCHEDULES["vp"](), rec, n_corrector=n_corrector)
    assert len(rec.calls) == difflab.samplers.n_levels("pc", STEPS, n_corrector=n_corrector)


@pytest.mark.parametrize("sched_name", ["ddpm", "vp"])
@pytest.mark.parametrize("name", ALL)
def test_state_is_native_and_denoised_is_the_model_at_it(name, sched_name):
    """D(x, t) of the reported x and t reproduces the reported x0 estimate (UniPC: at its first and last steps,
    elsewhere it reuses D of the predictor's value); the first state is x_T itself (pc: after the corrector)."""
    sched = SCHEDULES[sched_name]()
    model = GM.denoiser(sched, "eps")
    rec = Recorder()
    run(name, sched, rec)
    check = rec.calls if name != "unipc" else [rec.calls[0], rec.calls[-1]]
    for c in check:
        d = model(c["x"], torch.full((4,), c["t"], dtype=torch.float64))
        assert torch.allclose(d, c["denoised"], rtol=0, atol=1e-12), (c["i"], (d - c["denoised"]).abs().max())
    if name != "pc":
        assert torch.allclose(rec.calls[0]["x"], x_T(sched), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_last_denoised_is_the_returned_sample(name):
    """Every sampler but iPNDM ends with a denoise at its last level and returns it; iPNDM's last step is an
    Adams-Bashforth step to sigma = 0 from that level."""
    rec = Recorder()
    out, _ = run(name, SCHEDULES["ddpm"](), rec)
    if name == "ipndm":
        assert not torch.equal(rec.calls[-1]["denoised"], out)
    else:
        assert torch.equal(rec.calls[-1]["denoised"], out)


def test_dopri5_reports_every_model_call_with_a_monotone_counter():
    sched = SCHEDULES["ddpm"]()
    rec = Recorder()
    out, nfe = run("dopri5", sched, rec, rtol=1e-6, atol=1e-6)
    assert [c["i"] for c in rec.calls] == list(range(nfe)) and nfe > 10
    assert all(c["n"] is None for c in rec.calls[:-1]) and rec.calls[-1]["n"] == nfe
    smin, smax = grids.log_snr(sched, 2)[:2].tolist()[::-1]
    assert rec.calls[0]["sigma"] == smax and rec.calls[-1]["sigma"] == smin
    assert all(0 < c["sigma"] <= smax for c in rec.calls)  # trial steps may pass s_min (torchdiffeq interpolates)


def test_explicit_grid_levels_are_reported():
    sched = SCHEDULES["ddpm"]()
    sig = grids.timesteps(sched, range(999, -1, -111))
    rec = Recorder()
    difflab.sample(GM.denoiser(sched, "eps"), x_T(sched), "ddim", grid=sig, callback=rec)
    assert [c["sigma"] for c in rec.calls] == sig[:-1].tolist()
    assert [round(c["t"]) for c in rec.calls] == list(range(999, -1, -111))
