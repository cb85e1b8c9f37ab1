"""Variational Diffusion Models: the learned monotone schedule, its variance-minimising gradient, L_T -> L_inf, objectives, Fourier features."""
import math

import pytest
import torch

from difflab import schedules
from difflab.likelihood import FourierInput, fourier_features, vdm_diffusion_loss, vdm_loss
from difflab.training.objectives import OBJECTIVES
from difflab.models.denoiser import Denoiser
from difflab.models.gaussian_mixture import GaussianMixture
from difflab.models.mlp import MLP, MLPConfig
from difflab.schedules import LearnedSchedule

G = torch.Generator


def assert_monotone(s: LearnedSchedule) -> None:
    t = torch.linspace(0, 1, 2001, dtype=torch.float64)
    with torch.no_grad():
        lam, dlam = s.log_snr_and_derivative(t)
    assert bool((lam[1:] < lam[:-1]).all()) and bool((dlam < 0).all())
    assert float(-lam[0]) == pytest.approx(s.gamma_min, abs=1e-4) and float(-lam[-1]) == pytest.approx(s.gamma_max, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_learned_schedule_monotone_at_random_init(seed):
    torch.manual_seed(seed)
    s = LearnedSchedule(-10.0, 6.0, hidden=64)
    with torch.no_grad():  # also after scrambling every parameter
        for p in s.parameters():
            p.add_(torch.randn_like(p) * 3)
    assert_monotone(s)


def test_learned_schedule_derivative_inverse_and_vp():
    s = LearnedSchedule(hidden=32)
    t = torch.linspace(0.01, 0.99, 7, dtype=torch.float64, requires_grad=True)
    lam, dlam = s.log_snr_and_derivative(t)
    (auto,) = torch.autograd.grad(lam.sum(), t)
    torch.testing.assert_close(dlam.detach(), auto)
    with torch.no_grad():
        torch.testing.assert_close(s.t_from_log_snr(lam.detach()), t.detach(), atol=1e-9, rtol=0)
        a, sg = s.alpha_sigma(t.detach())
        torch.testing.assert_close(a**2 + sg**2, torch.ones_like(a))


def test_learned_schedule_round_trips_through_config_and_state_dict():
    net = MLP(MLPConfig(dim=2, hidden=16, depth=1, time_scale=1000.0))
    model = Denoiser(net, schedules.get("learned", gamma_min=-8.0, gamma_max=4.0, hidden=16))
    with torch.no_grad():
        model.schedule.gamma_0.add_(0.7)
        model.schedule.w3.mul_(3)
    assert any(k.startswith("schedule.") for k in model.state_dict())
    cfg = model.schedule.config()
    assert cfg["kind"] == "learned"
    again = Denoiser(MLP(net.config), schedules.from_config(cfg))
    again.load_state_dict(model.state_dict())
    t = torch.linspace(0, 1, 9)
    torch.testing.assert_close(again.schedule.log_snr(t), model.schedule.log_snr(t))


def test_variance_gradient_is_the_gradient_of_the_second_moment():
    """Schedule shape: the gradient of E[L^2], the estimator's variance (Kingma et al. 2021, sec. 5.2); the network
    and the endpoints: the gradient of E[L], the VLB.  In float64, so the comparisons are exact up to rounding."""
    torch.manual_seed(0)
    model = Denoiser(MLP(MLPConfig(dim=2, hidden=32, depth=2, time_scale=1000.0)), LearnedSchedule(hidden=16)).double()
    with torch.no_grad():  # the output layer starts at zero, which zeroes every earlier network gradient
        for p in model.net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(64, 2, dtype=torch.float64)

    def grads(reduce, variance_gradient):
        model.zero_grad()
        reduce(vdm_loss(model, x, generator=G().manual_seed(0), variance_gradient=variance_gradient)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    gv = grads(lambda L: L.mean(), True)  # the objective as trained
    g2 = grads(lambda L: (L**2).mean(), False)  # the second moment, plain autograd
    gp = grads(lambda L: L.mean(), False)  # the VLB, plain autograd
    shape = [n for n in gv if n.startswith("schedule.") and n not in ("schedule.gamma_0", "schedule.gamma_range")]
    assert shape and any(n.startswith("net.") for n in gv)
    for n in gv:
        assert float(gv[n].abs().max()) > 0, n  # no comparison of zeros
        torch.testing.assert_close(gv[n], (g2 if n in shape else gp)[n], rtol=1e-10, atol=1e-14, msg=n)
    # and the two gradients differ, so each comparison above can fail
    for n in gv:
        assert not torch.allclose(gp[n], g2[n], rtol=1e-3, atol=0), n


def test_learned_schedule_stays_monotone_while_training():
    torch.manual_seed(0)
    model = Denoiser(MLP(MLPConfig(dim=2, hidden=32, depth=2, time_scale=1000.0)), LearnedSchedule(hidden=32))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x = torch.randn(128, 2) * 0.3 + 0.5
    before = model.schedule.log_snr(torch.linspace(0, 1, 11)).detach()
    for step in range(30):
        loss = OBJECTIVES["vdm"](model, x, None, G().manual_seed(step), None)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.allclose(model.schedule.log_snr(torch.linspace(0, 1, 11)).detach(), before)  # it did move
    assert_monotone(model.schedule)
    assert model.schedule.gamma_max > model.schedule.gamma_min


def gaussian(d=2, s=0.5):
    return GaussianMixture(torch.ones(1), torch.full((1, d), 0.2, dtype=torch.float64),
                           (s**2 * torch.eye(d, dtype=torch.float64))[None])


def test_discrete_time_loss_tends_to_continuous_one():
    """E[L_T] = d/2 sum_i (SNR(s_i) - SNR(t_i)) Var[x0|z_t_i] for Gaussian data; it decreases to E[L_inf] as T grows."""
    d, s2 = 2, 0.25
    gm, sched = gaussian(), schedules.get("cosine", log_snr_min=-10.0, log_snr_max=8.0)
    model = gm.denoiser(sched, "eps")
    x = gm.sample(20000, G().manual_seed(0))
    snr = lambda t: torch.exp(sched.log_snr(torch.as_tensor(t, dtype=torch.float64)))  # noqa: E731
    l_inf = d / 2 * math.log((1 / s2 + math.exp(8.0)) / (1 / s2 + math.exp(-10.0)))
    prev = math.inf
    for T in (2, 10, 100, None):
        est = vdm_diffusion_loss(model, x, T=T, generator=G().manual_seed(1))
        if T is None:
            ref = l_inf
        else:
            i = torch.arange(1, T + 1, dtype=torch.float64)
            ref = float(d / 2 * ((snr((i - 1) / T) - snr(i / T)) / (1 / s2 + snr(i / T))).sum())
        assert abs(float(est.mean()) - ref) < 4 * float(est.std()) / math.sqrt(len(x)) + 1e-6
        assert ref < prev
        prev = ref
    assert prev == pytest.approx(l_inf)
    gap = {}
    for T in (100, 1000):
        i = torch.arange(1, T + 1, dtype=torch.float64)
        gap[T] = float(d / 2 * ((snr((i - 1) / T) - snr(i / T)) / (1 / s2 + snr(i / T))).sum()) - l_inf
    assert 0 < gap[1000] < gap[100] / 5  # the gap closes like 1/T


def test_antithetic_times_reduce_the_variance_of_the_batch_estimate():
    sched = schedules.get("cosine", log_snr_min=-5.0, log_snr_max=5.0)
    model = Denoiser(lambda x, t: torch.zeros_like(x), sched, "eps")  # loss = weight(t) * ||eps||^2: all variance from t
    x = torch.zeros(64, 2)
    means = {a: torch.stack([vdm_diffusion_loss(model, x, eps=torch.ones(64, 2), antithetic=a,
                                                generator=G().manual_seed(k)).mean() for k in range(50)])
             for a in (True, False)}
    assert float(means[True].std()) < 0.3 * float(means[False].std())


def test_vdm_objectives_registered_and_train():
    assert {"vdm", "vdm_T"} <= set(OBJECTIVES)
    torch.manual_seed(0)
    model = Denoiser(MLP(MLPConfig(dim=2, hidden=64, depth=2, time_scale=1000.0)), LearnedSchedule(hidden=16))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.randn(256, 2) * 0.2 + torch.tensor([0.5, -0.5])
    losses = {}
    for name in ("vdm_T", "vdm"):
        vals = []
        for step in range(60):
            loss = OBJECTIVES[name](model, x, None, G().manual_seed(step), None)
            opt.zero_grad()
            loss.backward()
            opt.step()
            vals.append(loss.item())
        losses[name] = vals
    assert sum(losses["vdm_T"][-10:]) < sum(losses["vdm_T"][:10])
    assert all(math.isfinite(v) for v in losses["vdm"])


def test_fourier_features():
    x = torch.tensor([[[[0.0, 1 / 255]]]])  # [1, 1, 1, 2]
    f = fourier_features(x, (7, 8))
    assert f.shape == (1, 4, 1, 2)
    ref = torch.tensor([math.sin(2**7 * 2 * math.pi / 255), math.sin(2**8 * 2 * math.pi / 255),
                        math.cos(2**7 * 2 * math.pi / 255), math.cos(2**8 * 2 * math.pi / 255)])
    torch.testing.assert_close(f[0, :, 0, 1], ref)
    torch.testing.assert_close(f[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    inner = lambda h, t: h[:, :1] * 0 + h.shape[1]  # noqa: E731
    out = FourierInput(inner, (6, 7, 8))(torch.zeros(2, 1, 4, 4), torch.zeros(2))
    assert out.shape == (2, 1, 4, 4) and float(out[0, 0, 0, 0]) == 7.0


def test_unet_input_fourier_option_round_trips():
    from difflab.models.networks import build_network, network_spec
    from difflab.models.unet import UNet, unet_digits

    net = UNet(unet_digits(channels=8, groups=4, num_heads=2, dropout=0.0, input_fourier=(3, 7, 8)))
    assert net.input_conv.in_channels == 1 + 6
    x, t = torch.randn(2, 1, 8, 8), torch.rand(2)
    spec = network_spec(net)
    again = build_network(spec["kind"], spec["config"])
    again.load_state_dict(net.state_dict())
    torch.testing.assert_close(again(x, t), net(x, t))
