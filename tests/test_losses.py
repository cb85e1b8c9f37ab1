import pytest
import torch

import difflab
from difflab.losses import denoising_loss, loss_weight, sample_t
from difflab.models.denoiser import PREDICTIONS, Denoiser, target_for, x0_from


def test_training_times():
    d = difflab.schedules.get("linear", T=50)
    t = sample_t(d, 20000, torch.Generator().manual_seed(0))
    assert t.min() == 0 and t.max() == 49 and torch.equal(t, t.round())
    assert torch.bincount(t.long(), minlength=50).min() > 300  # uniform over all 50 steps
    c = difflab.schedules.get("vp")
    t = sample_t(c, 1000, torch.Generator().manual_seed(0), antithetic=True)
    assert c.t_min <= t.min() and t.max() <= c.t_max
    gaps = torch.sort(t).values.diff()  # antithetic draws are evenly spread
    assert torch.allclose(gaps, torch.full_like(gaps, gaps.mean()), rtol=1e-3)


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_oracle_network_has_zero_loss(prediction):
    s = difflab.schedules.get("cosine", T=100)
    c = torch.tensor([[0.3, -0.7]])

    def net(x, t):
        a, sig = s.alpha(t)[:, None].float(), s.sigma(t)[:, None].float()
        if prediction == "edm":  # the network sees c_in x_t / alpha = x_t / sqrt(sigma^2 + alpha^2 sd^2)
            x = x * torch.sqrt(sig**2 + (a * 0.5) ** 2)
        return target_for(prediction, c.expand_as(x), (x - a * c) / sig, a, sig)

    loss = denoising_loss(Denoiser(net, s, prediction), c.expand(64, 2), generator=torch.Generator().manual_seed(1))
    assert loss.shape == (64,) and loss.abs().max() < 1e-5


@pytest.mark.parametrize("prediction", PREDICTIONS)
def test_min_snr_weight_is_min_snr_in_x0_space(prediction):
    """w * ||out - target||^2 = min(SNR, gamma) ||x0_hat - x0||^2 for any network output (Hang et al. 2023)."""
    s = difflab.schedules.get("cosine")
    g = torch.Generator().manual_seed(0)
    t = torch.rand(32, generator=g, dtype=torch.float64) * 0.9 + 0.05
    a, sig = s.alpha(t)[:, None], s.sigma(t)[:, None]
    x0, eps, out = (torch.randn(32, 4, generator=g, dtype=torch.float64) for _ in range(3))
    xt = a * x0 + sig * eps
    lam = s.log_snr(t)
    w = loss_weight(prediction, "min_snr", lam, sig.flatten(), 5.0)
    lhs = w * ((out - target_for(prediction, x0, eps, a, sig)) ** 2).mean(1)
    rhs = torch.exp(lam).clamp(max=5.0) * ((x0_from(prediction, out, xt, a, sig) - x0) ** 2).mean(1)
    assert torch.allclose(lhs, rhs, rtol=1e-8)


def test_score_matching_weight_makes_score_loss_the_eps_loss():
    """Denoising score matching with lambda(t) = sigma^2 equals L_simple of the implied eps (Song et al. 2021)."""
    s = difflab.schedules.get("vp")
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(32, 3, generator=g)
    net = torch.nn.Linear(3, 3)
    t, eps = torch.rand(32, generator=g) * 0.9 + 0.05, torch.randn(32, 3, generator=g)
    score_model = Denoiser(lambda x, tt: net(x), s, "score")
    eps_model = Denoiser(lambda x, tt: -s.sigma(tt)[:, None].float() * net(x), s, "eps")
    l1 = denoising_loss(score_model, x0, t=t, eps=eps)
    l2 = denoising_loss(eps_model, x0, t=t, eps=eps)
    assert torch.allclose(l1, l2, rtol=1e-5)
