"""EDM preconditioning, the flow-matching path, training-noise distributions and weightings, post-hoc EMA."""
import math

import pytest
import torch
from torch import nn

import difflab
from difflab import schedules
from difflab.cli.main import main
from difflab.data import load
from difflab.likelihood.ode import ode_log_likelihood
from difflab.losses import loss_weight, sample_t, x0_weight
from difflab.models.denoiser import PREDICTIONS, Denoiser, edm_scalings, target_for, x0_from
from difflab.models.gaussian_mixture import GaussianMixture
from difflab.samplers import SAMPLERS, grids, sample
from difflab.training import TrainConfig, train
from difflab.training.ema import (PostHocEMA, PowerEMA, gamma_from_sigma_rel, list_snapshots, power_profile,
                                  reconstruct, sigma_rel_from_gamma, fit_posthoc)
from difflab.training.run import load_run
from difflab.utils.config import ConfigError

D64 = torch.float64
MU = torch.tensor([1.0, -0.5], dtype=D64)
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=D64)
GAUSS = GaussianMixture(torch.ones(1), MU[None], COV[None])
FLOW = schedules.get("flow")


def G(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- the flow path as a schedule ---------------------------------------------------------------------
def test_flow_schedule_is_the_linear_path_with_inverses():
    t = torch.linspace(0.01, 0.99, 50, dtype=D64)
    torch.testing.assert_close(FLOW.alpha(t), 1 - t)
    torch.testing.assert_close(FLOW.sigma(t), t)
    torch.testing.assert_close(FLOW.log_snr(t), torch.log((1 - t) ** 2 / t**2))
    torch.testing.assert_close(FLOW.t_from_log_snr(FLOW.log_snr(t)), t)
    torch.testing.assert_close(FLOW.t_from_sigma_ve(FLOW.sigma_ve(t)), t)
    torch.testing.assert_close(FLOW.sigma_ve(t), torch.exp(-0.5 * FLOW.log_snr(t)))
    f, g2 = FLOW.sde(t)  # the generic autograd SDE of the base class gives the same coefficients
    f_ref, g2_ref = schedules.Schedule.sde(FLOW, t)
    torch.testing.assert_close(f, f_ref)
    torch.testing.assert_close(g2, g2_ref)
    assert schedules.from_config(FLOW.config()).config() == FLOW.config()
    with pytest.raises(ValueError, match="0 < t_min < t_max < 1"):
        schedules.get("flow", t_max=1.0)


def _flow_denoiser(sched) -> Denoiser:
    """The exact denoiser of GAUSS as a velocity network u = eps - x0 = (x - (alpha + sigma) x0) / sigma."""
    def net(x, t):
        a, s = sched.alpha_sigma(t.to(D64))
        a, s = a[:, None], s[:, None]
        return (x - (a + s) * GAUSS.posterior_mean(x, a, s)) / s

    return Denoiser(net, sched, "flow")


def _exact_map(sched, x, sigmas):
    """Closed-form PF-ODE of Gaussian data from sigmas[0] to sigmas[-2], then E[x_0 | x] (as tests/test_samplers.py)."""
    s0, s1 = float(sigmas[0]), float(sigmas[-2])
    a0 = float(sched.alpha(sched.t_from_sigma_ve(torch.tensor(s0, dtype=D64))))
    lam, U = torch.linalg.eigh(COV)
    z = (x.double() / a0 - MU) @ U
    z = z * torch.sqrt((lam + s1**2) / (lam + s0**2)) * lam / (lam + s1**2)
    return MU + z @ U.T


@pytest.mark.parametrize("name,atol", [("euler", 0.1), ("heun", 2e-2), ("ddim", 0.1), ("dpmpp_2m", 1e-2), ("unipc", 1e-3)])
def test_flow_exact_velocity_denoiser_follows_the_closed_form_ode(name, atol):
    x = FLOW.sample_prior((64, 2), generator=G(0), dtype=D64)
    sig = grids.log_snr(FLOW, 100)
    out = SAMPLERS[name].fn(_flow_denoiser(FLOW), x, sig)
    assert float((out - _exact_map(FLOW, x, sig)).abs().max()) < atol


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m", "euler_maruyama"])
def test_flow_samplers_give_the_analytic_marginal(sampler):
    x = FLOW.sample_prior((4000, 2), generator=G(1), dtype=D64)
    out = sample(_flow_denoiser(FLOW), x, sampler=sampler, steps=60, generator=G(2))
    se = (COV.diagonal() / 4000).sqrt()
    assert bool(((out.mean(0) - MU).abs() < 4 * se + 0.02).all()), out.mean(0)
    torch.testing.assert_close(torch.cov(out.T), COV, atol=0.04, rtol=0)


def test_flow_ode_likelihood_is_the_closed_form():
    x = GAUSS.sample(64, G(3))
    r = ode_log_likelihood(_flow_denoiser(FLOW), x, trace="exact", rtol=1e-7, atol=1e-7, return_details=True)
    p_hi = GAUSS.marginal(FLOW, FLOW.t_max).log_prob(r["x_T"])
    torch.testing.assert_close(r["delta"] + p_hi, GAUSS.marginal(FLOW, FLOW.t_min).log_prob(x), atol=2e-5, rtol=0)
    mismatch = r["log_prior"] - p_hi  # the prior N(0, prior_std^2) against the marginal at t_max, alpha = 1e-3
    assert float(mismatch.abs().max()) < 0.05
    torch.testing.assert_close(r["log_likelihood"] - mismatch, GAUSS.marginal(FLOW, FLOW.t_min).log_prob(x),
                               atol=2e-5, rtol=0)


def test_guidance_and_inpainting_run_on_the_flow_path():
    from difflab.guidance import classifier_free
    from difflab.tasks import inpaint

    model = _flow_denoiser(FLOW)
    x = FLOW.sample_prior((32, 2), generator=G(4), dtype=D64)
    # CFG with identical branches is the model itself at any scale
    guided = classifier_free(Denoiser(lambda x, t, c=None: model.raw(x, t), FLOW, "flow"), 3.0)
    torch.testing.assert_close(sample(guided, x, sampler="heun", steps=20, cond={"labels": torch.zeros(32, dtype=torch.long)}),
                               sample(model, x, sampler="heun", steps=20))
    known = torch.tensor([[0.3, 0.0]], dtype=D64).expand(32, 2)
    mask = torch.tensor([[1.0, 0.0]], dtype=D64).expand(32, 2)
    out = inpaint(model, known, mask, sampler="heun", steps=20, generator=G(5))
    torch.testing.assert_close(out[:, 0], known[:, 0])


@pytest.mark.parametrize("sched", [schedules.get("cosine", T=1000), FLOW], ids=["cosine", "flow"])
def test_sigma_top_jump_helps_even_the_exact_denoiser(sched):
    """The karras grid's jump from sigma_max to 80 is not only a patch for an eps network's error: with the exact
    denoiser (no error) heun at 20 levels is closer to the exact PF-ODE map with it (docs/training.md)."""
    x = sched.sample_prior((256, 2), generator=G(0), dtype=D64)
    model = GAUSS.denoiser(sched)
    errs = []
    for top in (80.0, math.inf):
        sig = grids.karras(sched, 20, sigma_top=top)
        errs.append(float((SAMPLERS["heun"].fn(model, x, sig) - _exact_map(sched, x, sig)).abs().mean()))
    assert errs[0] < 0.6 * errs[1], errs


# ---- EDM preconditioning ----------------------------------------------------------------------------
PATHS = {"vp": schedules.get("vp"), "ve": schedules.get("ve"), "flow": FLOW, "ddpm": schedules.get("cosine", T=1000)}


@pytest.mark.parametrize("path", ["vp", "ve", "flow"])  # (a DDPM table's lowest level is fixed, ~1e-2)
def test_edm_denoiser_is_the_identity_as_sigma_goes_to_zero(path):
    sched = PATHS[path]
    net = nn.Linear(3, 3).double()
    model = Denoiser(lambda x, t: net(x), sched, "edm")
    x = torch.randn(8, 3, generator=G(0), dtype=D64)
    for s in (1e-4, 1e-6):
        t = sched.t_from_sigma_ve(torch.full((8,), s, dtype=D64))
        a = sched.alpha(t)[:, None]
        assert float((model(x, t).detach() - x / a).abs().max()) < 10 * s


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("sigma", [0.02, 0.5, 3.0, 40.0])
def test_edm_network_input_and_target_have_unit_variance(path, sigma):
    """On data of std sigma_data, c_in y and the F target (x_0 - c_skip y) / c_out are unit-variance at every level."""
    sched, sd, n = PATHS[path], 0.5, 200_000
    t = sched.t_from_sigma_ve(torch.full((n,), sigma, dtype=D64))
    if bool((t < sched.t_min).any() | (t > sched.t_max).any()):
        pytest.skip("level outside the schedule")
    a, s = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    x0, eps = sd * torch.randn(n, 1, generator=G(1), dtype=D64), torch.randn(n, 1, generator=G(2), dtype=D64)
    xt = a * x0 + s * eps
    seen = Denoiser(lambda x, tt: x, sched, "edm", sd).raw(xt, t)
    assert abs(float(seen.var()) - 1) < 0.02
    target = target_for("edm", x0, eps, a, s, sd)
    assert abs(float(target.var()) - 1) < 0.02
    skip, out, _ = edm_scalings(a, s, sd)  # and the target is what makes D exact: c_skip y + c_out F = x_0
    torch.testing.assert_close(skip * xt / a + out * target, x0)


def test_edm_sigma_data_is_saved_with_the_weights():
    m = Denoiser(nn.Linear(2, 2), FLOW, "edm", sigma_data=0.7)
    m2 = Denoiser(nn.Linear(2, 2), FLOW, "edm")
    m2.load_state_dict(m.state_dict())
    assert float(m2.sigma_data) == pytest.approx(0.7)
    assert "sigma_data" not in Denoiser(nn.Linear(2, 2), FLOW, "eps").state_dict()
    with pytest.raises(ValueError, match="sigma_data must be > 0"):
        Denoiser(nn.Linear(2, 2), FLOW, "edm", sigma_data=0.0)


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("weighting", ["min_snr", "edm", "soft_min_snr"])
@pytest.mark.parametrize("path", ["vp", "ve", "flow"])
def test_weightings_are_x0_space_weights_in_every_parametrisation(prediction, weighting, path):
    """w * ||out - target||^2 = x0_weight * ||D - x_0||^2 for any network output, on VP, VE and the flow path."""
    sched = PATHS[path]
    t = sched.t_min + torch.rand(32, generator=G(0), dtype=D64) * (sched.t_max - sched.t_min) * 0.9
    a, sig = sched.alpha(t)[:, None], sched.sigma(t)[:, None]
    x0, eps, out = (torch.randn(32, 4, generator=G(i + 1), dtype=D64) for i in range(3))
    xt = a * x0 + sig * eps
    lam = sched.log_snr(t)
    w = loss_weight(prediction, weighting, lam, sig.flatten(), 5.0)
    lhs = w * ((out - target_for(prediction, x0, eps, a, sig)) ** 2).mean(1)
    rhs = x0_weight(weighting, lam, 0.5, 5.0) * ((x0_from(prediction, out, xt, a, sig) - x0) ** 2).mean(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-7, atol=0)


def test_edm_weighting_is_one_for_an_edm_network():
    lam = torch.linspace(-10, 10, 21, dtype=D64)
    sig = torch.sigmoid(-lam).sqrt()
    torch.testing.assert_close(loss_weight("edm", "edm", lam, sig), torch.ones_like(lam))
    s = torch.exp(-0.5 * lam)  # soft-min-SNR: 1/(s^2 + sd^2) -> 1/sd^2 at low noise, SNR at high noise
    torch.testing.assert_close(x0_weight("soft_min_snr", lam), 1 / (s**2 + 0.25))


@pytest.mark.parametrize("noise,sched,mean,std", [("lognormal", schedules.get("ve", sigma_min=1e-4, sigma_max=1e3), -1.2, 1.2),
                                                  ("logit_normal", FLOW, 0.0, 1.0),
                                                  ("lognormal", schedules.get("vp"), 0.5, 0.8)])
def test_noise_distributions_have_their_log_sigma_moments(noise, sched, mean, std):
    kw = {} if (mean, std) in ((-1.2, 1.2), (0.0, 1.0)) else {"mean": mean, "std": std}
    t = sample_t(sched, 50_000, G(0), noise=noise, **kw)
    assert bool(((t >= sched.t_min) & (t <= sched.t_max)).all())
    ls = torch.log(sched.sigma_ve(t.double()))
    assert abs(float(ls.mean()) - mean) < 0.03 and abs(float(ls.std()) - std) < 0.03
    if noise == "logit_normal":  # SD3: logit t ~ N(0, 1) on the flow path
        lt = torch.logit(t.double())
        assert abs(float(lt.mean())) < 0.03 and abs(float(lt.std()) - 1) < 0.03
    with pytest.raises(ValueError, match="unknown noise distribution"):
        sample_t(sched, 4, G(0), noise="gamma")


def test_train_config_edm_and_flow_fields_round_trip_and_validate():
    cfg = TrainConfig.from_dict({"schedule": {"kind": "flow"}, "prediction": "flow", "noise": "logit_normal",
                                 "weighting": "soft_min_snr", "sigma_data": 0.6, "posthoc_ema": [0.05, 0.1]})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg and cfg.posthoc_ema == (0.05, 0.1)
    for bad, msg in [({"noise": "lognormal", "objective": "vdm"}, "needs objective='simple'"),
                     ({"sigma_data": -1.0}, "sigma_data must be > 0"), ({"noise_std": 0.0}, "noise_std must be > 0"),
                     ({"posthoc_ema": [0.5]}, "posthoc_ema"), ({"prediction": "edm", "objective": "hybrid"}, "edm")]:
        with pytest.raises(ConfigError, match=msg):
            TrainConfig.from_dict(bad)


def test_ve_with_edm_preconditioning_keeps_the_data_spread_under_ode_samplers(tmp_path):
    """An eps network on VE multiplies its error by sigma_max = 50 in the first ODE step (outliers |x| ~ 80 on moons,
    docs/training.md); with EDM's preconditioning D = c_skip y + c_out F is bounded by c_out |F| ~ sigma_data |F|."""
    data = load("toy:moons")
    cfg = TrainConfig.from_dict({"schedule": {"kind": "ve"}, "prediction": "edm", "noise": "lognormal", "weighting": "edm",
                                 "steps": 150, "batch_size": 128, "log_every": 1000, "checkpoint_every": 1000,
                                 "sample_steps": 3, "network": {"hidden": 32, "depth": 2}})
    train(cfg, data, tmp_path / "run", progress=False)
    model = load_run(tmp_path / "run").model
    for sampler in ("euler", "heun", "dpmpp_2m"):
        x = model.schedule.sample_prior((2000, 2), generator=G(1))
        with torch.no_grad():
            out = sample(model, x, sampler=sampler, steps=20, generator=G(2))
        assert float(out.abs().max()) < 3.0, sampler  # the data lie in [-1.1, 1.1]


# ---- post-hoc EMA -----------------------------------------------------------------------------------
def test_power_ema_gamma_and_profile():
    assert gamma_from_sigma_rel(0.05) == pytest.approx(16.97, abs=0.01)  # Karras et al. 2024, sec. 3.1
    assert gamma_from_sigma_rel(0.10) == pytest.approx(6.94, abs=0.01)
    for r in (0.01, 0.05, 0.1, 0.2):
        assert sigma_rel_from_gamma(gamma_from_sigma_rel(r)) == pytest.approx(r, rel=1e-9)
    w = power_profile(gamma_from_sigma_rel(0.1), 300)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    # the recursive update equals the unrolled profile on any trajectory
    m = nn.Linear(1, 1, bias=False).double()
    e, thetas = PowerEMA(m, 0.1), []
    for t in range(1, 301):
        with torch.no_grad():
            m.weight.fill_(math.sin(t / 7.0) + 0.01 * t)
        thetas.append(float(m.weight.detach()))
        e.update(m, t)
    assert float(e.state["weight"]) == pytest.approx(float((torch.tensor(thetas, dtype=D64) * torch.tensor(w)).sum()), rel=1e-10)
    with pytest.raises(ValueError, match="EMA length"):
        gamma_from_sigma_rel(0.3)


def test_posthoc_ema_equals_the_ema_tracked_during_training(tmp_path):
    """Snapshots of sigma_rel 0.05 and 0.10 every 100 of 2000 steps reconstruct EMAs of other lengths (Karras et al. 2024)."""
    g = G(0)
    m = nn.Linear(8, 8)
    tracker = PostHocEMA({"model": m}, (0.05, 0.10), 100, tmp_path)
    truth = {r: PowerEMA(m, r) for r in (0.03, 0.07, 0.15)}
    for t in range(1, 2001):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g) + 0.002)  # a drifting random walk
        tracker.update(t)
        for e in truth.values():
            e.update(m, t)
        if t % 100 == 0:
            tracker.snapshot(t)
    assert sorted(list_snapshots(tmp_path)) == list(range(100, 2001, 100))
    for r, e in truth.items():
        rec, step, residual = reconstruct(tmp_path, r)
        assert step == 2000 and residual < 0.1
        spread = float((e.state["weight"] - m.weight.detach()).abs().max())  # how far the EMA is from the last iterate
        err = float((rec["model"]["weight"].float() - e.state["weight"]).abs().max())
        assert err < 0.02 * spread, (r, err, spread)
    # a tracked length at the last snapshot is reproduced exactly
    x, residual = fit_posthoc([(s, gamma_from_sigma_rel(r)) for s in (1000, 2000) for r in (0.05, 0.1)], 2000,
                              gamma_from_sigma_rel(0.1))
    assert x[3] == pytest.approx(1.0, abs=1e-6) and abs(x[:3]).max() < 1e-6 and residual < 1e-6
    # a length far below the tracked ones is fitted poorly, and the residual says so (difflab ema warns above 0.1)
    snaps = [(s, gamma_from_sigma_rel(r)) for s in range(100, 2001, 100) for r in (0.05, 0.1)]
    assert fit_posthoc(snaps, 2000, gamma_from_sigma_rel(0.01))[1] > 0.1


def _posthoc_cfg(steps: int) -> TrainConfig:
    return TrainConfig.from_dict({"schedule": {"kind": "flow"}, "prediction": "flow", "steps": steps, "batch_size": 32,
                                  "log_every": 5, "checkpoint_every": 10, "sample_steps": 2, "warmup_steps": 2,
                                  "network": {"hidden": 16, "depth": 2}, "posthoc_ema": [0.05, 0.1], "posthoc_every": 4})


def test_engine_snapshots_resume_exactly_and_difflab_ema_writes_a_run(tmp_path, capsys):
    data = load("toy:moons")
    train(_posthoc_cfg(20), data, tmp_path / "a", progress=False)
    train(_posthoc_cfg(10), data, tmp_path / "b", progress=False)
    train(_posthoc_cfg(20), data, tmp_path / "b", resume=True, progress=False)
    sa, sb = list_snapshots(tmp_path / "a"), list_snapshots(tmp_path / "b")
    assert sorted(sa) == sorted(sb) == [4, 8, 10, 12, 16, 20]
    from difflab.training.ema import read_snapshot

    ta, tb = read_snapshot(sa[20])[0], read_snapshot(sb[20])[0]
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert main(["ema", "--run", str(tmp_path / "a"), "--length", "0.08"]) == 0
    out = tmp_path / "a-ema0.08"
    run, orig = load_run(out), load_run(tmp_path / "a")
    assert run.config["posthoc_ema"]["sigma_rel"] == 0.08
    rec = reconstruct(tmp_path / "a", 0.08).weights
    for k, v in run.model.state_dict().items():
        torch.testing.assert_close(v, rec["model"][k].to(v.dtype))
    assert any(not torch.equal(v, orig.model.state_dict()[k]) for k, v in run.model.state_dict().items())
    capsys.readouterr()
    assert main(["ema", "--run", str(tmp_path / "a"), "--length", "0.08"]) == 2  # the written run is kept
    assert main(["ema", "--run", str(tmp_path / "a"), "--length", "0.4", "--out", str(tmp_path / "c")]) == 2
    (tmp_path / "d").mkdir()
    assert main(["ema", "--run", str(tmp_path / "d"), "--length", "0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("difflab: error: ") for line in err)
    assert "already holds a run" in err[0] and "(0, 0.2887)" in err[1] and "not a run folder" in err[2]


def test_difflab_train_flags_set_the_recipe(tmp_path, tiny_config, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "toy:moons", "--out", str(out), "--steps", "4", "--config", tiny_config(),
                 "--schedule", "flow", "--prediction", "edm", "--noise", "logit_normal", "--weighting", "soft_min_snr",
                 "--posthoc-ema", "0.05", "0.1", "--quiet"]) == 0
    rc = difflab.training.checkpoint.read_json(out / "config.json")
    assert rc["schedule"]["kind"] == "flow" and rc["prediction"] == "edm"
    assert rc["train"]["noise"] == "logit_normal" and rc["train"]["weighting"] == "soft_min_snr"
    assert rc["train"]["posthoc_ema"] == [0.05, 0.1] and 4 in list_snapshots(out)
    assert main(["ema", "--run", str(out), "--length", "0.07", "--step", "4", "--out", str(tmp_path / "e")]) == 0
    capsys.readouterr()
    assert main(["train", "--data", "toy:moons", "--out", str(tmp_path / "bad"), "--steps", "2",
                 "--config", tiny_config(), "--posthoc-ema", "0.3", "--quiet"]) == 2
    assert "posthoc_ema" in capsys.readouterr().err
