import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from difflab.cli.main import main
from difflab.data import load
from difflab.errors import CheckpointError
from difflab.models.gan import GANNetConfig, build_gan_nets
from difflab.training.checkpoint import CHECKPOINT, CONFIG
from difflab.training.families import load_generator, train_family
from difflab.training.gan import GANConfig, GANFamily, d_loss_nonsaturating, g_loss_nonsaturating, r1_penalty
from difflab.utils.config import ConfigError

TINY_GAN = {"width": 16, "depth": 2, "z_dim": 4, "emb_dim": 8}


def run(*args):
    return main([str(a) for a in args])


def test_nonsaturating_losses_equal_their_log_forms():
    real = torch.tensor([0.0, 1.5, -2.0, 30.0], dtype=torch.float64)
    fake = torch.tensor([-1.0, 0.3, 4.0, -30.0], dtype=torch.float64)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    want_d = -np.mean([math.log(sig(v)) for v in real]) - np.mean([math.log(1 - sig(v)) for v in fake])
    want_g = -np.mean([math.log(sig(v)) for v in fake])
    assert float(d_loss_nonsaturating(real, fake)) == pytest.approx(want_d, rel=1e-12)
    assert float(g_loss_nonsaturating(fake)) == pytest.approx(want_g, rel=1e-12)
    # the softplus form stays finite where log(sigmoid) underflows
    assert math.isfinite(float(g_loss_nonsaturating(torch.tensor([-800.0], dtype=torch.float64))))


def test_r1_penalty_closed_forms():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], dtype=torch.float64)
    w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    pen, logits = r1_penalty(lambda v: v @ w + 1.0, x, gamma=0.2)  # grad = w for every x
    assert float(pen.detach()) == pytest.approx(0.1 * float(w @ w), rel=1e-12)
    assert torch.allclose(logits.detach(), x @ w + 1.0)
    a = 3.0
    pen, _ = r1_penalty(lambda v: 0.5 * a * v.pow(2).sum(1), x, gamma=2.0)  # grad = a x
    assert float(pen.detach()) == pytest.approx(a ** 2 * float(x.pow(2).sum(1).mean()), rel=1e-12)
    # create_graph: the penalty is differentiable in the discriminator's weights (d/da of gamma/2 a^2 E|x|^2)
    a_t = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    pen, _ = r1_penalty(lambda v: 0.5 * a_t * v.pow(2).sum(1), x, gamma=2.0)
    pen.backward()
    assert float(a_t.grad) == pytest.approx(2 * a * float(x.pow(2).sum(1).mean()), rel=1e-12)
    assert float(r1_penalty(lambda v: v @ w, x, gamma=0.0)[0]) == 0.0


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8), (1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("steps", [0, 2])
def test_networks_map_shapes(shape, steps):
    cfg = GANNetConfig(shape=shape, steps=steps, num_classes=3, **TINY_GAN)
    g, d = build_gan_nets(cfg)
    z = torch.randn(5, cfg.z_dim)
    x_t = torch.randn(5, *shape) if steps else None
    t = torch.tensor([0, 1, 0, 1, 1]) if steps else None
    y = torch.tensor([0, 1, 2, 0, 1])
    x = g(z, x_t, t, y)
    assert x.shape == (5, *shape)
    assert d(x, x_t, t, y).shape == (5,)
    with pytest.raises(ValueError, match="class-conditional"):
        g(z, x_t, t, None)


def test_network_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="divisible by 4"):
        GANNetConfig(shape=(1, 10, 10))
    with pytest.raises(ConfigError, match="unknown key"):
        GANConfig(network={"widht": 3})


def test_each_phase_updates_only_its_own_network():
    data = load("toy:25gaussians")
    cfg = GANConfig(network=TINY_GAN, steps=1, batch_size=16)
    fam = GANFamily(cfg, data)
    from difflab.training.engine import fit

    before = {k: [p.detach().clone() for p in m.parameters()] for k, m in fam.modules.items()}
    fit(fam, len(data), cfg, None, progress=False)
    for k, m in fam.modules.items():  # both phases ran: every network moved
        assert any(not torch.equal(a, b) for a, b in zip(before[k], m.parameters())), k
    assert set(fam.optimizers) == {"disc", "gen"}
    assert fam.optimizers["disc"].modules == ("discriminator",) and fam.optimizers["gen"].modules == ("generator",)
    assert fam.optimizers["gen"].betas == (0.5, 0.9)


def test_lazy_r1_weights_the_penalty_by_its_interval_and_skips_between():
    data = load("toy:25gaussians")
    fam = GANFamily(GANConfig(network=TINY_GAN, r1_gamma=0.05, r1_every=4), data)
    from difflab.training.engine import Batch
    from difflab.utils.random import BatchRandom

    def r1_at(step):
        b = Batch(step, torch.arange(8), BatchRandom(torch.Generator().manual_seed(0), 0, 8, 8), torch.device("cpu"))
        return fam.r1_gamma_at(b), float(fam.d_step(b)["r1"])

    assert [r1_at(s)[0] for s in range(6)] == [0.2, 0.0, 0.0, 0.0, 0.2, 0.0]  # 4 x gamma every 4th step
    assert r1_at(1)[1] == 0.0 and r1_at(4)[1] > 0.0
    with pytest.raises(ConfigError, match="r1_every"):
        GANConfig(r1_every=0)


def test_d_steps_updates_the_discriminator_that_many_times_per_step():
    data = load("toy:25gaussians")
    calls = []

    class Counting(GANFamily):
        def d_step(self, batch):
            calls.append(batch.step)
            return super().d_step(batch)

    cfg = GANConfig(network=TINY_GAN, steps=2, batch_size=16, d_steps=3)
    fam = Counting(cfg, data)
    assert [(p.optimizer, p.minimize) for p in fam.phases] == [("disc", "d_loss"), ("disc", "d_loss_2"),
                                                                ("disc", "d_loss_3"), ("gen", "g_loss")]
    from difflab.training.engine import fit

    fit(fam, len(data), cfg, None, progress=False)
    assert calls == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("family,spec", [("gan", "toy:25gaussians"), ("ddgan", "digits")])
def test_two_network_resume_equals_uninterrupted_run_bitwise(tmp_path, family, spec):
    data = load(spec)
    extra = {"timesteps": 2} if family == "ddgan" else {}
    cls = GANFamily.recipe if family == "gan" else __import__("difflab.training.ddgan", fromlist=["x"]).DDGANConfig
    base = cls.from_dict({"network": TINY_GAN, "batch_size": 8, "log_every": 2, "checkpoint_every": 3, "steps": 6,
                          **extra})
    train_family(family, base, data, tmp_path / "straight", progress=False)
    train_family(family, base.replace(steps=4), data, tmp_path / "split", progress=False)
    train_family(family, base, data, tmp_path / "split", resume=True, progress=False)
    a = load_file(str(tmp_path / "straight" / CHECKPOINT))
    b = load_file(str(tmp_path / "split" / CHECKPOINT))
    assert a.keys() == b.keys()
    assert any(k.startswith("module.discriminator.") for k in a) and any(k.startswith("ema.generator.") for k in a)
    assert any(k.startswith("optim.disc.") for k in a) and any(k.startswith("optim.gen.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rc = json.loads((tmp_path / "split" / CONFIG).read_text())
    assert rc["family"] == family
    x = load_generator(tmp_path / "split", device="cpu").sample(7, seed=1)
    assert x.shape == (7, *data.shape)
    assert torch.equal(x, load_generator(tmp_path / "straight", device="cpu").sample(7, seed=1))


def test_conditional_gan_samples_requested_classes(tmp_path):
    data = load("digits")
    cfg = GANConfig(network=TINY_GAN, steps=2, batch_size=8, conditional=True)
    train_family("gan", cfg, data, tmp_path / "c", progress=False)
    gen = load_generator(tmp_path / "c", device="cpu")
    assert gen.num_classes == 10 and gen.nfe == 1
    a = gen.sample(4, seed=0, labels=torch.tensor([1, 1, 1, 1]))
    b = gen.sample(4, seed=0, labels=torch.tensor([2, 2, 2, 2]))
    assert not torch.equal(a, b)  # the label is an input


def test_cli_train_and_sample_a_gan(tmp_path, capsys):
    out = tmp_path / "gan"
    cfg = tmp_path / "gan.json"
    cfg.write_text(json.dumps({"network": TINY_GAN, "batch_size": 16, "log_every": 5}))
    assert run("train", "--data", "toy:25gaussians", "--family", "gan", "--steps", 5, "--config", cfg, "--out", out,
               "--quiet") == 0
    rc = json.loads((out / CONFIG).read_text())
    assert rc["family"] == "gan" and rc["train"]["steps"] == 5 and rc["train"]["network"]["width"] == 16
    head = (out / "log.csv").read_text().splitlines()[0].split(",")
    assert {"d_loss", "g_loss", "r1", "grad_norm_disc", "grad_norm_gen"} <= set(head)
    assert run("sample", "--run", out, "--num", 20, "--out", tmp_path / "s.npz") == 0
    assert np.load(tmp_path / "s.npz")["samples"].shape == (20, 2)
    assert run("sample", "--run", out, "--num", 20, "--out", tmp_path / "s.png") == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    capsys.readouterr()
    # user mistakes are one line, not a traceback
    assert run("train", "--data", "toy:25gaussians", "--family", "gan", "--timesteps", 2, "--out", tmp_path / "x") == 2
    assert "--timesteps" in capsys.readouterr().err
    assert run("sample", "--run", out, "--steps", 10, "--out", tmp_path / "t.png") == 2
    assert "own sampler" in capsys.readouterr().err
    assert run("train", "--data", "toy:25gaussians", "--family", "gan", "--steps", 5, "--out", out) == 2
    assert "already holds a run" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / CONFIG).write_text(json.dumps({"format": "difflab-run-1"}))
    with pytest.raises(CheckpointError, match="not a difflab gan / vae / ddgan run"):
        load_generator(tmp_path / "d")
