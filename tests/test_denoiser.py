import pytest
import torch

import difflab
from difflab.models.denoiser import PREDICTIONS, Denoiser, target_for, x0_from

SCHEDULES = [("linear", 1000), ("vp", None), ("ve", None), ("subvp", None)]


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("spec", SCHEDULES)
def test_parametrisations_round_trip(prediction, spec):
    """The exact target of each parametrisation converts back to the true x0 (one place for conversions)."""
    s = difflab.schedules.get(spec[0], T=spec[1])
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(16, 3, generator=g, dtype=torch.float64)
    t = s.t_min + torch.rand(16, generator=g, dtype=torch.float64) * (s.t_max - s.t_min) * 0.98 + 0.01 * s.t_max
    a, sig = s.alpha(t)[:, None], s.sigma(t)[:, None]
    xt = a * x0 + sig * eps
    out = target_for(prediction, x0, eps, a, sig)
    assert torch.allclose(x0_from(prediction, out, xt, a, sig), x0, atol=1e-8)


@pytest.mark.parametrize("wrap", [difflab.from_eps, difflab.from_x0, difflab.from_v, difflab.from_score])
def test_oracle_networks_give_the_same_denoiser(wrap):
    """A point-mass data distribution at c has E[x0|x_t] = c for every parametrisation's exact network."""
    s = difflab.schedules.get("linear", T=1000)
    c = torch.tensor([0.5, -0.25], dtype=torch.float64)
    kind = {difflab.from_eps: "eps", difflab.from_x0: "x0", difflab.from_v: "v", difflab.from_score: "score"}[wrap]

    def net(x, t):
        a, sig = s.alpha(t)[:, None], s.sigma(t)[:, None]
        eps = (x - a * c) / sig
        return target_for(kind, c.expand_as(x), eps, a, sig)

    d = wrap(net, s)
    x = torch.randn(5, 2, dtype=torch.float64)
    t = torch.tensor([0.0, 3.3, 100.0, 500.5, 999.0], dtype=torch.float64)
    assert torch.allclose(d(x, t), c.expand(5, 2), atol=1e-9)
    a, sig = s.alpha(t)[:, None], s.sigma(t)[:, None]
    assert torch.allclose(d.eps(x, t), (x - a * c) / sig, atol=1e-7)
    assert torch.allclose(d.score(x, t), -(x - a * c) / sig**2, rtol=1e-6)


def test_scalar_t_and_condition_pass_through():
    s = difflab.schedules.get("linear", T=10, beta_start=1e-4, beta_end=0.02)  # explicit betas: any T
    seen = {}

    def net(x, t, cond=None):
        seen["t"], seen["cond"] = t, cond
        return torch.zeros_like(x)

    d = Denoiser(net, s, "eps")
    d(torch.ones(3, 2), 4.0, cond={"y": torch.tensor([1, 2, 3])})
    assert seen["t"].shape == (3,) and seen["cond"]["y"].tolist() == [1, 2, 3]


def test_unknown_prediction_rejected():
    with pytest.raises(ValueError, match="unknown prediction"):
        Denoiser(lambda x, t: x, difflab.schedules.get("vp"), "noise")


def test_clamped_denoiser_bounds_every_sampler_output():
    from difflab.models.denoiser import Clamped

    s = difflab.schedules.get("cosine", T=1000)
    wild = difflab.from_eps(lambda x, t: -3.0 * x, s)  # a bad eps-network: x0 predictions explode near t = T-1
    x = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.full((8,), 999.0)
    assert wild(x, t).abs().max() > 100
    c = Clamped(wild)
    assert c.schedule is s and c(x, t).abs().max() <= 1
    out = difflab.sample(c, x, sampler="ddim", steps=5)
    assert out.abs().max() <= 1 + 1e-6
