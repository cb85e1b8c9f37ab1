"""The KL autoencoder and latent diffusion: training, the KL's closed form, the scale factor, decoding, and errors."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from difflab.cli.main import main
from difflab.data import load
from difflab.models.autoencoder import AutoencoderConfig, KLAutoencoder, gaussian_kl
from difflab.training import load_run
from difflab.training.autoencoder import (AutoencoderFamily, AutoencoderTrainConfig, LoadedAutoencoder,
                                          latent_statistics, load_autoencoder, parse_latent)
from difflab.training.checkpoint import CHECKPOINT, CONFIG, load_checkpoint, save_checkpoint
from difflab.training.engine import fit
from difflab.training.latent import encode_dataset

TINY_AE = {"channels": 8, "channel_mult": [1, 2], "groups": 4}
TINY_UNET = {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1], "num_heads": 2,
             "groups": 4, "dropout": 0.0}


def run(*args):
    return main([str(a) for a in args])


def _rec_mse(ae: KLAutoencoder, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float((ae.decode(ae.encode(x)[0]) - x).pow(2).mean())


def test_round_trip_error_decreases_with_training():
    data = load("digits", "train")
    cfg = AutoencoderTrainConfig(network=TINY_AE, steps=10, batch_size=16, lr=3e-3, warmup_steps=2, ema_decay=0.0)
    torch.manual_seed(0)
    family = AutoencoderFamily(cfg, data)
    x = data.batch(torch.arange(200))
    before = _rec_mse(family.ae, x)
    fit(family, len(data), cfg, None, progress=False)
    after = _rec_mse(family.ae, x)
    assert after < 0.5 * before, (before, after)


def test_kl_matches_closed_form_and_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64)
    logvar = torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64)
    kl = gaussian_kl(mean, logvar)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    assert torch.allclose(kl, torch.distributions.kl_divergence(q, p).flatten(1).sum(1), rtol=1e-12, atol=1e-12)
    assert float(gaussian_kl(torch.ones(1, 1), torch.zeros(1, 1))) == 0.5  # KL(N(1, 1) || N(0, 1)) = 1/2 by hand
    z = q.sample((40_000,))  # Monte Carlo: E_q[log q(z) - log p(z)], within 5 standard errors
    terms = (q.log_prob(z) - p.log_prob(z)).flatten(2).sum(2)
    err = terms.std(0) / math.sqrt(len(z))
    assert torch.all((terms.mean(0) - kl).abs() < 5 * err), (terms.mean(0), kl, err)


def test_latent_scaling_gives_unit_variance():
    data = load("digits", "train")
    torch.manual_seed(0)
    ae = KLAutoencoder(AutoencoderConfig.from_dict({"shape": [1, 8, 8], "latent": [2, 4, 4], **TINY_AE})).eval()
    stats = latent_statistics(ae, data)
    assert stats["scale_examples"] == len(data)  # a set smaller than the cap: every example
    loaded = LoadedAutoencoder(ae, {"shape": [1, 8, 8], "latent": [2, 4, 4], **stats}, 0, "", Path("."))
    z = encode_dataset(loaded, data).x.double()
    assert z.shape == (len(data), 2, 4, 4)
    assert abs(float(z.std()) - 1.0) < 1e-5  # float32 latents scaled by a float64 1/std
    # lazily encoded batches equal the up-front encoding
    lazy = encode_dataset(loaded, data)
    idx = torch.tensor([5, 3, 5, 1000])
    assert torch.allclose(lazy.batch(idx).double(), z[idx], atol=1e-6)


def test_parse_latent():
    assert parse_latent("4x7x7") == (4, 7, 7)
    with pytest.raises(Exception, match="--latent"):
        parse_latent("4x7")


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("latent")
    (d / "ae.json").write_text(json.dumps({"network": TINY_AE, "batch_size": 16, "warmup_steps": 2}))
    (d / "ldm.json").write_text(json.dumps({"network": TINY_UNET, "batch_size": 16, "sample_steps": 2, "schedule":
                                            {"kind": "linear", "T": 100, "beta_start": 1e-3, "beta_end": 0.1}}))
    assert run("train-autoencoder", "--data", "digits", "--out", d / "ae", "--steps", 3, "--config", d / "ae.json",
               "--quiet") == 0
    assert run("train", "--data", "digits", "--autoencoder", d / "ae", "--out", d / "ldm", "--steps", 2,
               "--conditional", "--config", d / "ldm.json", "--quiet") == 0
    return d


def test_autoencoder_folder_records_scale_and_run_records_autoencoder(latent_run):
    ae_cfg = json.loads((latent_run / "ae" / CONFIG).read_text())
    assert ae_cfg["latent"] == [2, 4, 4] and ae_cfg["scale_factor"] > 0
    rc = json.loads((latent_run / "ldm" / CONFIG).read_text())
    ae = load_autoencoder(latent_run / "ae")
    assert rc["shape"] == [2, 4, 4] and rc["autoencoder"]["sha256"] == ae.sha256
    assert rc["autoencoder"]["scale_factor"] == ae_cfg["scale_factor"] and rc["autoencoder"]["step"] == 3
    assert (latent_run / "ldm" / "samples.png").is_file()


def test_latent_sampling_decodes_to_data_shape(latent_run, tmp_path):
    loaded = load_run(latent_run / "ldm")
    assert loaded.latent and loaded.shape == (2, 4, 4) and loaded.data_shape == (1, 8, 8)
    x = loaded.to_data(3 * torch.randn(5, 2, 4, 4))  # latents far outside [-1, 1] decode to clamped images
    assert x.shape == (5, 1, 8, 8) and float(x.abs().max()) <= 1.0
    for sampler in ("ddim", "dpmpp_2m"):
        assert run("sample", "--run", latent_run / "ldm", "--num", 6, "--steps", 2, "--sampler", sampler,
                   "--label", 3, "--guidance-scale", 1.5, "--out", tmp_path / f"{sampler}.npz") == 0
        with np.load(tmp_path / f"{sampler}.npz") as f:
            assert f["images"].shape == (6, 8, 8, 1) and f["images"].dtype == np.uint8
    assert run("sample", "--run", latent_run / "ldm", "--num", 2, "--steps", 2, "--threshold", 0.99,
               "--out", tmp_path / "t.npz") == 2  # latents are never thresholded: refused, not ignored


def test_missing_or_changed_autoencoder_is_one_line_error(latent_run, tmp_path, capsys):
    d = tmp_path / "copy"
    shutil.copytree(latent_run, d)
    (d / "ldm" / CONFIG).write_text((d / "ldm" / CONFIG).read_text().replace(str((latent_run / "ae").resolve()),
                                                                             str((d / "ae").resolve())))
    assert run("sample", "--run", d / "ldm", "--num", 2, "--steps", 2, "--out", tmp_path / "a.npz") == 0
    ck = load_checkpoint(d / "ae")  # the autoencoder retrained (here: one weight changed) after the run was made
    ae = KLAutoencoder(AutoencoderConfig.from_dict(json.loads((d / "ae" / CONFIG).read_text())["network"]))
    ae.load_state_dict(ck.modules["model"])
    with torch.no_grad():
        next(ae.parameters()).add_(1.0)
    save_checkpoint(d / "ae", {"model": ae}, {"model": ae}, step=ck.step)
    capsys.readouterr()
    assert run("sample", "--run", d / "ldm", "--num", 2, "--steps", 2, "--out", tmp_path / "b.npz") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("difflab: error:") and "does not match" in err and "\n" not in err
    shutil.rmtree(d / "ae")
    assert run("evaluate", "--run", d / "ldm", "--num", 10) == 2
    err = capsys.readouterr().err.strip()
    assert "autoencoder folder" in err and "does not exist" in err and "\n" not in err
    assert run("train", "--data", "digits", "--autoencoder", d / "ae", "--out", tmp_path / "x", "--steps", 1,
               "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert "autoencoder" in err and "\n" not in err
    assert not (d / "ae" / CHECKPOINT).exists() and (d / "ldm" / CHECKPOINT).is_file()


def test_evaluate_and_report_score_decoded_images(latent_run, tmp_path):
    out = tmp_path / "eval.json"
    assert run("evaluate", "--run", latent_run / "ldm", "--num", 20, "--steps", 2, "--nll", "--nll-num", 8,
               "--nll-num-t", 2, "--json", out) == 0
    res = json.loads(out.read_text())
    assert res["metrics"]["num_samples"] == 20 and math.isfinite(res["metrics"]["fd"])
    nll = res["nll"]  # the bound through the encoder (its value is checked in closed form below)
    assert nll["unit"] == "bits/dim" and nll["n"] == 8 and nll["method"] == "latent_elbo"
    assert set(nll["terms"]) == {"reconstruction", "log_q", "prior"} and nll["terms"]["reconstruction"] > 0
    assert run("report", "--run", latent_run / "ldm", "--methods", "ddim:2", "--num", 10, "--out", tmp_path / "r") == 0
    rows = json.loads((tmp_path / "r" / "report.json").read_text())["rows"]
    assert len(rows) == 1 and math.isfinite(rows[0]["fd"])


class _LinearAE(torch.nn.Module):
    """q(z|x) = N(0.5 x[:2], e^-1 I) on [N, 1, 2, 2] images; the decoder mean is the constant 0.1 whatever z."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5, dtype=torch.float64))

    def encode(self, x):
        mean = self.w * x.flatten(1)[:, :2]
        return mean, torch.full_like(mean, -1.0)

    def decode(self, z):
        return torch.full((z.shape[0], 1, 2, 2), 0.1, dtype=z.dtype)


def test_latent_bound_matches_its_closed_form_on_a_linear_gaussian_autoencoder(monkeypatch):
    """E_q[-log p(x|z) + log q(z|x) - log p(z)] / (d ln 2) with p(z) = N(0, I / s^2) for the latents as stored (the
    prior model's bound at s z is stubbed by the exact -log N(s z; 0, I)): the 8-bit reconstruction term from
    normal CDFs over each pixel's bin, -H(q) = -d_z (log 2 pi + logvar + 1) / 2 and E[-log p(z)] =
    d_z log(2 pi / s^2) / 2 + s^2 E|z|^2 / 2, each against latent_nll on 4000 copies of one image within 4 s.e."""
    import difflab.likelihood as likelihood
    from types import SimpleNamespace

    from torch.distributions import Normal

    from difflab.training.latent import latent_nll

    s, sigma, K = 0.7, 0.2, 4000
    seen = []

    def exact_prior(model, z, cond=None, **kw):
        seen.append(z)
        return SimpleNamespace(nll=0.5 * (math.log(2 * math.pi) + z ** 2).flatten(1).sum(1))

    monkeypatch.setattr(likelihood, "elbo_terms", exact_prior)
    ae = SimpleNamespace(model=_LinearAE(), config={"decoder_std": sigma}, scale_factor=s, path=Path("ae"))
    x1 = torch.tensor([100, 30, 200, 128], dtype=torch.float64) / 127.5 - 1  # 8-bit values, none at an edge bin
    out = latent_nll(None, ae, x1.reshape(1, 1, 2, 2).expand(K, 1, 2, 2), seed=0, batch_size=1000)
    d, dz, bits = 4, 2, 4 * math.log(2)
    normal = Normal(torch.tensor(0.1, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64))
    rec = -float(torch.log(normal.cdf(x1 + 1 / 255) - normal.cdf(x1 - 1 / 255)).sum()) / bits
    log_q = -dz * (math.log(2 * math.pi) - 1.0 + 1.0) / 2 / bits
    m = 0.5 * x1[:2]
    prior = (dz * math.log(2 * math.pi / s**2) / 2 + s**2 * float((m ** 2).sum() + dz * math.exp(-1.0)) / 2) / bits
    se = out["std"] / math.sqrt(K)
    assert out["unit"] == "bits/dim" and out["n"] == K and len(seen) == K // 1000
    assert abs(out["terms"]["reconstruction"] - rec) < 1e-9
    assert abs(out["terms"]["log_q"] - log_q) < 4 * math.sqrt(dz / 2) / bits / math.sqrt(K)
    assert abs(out["terms"]["prior"] - prior) < 4 * se and abs(out["nll"] - (rec + log_q + prior)) < 4 * se
    assert float(torch.cat(seen).std()) > 0.3  # the prior saw s z with z drawn from q, not the means


def test_resume_with_another_autoencoder_is_refused(latent_run, tmp_path, capsys):
    d = tmp_path / "copy"
    shutil.copytree(latent_run, d)
    capsys.readouterr()
    assert run("train-autoencoder", "--data", "digits", "--out", d / "ae2", "--steps", 2, "--config",
               d / "ae.json", "--seed", 1, "--quiet") == 0
    assert run("train", "--data", "digits", "--autoencoder", d / "ae2", "--out", d / "ldm", "--steps", 4,
               "--resume", "--quiet") == 2
    err = capsys.readouterr().err.strip()
    assert "--resume" in err and "autoencoder" in err and "\n" not in err


def test_every_sampler_runs_on_latents_and_decodes(latent_run):
    from difflab.samplers import names, sample

    loaded = load_run(latent_run / "ldm")
    g = torch.Generator().manual_seed(0)
    for name in names():
        x_T = loaded.model.schedule.sample_prior((3, *loaded.shape), generator=g)
        opts = {"rtol": 1e-2, "atol": 1e-2} if name == "dopri5" else {}
        z = sample(loaded.model, x_T, sampler=name, steps=3, generator=g, **opts)
        x = loaded.to_data(z)
        assert z.shape == (3, 2, 4, 4) and x.shape == (3, 1, 8, 8) and torch.isfinite(x).all(), name


def test_latent_runs_default_to_flow_matching_and_eps_to_ldm_schedule(latent_run, tmp_path):
    """The auto recipe trains latents with flow matching (and Euler-Maruyama-50 as the run's sampler); an
    eps-prediction latent run without a given schedule gets LDM's bounded table; a given schedule is kept."""
    from difflab.training.latent import LATENT_SCHEDULE, sigma_max
    from difflab import schedules

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"network": TINY_UNET, "batch_size": 8, "sample_steps": 1}))

    def train(name, *extra):
        assert run("train", "--data", "digits", "--autoencoder", latent_run / "ae", "--out", tmp_path / name,
                   "--steps", 1, "--config", cfg, "--quiet", *extra) == 0
        return json.loads((tmp_path / name / CONFIG).read_text())

    rc = train("auto")
    assert rc["schedule"]["kind"] == "flow" and rc["train"]["prediction"] == "flow"
    assert rc["train"]["sampler"] == "euler_maruyama" and rc["train"]["sample_steps"] == 1  # the config's steps
    for name, extra in (("eps", ("--prediction", "eps")), ("ddpm", ("--recipe", "ddpm"))):
        rc = train(name, *extra)  # eps on latents: LDM's table, not the cosine table's sigma_max of 2e4
        assert rc["train"]["prediction"] == "eps" and rc["train"]["sampler"] == "ddim"
        assert {k: rc["schedule"][k] for k in LATENT_SCHEDULE} == LATENT_SCHEDULE
        assert abs(sigma_max(schedules.from_config(rc["schedule"])) - 14.61) < 0.01  # sqrt(1 / alpha_bar_T - 1)
    rc = train("cos", "--prediction", "eps", "--schedule", "cosine")  # a given schedule is kept
    assert rc["schedule"]["kind"] == "cosine"
    rc = train("v", "--recipe", "v")  # a named recipe that is not eps brings its own schedule
    assert rc["schedule"]["kind"] == "cosine" and rc["train"]["prediction"] == "v"
    # a schedule in the config file is kept (the fixture's linear T = 100 table, sigma_max 12)
    assert json.loads((latent_run / "ldm" / CONFIG).read_text())["schedule"]["kind"] == "linear"