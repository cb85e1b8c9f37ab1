"""The schedule's prior at t_max: prior_std, sample_prior, and every place that draws x_T for sampling."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from difflab import schedules
from difflab.evaluation.report import draw
from difflab.models.gaussian_mixture import GaussianMixture
from difflab.samplers import sample

VP_TYPE = {"linear-T1000": lambda: schedules.get("linear", T=1000), "cosine-T50": lambda: schedules.get("cosine", T=50),
           "vp": lambda: schedules.get("vp"), "cosine": lambda: schedules.get("cosine"),
           "learned": lambda: schedules.get("learned", hidden=8), "ve-T100": lambda: schedules.get("ve", T=100)}
ALL = {**VP_TYPE, "ve": lambda: schedules.get("ve"), "ve-small": lambda: schedules.get("ve", sigma_max=2.0),
       "subvp": lambda: schedules.get("subvp")}
DATA_VAR = torch.tensor([4.0, 0.25], dtype=torch.float64)


def G(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian() -> GaussianMixture:
    """N([0.5, -1], diag(4, 0.25)): an exact denoiser under any schedule."""
    return GaussianMixture(torch.ones(1), torch.tensor([[0.5, -1.0]]), torch.diag(DATA_VAR))


@pytest.mark.parametrize("name", list(ALL))
def test_prior_std_is_the_marginal_std_of_unit_variance_data(name):
    sched = ALL[name]()
    unit = GaussianMixture(torch.ones(1), torch.zeros(1, 3), torch.eye(3, dtype=torch.float64))
    cov = unit.marginal(sched, sched.t_max).cov
    torch.testing.assert_close(cov, sched.prior_std**2 * torch.eye(3, dtype=torch.float64), rtol=1e-12, atol=0)


def test_prior_std_closed_forms():
    for name in VP_TYPE:  # alpha^2 + sigma^2 = 1 identically: exactly 1, not 1 up to rounding
        assert VP_TYPE[name]().prior_std == 1.0, name
    for smax in (2.0, 50.0, 378.0):
        assert schedules.get("ve", sigma_max=smax).prior_std == pytest.approx(math.sqrt(1 + smax**2), rel=1e-14)
    sub = schedules.get("subvp", beta_min=0.1, beta_max=20.0)
    abar = math.exp(-(0.1 + 0.5 * (20.0 - 0.1)))  # alpha^2 = abar, sigma = 1 - abar (Song et al. 2021, eq. 29)
    assert sub.prior_std == pytest.approx(math.sqrt(abar + (1 - abar) ** 2), rel=1e-14)


@pytest.mark.parametrize("name", list(VP_TYPE))
def test_vp_prior_is_plain_standard_normal_noise(name):
    """Same seed, same x_T as torch.randn: VP results drawn before sample_prior existed are unchanged."""
    x = VP_TYPE[name]().sample_prior((7, 3), generator=G(0))
    assert x.dtype == torch.float32 and torch.equal(x, torch.randn((7, 3), generator=G(0)))


def test_ve_sample_prior_has_std_sigma_max():
    sched = schedules.get("ve", sigma_min=0.01, sigma_max=50.0)
    n = 200_000
    x = sched.sample_prior((n // 4, 2, 2), generator=G(1), dtype=torch.float64).flatten()
    assert x.dtype == torch.float64 and x.numel() == n
    std = sched.prior_std  # sqrt(1 + 50^2) = 50.01: within 0.02 % of sigma_max, far below the test's resolution
    assert abs(float(x.mean())) < 6 * std / math.sqrt(n)
    # the sample variance of n normals has relative standard error sqrt(2 / (n - 1))
    assert abs(float(x.var()) / std**2 - 1) < 6 * math.sqrt(2 / (n - 1))
    assert abs(float(x.var()) / 50.0**2 - 1) < 6 * math.sqrt(2 / (n - 1))


def _variance_tolerance(n: int) -> float:
    """6 standard errors of a sample variance, plus the 40-step dpmpp_2m discretisation error (measured <= 1.5 %)."""
    return 6 * math.sqrt(2 / (n - 1)) + 0.02


def test_sampling_a_ve_model_from_its_prior_recovers_the_data_variance():
    sched, n = schedules.get("ve"), 2000
    model = gaussian().denoiser(sched)
    x = sample(model, sched.sample_prior((n, 2), generator=G(0), dtype=torch.float64), sampler="dpmpp_2m", steps=40)
    ratio = x.var(0) / DATA_VAR
    assert float((ratio - 1).abs().max()) < _variance_tolerance(n), ratio
    # N(0, I) at sigma_max = 50 is a point mass at the data scale: the ODE maps it to ~1/2500 of the variance
    wrong = sample(model, torch.randn((n, 2), generator=G(0), dtype=torch.float64), sampler="dpmpp_2m", steps=40)
    assert float((wrong.var(0) / DATA_VAR).max()) < 0.01


def test_report_draw_starts_from_the_schedule_prior():
    sched, n = schedules.get("ve"), 2000
    x, nfe, _ = draw(gaussian().denoiser(sched), (2,), n, "dpmpp_2m", 40, seed=3, batch_size=1000)
    assert x.shape == (n, 2) and nfe == 40
    ratio = x.double().var(0) / DATA_VAR
    assert float((ratio - 1).abs().max()) < _variance_tolerance(n), ratio


def test_cli_sample_on_a_ve_run_starts_from_the_schedule_prior(tmp_path, monkeypatch):
    """`difflab sample` on a VE run (here the exact denoiser of Gaussian data in place of a trained network)."""
    from difflab.cli import sample as cli_sample
    from difflab.cli.main import main

    model = gaussian().denoiser(schedules.get("ve"))
    model.register_parameter("anchor", torch.nn.Parameter(torch.zeros(())))  # the CLI reads the device off a parameter
    from difflab.training.conditioning import Conditioning

    loaded = SimpleNamespace(model=model, config={"shape": [2], "train": {}}, shape=(2,), step=0,
                             conditioning=Conditioning(), latent=False, to_data=lambda x: x)
    from difflab.runs import DiffusionRun

    monkeypatch.setattr(cli_sample, "load", lambda *a, **k: DiffusionRun(tmp_path, loaded))
    n = 2000
    out = tmp_path / "s.npz"
    assert main(["sample", "--run", str(tmp_path), "--num", str(n), "--batch-size", "1000", "--sampler", "dpmpp_2m",
                 "--steps", "40", "--device", "cpu", "--out", str(out)]) == 0
    with np.load(out) as f:
        x = torch.from_numpy(f["samples"]).double()
    ratio = x.var(0) / DATA_VAR
    assert float((ratio - 1).abs().max()) < _variance_tolerance(n), ratio


def test_cli_sample_draws_x_T_of_a_trained_ve_run_from_its_prior(tmp_path, monkeypatch):
    """A VE run made by `difflab train`: `difflab sample` hands the sampler sample_prior's x_T (std ~ 50, not 1)."""
    import json

    import difflab.samplers
    from difflab.cli.main import main
    from difflab.training import load_run

    cfg = tmp_path / "ve.json"
    cfg.write_text(json.dumps({"network": {"hidden": 16, "depth": 1}, "batch_size": 16, "sample_steps": 2,
                               "schedule": {"kind": "ve", "sigma_max": 50.0}}))
    run = tmp_path / "run"
    assert main(["train", "--data", "toy:moons", "--out", str(run), "--steps", "2", "--config", str(cfg), "--quiet"]) == 0
    seen = []
    def fake(model, x_T, **kw):
        seen.append(x_T)
        return (torch.zeros_like(x_T), 0) if kw.get("return_nfe") else torch.zeros_like(x_T)

    monkeypatch.setattr(difflab.samplers, "sample", fake)
    assert main(["sample", "--run", str(run), "--num", "300", "--seed", "5", "--device", "cpu",
                 "--out", str(tmp_path / "s.npz")]) == 0
    sched = load_run(run, device="cpu").model.schedule
    assert sched.config()["kind"] == "ve" and len(seen) == 1
    from difflab.evaluation.generate import PerSample

    assert torch.equal(seen[0], PerSample(5, range(300)).prior(sched, (2,)))  # sample i's x_T from its own generator
    assert 40 < float(seen[0].std()) < 60  # 600 draws of std 50.01: the standard error of the std is 1.4
