import json
import math

import numpy as np
import torch
from torch.distributions import Normal, kl_divergence

from difflab.cli.main import main
from difflab.data import load
from difflab.models.vae import VAE, VAENetConfig
from difflab.training.checkpoint import CONFIG
from difflab.training.engine import fit
from difflab.training.families import load_generator
from difflab.training.vae import VAEConfig, VAEFamily, negative_elbo, vae_nll


def _double(vae):
    return vae.double()


def test_negative_elbo_of_points_equals_its_closed_form():
    torch.manual_seed(0)
    vae = _double(VAE(VAENetConfig(shape=(2,), width=8, depth=1, z_dim=3)))
    x = torch.randn(5, 2, dtype=torch.float64)
    eps = torch.randn(5, 3, dtype=torch.float64)
    out = negative_elbo(vae, x, eps, bins=None)
    mu, logvar = vae.encode(x)
    std = (0.5 * logvar).exp()
    mean = vae.decode(mu + std * eps)
    scale = vae.log_scale.clamp(-7, 2).exp()
    rec = -Normal(mean, scale).log_prob(x).sum(1)
    kl = kl_divergence(Normal(mu, std), Normal(torch.zeros_like(mu), torch.ones_like(std))).sum(1)
    assert torch.allclose(out["rec"], rec, rtol=1e-12)
    assert torch.allclose(out["kl"], kl, rtol=1e-12)
    assert torch.allclose(out["nll"], rec + kl, rtol=1e-12)  # nats for points


def test_image_elbo_is_in_bits_per_dim_with_the_8bit_decoder():
    torch.manual_seed(0)
    vae = _double(VAE(VAENetConfig(shape=(1, 8, 8), width=4, z_dim=2)))
    x = load("digits").x[:4].double()
    eps = torch.randn(4, 2, dtype=torch.float64)
    with torch.no_grad():
        out = negative_elbo(vae, x, eps, bins=256)
        mu, logvar = vae.encode(x)
        mean = vae.decode(mu + (0.5 * logvar).exp() * eps)
    # written out: normal CDFs over each pixel's 8-bit bin, the edge bins open; KL(N(mu, e^logvar) || N(0, I))
    scale = vae.log_scale.detach().clamp(-7, 2).exp()[None, :, None, None]
    lo = torch.where(x < -1 + 1 / 255, -math.inf, (x - 1 / 255 - mean) / scale)
    hi = torch.where(x > 1 - 1 / 255, math.inf, (x + 1 / 255 - mean) / scale)
    rec = -torch.log(torch.special.ndtr(hi) - torch.special.ndtr(lo)).flatten(1).sum(1)
    kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)
    assert float(((out["rec"] - rec) / rec).abs().max()) < 1e-6  # plain CDF differences lose digits in the tails
    assert torch.allclose(out["kl"], kl, rtol=1e-12)
    torch.testing.assert_close(out["nll"], (rec + kl) / (64 * math.log(2)), rtol=1e-6, atol=0)  # bits per dim
    # a discrete likelihood: every bin has probability at most 1, so the bound is at least the KL
    assert bool((out["rec"] >= 0).all())


def test_vae_trains_on_digits_and_its_bound_falls(tmp_path):
    data = load("digits")
    cfg = VAEConfig(network={"width": 8, "z_dim": 4}, steps=40, batch_size=32, lr=3e-3, warmup_steps=5)
    fam = VAEFamily(cfg, data)
    before = vae_nll(fam.vae, data.x[:200])
    fit(fam, len(data), cfg, None, progress=False)
    after = vae_nll(fam.vae, data.x[:200])
    assert after < before - 0.5, (before, after)  # bits/dim
    x = VAEFamily.draw(fam.modules, cfg, 5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 8, 8) and float(x.abs().max()) <= 1.0


def test_cli_vae_run_round_trips_through_sample(tmp_path):
    out = tmp_path / "vae"
    cfg = tmp_path / "vae.json"
    cfg.write_text(json.dumps({"network": {"width": 8}, "batch_size": 16}))
    assert main(["train", "--data", "digits", "--family", "vae", "--steps", "3", "--config", str(cfg), "--out", str(out),
                 "--quiet"]) == 0
    assert json.loads((out / CONFIG).read_text())["family"] == "vae"
    assert main(["sample", "--run", str(out), "--num", "6", "--out", str(tmp_path / "v.npz")]) == 0
    assert np.load(tmp_path / "v.npz")["images"].shape == (6, 8, 8, 1)
    gen = load_generator(out, device="cpu")
    assert gen.nfe == 1 and gen.num_params == sum(p.numel() for p in gen.modules["model"].parameters())
    assert main(["train", "--data", "digits", "--family", "vae", "--conditional", "--out", str(tmp_path / "c")]) == 2
