"""EDM2's learned uncertainty weighting (Karras et al. 2024): u(sigma) tracks the log of the per-sigma loss."""
from __future__ import annotations

import math

import pytest
import torch

from difflab import schedules
from difflab.data import load
from difflab.losses import UncertaintyWeight, denoising_loss
from difflab.models.denoiser import Denoiser
from difflab.training import TrainConfig, train
from difflab.training.checkpoint import load_checkpoint
from difflab.utils.config import ConfigError


class Blurred(torch.nn.Module):
    """A fixed, imperfect x0-network on 2-D data: 0.6 x / (1 + s^2) (the exact denoiser of N(0, I) shrunk), so the
    weighted loss varies by orders of magnitude with sigma."""

    def forward(self, x, t):
        s2 = (t / (1 - t)) ** 2  # flow path: s = t / (1 - t)
        return 0.6 * x / (1 + s2)[:, None]


def test_learned_u_tracks_the_log_of_the_per_sigma_loss():
    torch.manual_seed(0)
    sched = schedules.get("flow")
    model = Denoiser(Blurred(), sched, "x0")
    data = torch.randn(20000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float32) * torch.tensor([1.0, 0.3])
    u = UncertaintyWeight()
    opt = torch.optim.Adam(u.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(2)
    for _ in range(600):
        x0 = data[torch.randint(0, len(data), (512,), generator=g)]
        loss = denoising_loss(model, x0, generator=g, weighting="uncertainty", noise="lognormal", uncertainty=u).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # the per-sigma expected weighted loss, by Monte Carlo at fixed levels inside the bulk of log sigma ~ N(-1.2, 1.2^2)
    got, want = [], []
    with torch.no_grad():
        for log_sigma in (-3.0, -2.0, -1.2, -0.4, 0.4):
            t = sched.t_from_sigma_ve(torch.tensor(math.exp(log_sigma), dtype=torch.float64)).float().expand(8000)
            x0 = data[:8000]
            plain = denoising_loss(model, x0, t=t, generator=torch.Generator().manual_seed(3), weighting="edm")
            want.append(math.log(float(plain.mean())))
            got.append(float(u(sched.log_snr(t[:1]).float())))
    want, got = torch.tensor(want), torch.tensor(got)
    assert float(want.max() - want.min()) > 1.0  # the loss varies over the levels, so the check means something
    print("u:", [round(v, 3) for v in got.tolist()], "log loss:", [round(v, 3) for v in want.tolist()])
    assert float((got - want).abs().max()) < 0.3, (got, want)


def test_uncertainty_weighting_trains_saves_and_resumes(tmp_path):
    data = load("toy:moons")
    base = {"schedule": {"kind": "ve"}, "prediction": "edm", "noise": "lognormal", "weighting": "uncertainty",
            "batch_size": 64, "log_every": 1000, "checkpoint_every": 1000, "sample_steps": 2,
            "network": {"hidden": 16, "depth": 1}}
    train(TrainConfig.from_dict({**base, "steps": 30}), data, tmp_path / "run", progress=False)
    ck = load_checkpoint(tmp_path / "run")
    assert "uncertainty" in ck.modules and any(k.startswith("mlp.") for k in ck.modules["uncertainty"])
    assert float(ck.modules["uncertainty"]["mlp.2.weight"].abs().sum()) > 0  # trained with the network
    train(TrainConfig.from_dict({**base, "steps": 40}), data, tmp_path / "run", resume=True, progress=False)
    assert load_checkpoint(tmp_path / "run").step == 40
    with pytest.raises(ConfigError, match="uncertainty"):
        TrainConfig.from_dict({**base, "objective": "hybrid"})
    with pytest.raises(ValueError, match="uncertainty"):
        denoising_loss(Denoiser(Blurred(), schedules.get("flow"), "x0"), torch.zeros(4, 2), weighting="uncertainty")
