import math

import pytest
import torch
from torch import nn

from difflab.data import load
from difflab.data.toy import GRID_STD, grid_centers
from difflab.evaluation.modes import mode_coverage
from difflab.models.gan import GANNetConfig
from difflab.schedules.discrete import DiscreteSchedule
from difflab.training.ddgan import DDGANConfig, DDGANFamily, VPSteps
from difflab.training.engine import fit
from difflab.training.gan import GANConfig, GANFamily


def test_vp_discretisation_closed_form():
    T, b0, b1 = 4, 0.1, 20.0
    steps = VPSteps(T, b0, b1)
    for k in range(T + 1):
        s = k / T
        assert float(steps.alphas_cumprod[k]) == pytest.approx(math.exp(-b0 * s - 0.5 * (b1 - b0) * s * s), rel=1e-12)
    assert torch.allclose(torch.cumprod(1 - steps.betas[1:], 0), steps.alphas_cumprod[1:], rtol=1e-12, atol=0)
    assert bool(((steps.betas[1:] > 0) & (steps.betas[1:] < 1)).all())
    # T = 1: a single step from (almost) pure noise to the data
    assert float(VPSteps(1).alphas_cumprod[1]) == pytest.approx(math.exp(-10.05), rel=1e-12)


@pytest.mark.parametrize("T", [2, 4])
def test_posterior_step_equals_the_ddpm_posterior_for_a_perfect_x0(T):
    steps = VPSteps(T)
    ddpm = DiscreteSchedule(steps.betas[1:])  # the library's DDPM tables, its index t = k - 1
    c0, ct = ddpm.posterior_mean_coefs
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, dtype=torch.float64, generator=g)
    for k_ in range(1, T + 1):
        k = torch.full((6,), k_)
        x_k = steps.q_sample(x0, k, torch.randn(6, 3, dtype=torch.float64, generator=g))
        eps = torch.randn(6, 3, dtype=torch.float64, generator=g)
        mean, var = steps.posterior(x0, x_k, k)
        assert torch.allclose(mean, c0[k_ - 1] * x0 + ct[k_ - 1] * x_k, rtol=1e-12, atol=1e-14)
        assert torch.allclose(var, ddpm.posterior_variance[k_ - 1].expand_as(var), rtol=1e-12, atol=1e-15)
        want = c0[k_ - 1] * x0 + ct[k_ - 1] * x_k + ddpm.posterior_variance[k_ - 1].sqrt() * eps
        assert torch.allclose(steps.posterior_sample(x0, x_k, k, eps), want, rtol=1e-12, atol=1e-14)
        # the posterior with q(x_k | x_0) composes to q(x_{k-1} | x_0): mean sqrt(abar_{k-1}) x_0, var 1 - abar_{k-1}
        a, a_prev = steps.alphas_cumprod[k_], steps.alphas_cumprod[k_ - 1]
        assert float(c0[k_ - 1] + ct[k_ - 1] * a.sqrt()) == pytest.approx(float(a_prev.sqrt()), rel=1e-12)
        assert float(ct[k_ - 1] ** 2 * (1 - a) + var[0, 0]) == pytest.approx(float(1 - a_prev), rel=1e-12)
    # the last step (k = 1) returns x_0' itself
    assert torch.equal(steps.posterior(x0, x_k, torch.ones(6, dtype=torch.long))[1], torch.zeros(6, 1, dtype=torch.float64))


class _Perfect(nn.Module):
    """A generator that always predicts the point c (a one-point data set, perfectly learned)."""

    def __init__(self, c: torch.Tensor, T: int):
        super().__init__()
        self.c = nn.Parameter(c)
        self.config = GANNetConfig(shape=(2,), z_dim=3, steps=T)
        self.calls = 0

    def forward(self, z, x_t, t, y=None):
        self.calls += 1
        return self.c.expand(len(z), 2)


@pytest.mark.parametrize("T", [1, 2, 4])
def test_sampling_with_a_perfect_generator_lands_on_the_data_in_T_calls(T):
    c = torch.tensor([0.3, -0.7])
    g = _Perfect(c, T)
    cfg = DDGANConfig(timesteps=T)
    x = DDGANFamily.draw({"generator": g}, cfg, 9, torch.Generator().manual_seed(0))
    assert g.calls == T == DDGANFamily.nfe(cfg)
    assert torch.allclose(x, c.expand(9, 2), atol=1e-6)


def test_ddgan_pairs_follow_the_forward_process():
    data = load("toy:25gaussians")
    cfg = DDGANConfig(timesteps=4, network={"width": 8, "depth": 1, "z_dim": 2, "emb_dim": 4})
    fam = DDGANFamily(cfg, data)
    from difflab.training.engine import Batch
    from difflab.utils.random import BatchRandom

    n = 4000
    b = Batch(0, torch.arange(n), BatchRandom(torch.Generator().manual_seed(1), 0, n, n), torch.device("cpu"))
    x_prev, x_k, k, _, _, _ = fam._pairs(b)
    x0 = data.batch(torch.arange(n))
    assert set(k.tolist()) == {1, 2, 3, 4}
    assert torch.equal(x_prev[k == 1], x0[k == 1])  # x_0 is the data itself
    # x_k given x_0 has variance 1 - abar_k: residual of x_k - sqrt(abar_k) x_0
    for kk in (2, 4):
        sel = k == kk
        r = x_k[sel].double() - fam.steps.alphas_cumprod[kk].sqrt() * x0[sel].double()
        want = float(1 - fam.steps.alphas_cumprod[kk])
        assert float(r.var()) == pytest.approx(want, rel=6 / math.sqrt(int(sel.sum())))


@pytest.mark.slow
def test_ddgan_covers_more_modes_than_the_gan_on_25_gaussians():
    """Xiao et al. 2022, fig. 4: after the same short training (800 steps, about a minute each on one idle core) the
    GAN collapses onto a few modes, DDGAN (T = 4) covers most of the 25 (seed 0: 1 vs 20 modes at 750 steps)."""
    torch.set_num_threads(1)
    data = load("toy:25gaussians")
    common = dict(steps=800, batch_size=1024, lr=1e-3, lr_d=1e-3, r1_gamma=0.0, log_every=1000)
    out = {}
    for name, cls, cfg in [("gan", GANFamily, GANConfig(**common)),
                           ("ddgan", DDGANFamily, DDGANConfig(timesteps=4, **common))]:
        torch.manual_seed(0)
        fam = cls(cfg, data)
        fit(fam, len(data), cfg, None, progress=False)
        x = cls.draw(fam.modules, cfg, 2500, torch.Generator().manual_seed(0))
        out[name] = mode_coverage(x, grid_centers(), GRID_STD)
    assert out["ddgan"]["modes"] >= out["gan"]["modes"] + 8, out
    assert out["ddgan"]["modes"] >= 15 and out["ddgan"]["high_quality"] >= 0.4, out
