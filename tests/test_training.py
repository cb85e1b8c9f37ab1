import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MLP, TINY_UNET
from difflab.data import load
from difflab.errors import CheckpointError
from difflab.training import TrainConfig, load_run, train
from difflab.training.checkpoint import CHECKPOINT, load_checkpoint, restore_optimizer, save_checkpoint
from difflab.training.ema import EMA
from difflab.training.engine import batch_indices
from difflab.training.run import build_denoiser


def _losses(run_dir):
    rows = (run_dir / "log.csv").read_text().splitlines()
    head = rows[0].split(",")
    return [float(r.split(",")[head.index("loss")]) for r in rows[1:]]


def test_batches_walk_through_a_permutation_each_epoch():
    n, b = 50, 16
    seen = torch.cat([batch_indices(n, b, seed=0, step=k) for k in range(25)])  # 8 epochs exactly
    for e in range(8):
        assert sorted(seen[e * n:(e + 1) * n].tolist()) == list(range(n))
    assert torch.equal(batch_indices(n, b, 0, 7), batch_indices(n, b, 0, 7))
    assert not torch.equal(batch_indices(n, b, 1, 7), batch_indices(n, b, 0, 7))


def test_loss_falls_on_toy_data(tmp_path):
    cfg = TrainConfig(network=TINY_MLP | {"hidden": 64}, batch_size=128, lr=3e-3, warmup_steps=10, steps=150,
                      log_every=10, sample_steps=2, schedule={"kind": "linear", "T": 100})
    train(cfg, load("toy:8gaussians"), tmp_path / "r", progress=False)
    losses = _losses(tmp_path / "r")
    assert np.mean(losses[-3:]) < 0.75 * losses[0]


def test_loss_falls_on_digits_with_a_unet(tmp_path):
    cfg = TrainConfig(network=TINY_UNET, batch_size=32, lr=2e-3, warmup_steps=5, steps=60, log_every=5, sample_steps=2)
    train(cfg, load("digits"), tmp_path / "r", progress=False)
    losses = _losses(tmp_path / "r")
    assert np.mean(losses[-3:]) < 0.8 * losses[0]


def test_ema_update_formula():
    m = torch.nn.Linear(2, 1)
    ema = EMA(m, decay=0.9)
    before = ema.model.weight.detach().clone()
    with torch.no_grad():
        m.weight.add_(1.0)
    ema.update(m, step=1000)
    assert torch.allclose(ema.model.weight, 0.9 * before + 0.1 * m.weight)


def test_checkpoint_round_trip(tmp_path):
    data = load("toy:moons")
    cfg = TrainConfig(network=TINY_MLP)
    model = build_denoiser(cfg, data)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for k in range(3):
        loss = model.raw(data.batch(torch.arange(8)), torch.full((8,), 10.0)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_checkpoint(tmp_path, {"model": model.net}, {"model": model.net}, {"model": opt}, step=3)
    ck = load_checkpoint(tmp_path)
    assert ck.step == 3 and ck.ema["model"].keys() == ck.modules["model"].keys()
    fresh = build_denoiser(cfg, data)
    fresh.net.load_state_dict(ck.modules["model"])
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    restore_optimizer(opt2, ck, "model")
    for (k, v), (k2, v2) in zip(model.net.state_dict().items(), fresh.net.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for pid in s1["state"]:
        for key in s1["state"][pid]:
            assert torch.equal(torch.as_tensor(s1["state"][pid][key]), torch.as_tensor(s2["state"][pid][key]))
    assert not list(tmp_path.glob(".checkpoint*"))  # no temporary files left behind


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_resume_equals_uninterrupted_run_bitwise(tmp_path, kind):
    data = load("toy:moons") if kind == "mlp" else load("digits")
    net = TINY_MLP if kind == "mlp" else TINY_UNET | {"dropout": 0.1}
    base = TrainConfig(network=net, batch_size=16, log_every=5, checkpoint_every=7, sample_steps=2, warmup_steps=4,
                       schedule={"kind": "linear", "T": 50}, steps=20)
    train(base, data, tmp_path / "straight", progress=False)
    train(base.replace(steps=13), data, tmp_path / "split", progress=False)
    train(base, data, tmp_path / "split", resume=True, progress=False)
    a = load_file(str(tmp_path / "straight" / CHECKPOINT))
    b = load_file(str(tmp_path / "split" / CHECKPOINT))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = (tmp_path / "split" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in log[1:]] == ["5", "10", "13", "15", "20"]


def test_load_run_gives_ema_denoiser(tmp_path):
    data = load("toy:moons")
    cfg = TrainConfig(network=TINY_MLP, steps=5, sample_steps=2, batch_size=8)
    train(cfg, data, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run", device="cpu")
    x = torch.randn(4, 2)
    out = run.model(x, torch.full((4,), 10.0))
    assert out.shape == (4, 2) and run.step == 5 and not any(p.requires_grad for p in run.model.parameters())
    ck = load_checkpoint(tmp_path / "run")
    for k, v in run.model.state_dict().items():  # the loaded weights are the EMA's, not the raw ones
        assert torch.equal(v, ck.ema["model"][k]), k
    assert any(not torch.equal(ck.ema["model"][k], ck.modules["model"][k]) for k in ck.ema["model"])
    raw = load_run(tmp_path / "run", ema=False, device="cpu")
    for k, v in raw.model.state_dict().items():
        assert torch.equal(v, ck.modules["model"][k]), k
    (tmp_path / "run" / CHECKPOINT).write_bytes((tmp_path / "run" / CHECKPOINT).read_bytes()[:200])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_run(tmp_path / "run")


def test_learned_variance_objective_trains_saves_and_reloads(tmp_path):
    from difflab.errors import UserError
    from difflab.likelihood.variance import LearnedVarianceDenoiser

    cfg = TrainConfig(network=TINY_UNET, objective="hybrid", steps=4, batch_size=8, sample_steps=2,
                      schedule={"kind": "linear", "T": 50})
    train(cfg, load("digits"), tmp_path / "hyb", progress=False)
    run = load_run(tmp_path / "hyb", device="cpu")
    assert isinstance(run.model, LearnedVarianceDenoiser) and run.model.net.config.out_channels == 2
    x = torch.randn(3, 1, 8, 8)
    t = torch.full((3,), 20.0)
    assert run.model(x, t).shape == x.shape and run.model.log_variance(x, t).shape == x.shape
    with pytest.raises(UserError, match="needs image data"):
        build_denoiser(cfg, load("toy:moons"))


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    """K micro-batches of B/K give the weights of one batch of B (up to the order of float sums)."""
    data = load("toy:moons")
    base = TrainConfig(network=TINY_MLP, batch_size=32, steps=15, sample_steps=2, warmup_steps=3,
                       schedule={"kind": "linear", "T": 50})
    train(base, data, tmp_path / "one", progress=False)
    train(base.replace(accumulate=4), data, tmp_path / "acc", progress=False)
    a = load_file(str(tmp_path / "one" / CHECKPOINT))
    b = load_file(str(tmp_path / "acc" / CHECKPOINT))
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    # and it is not the same as training on a quarter of the batch
    train(base.replace(batch_size=8), data, tmp_path / "small", progress=False)
    c = load_file(str(tmp_path / "small" / CHECKPOINT))
    assert any(not torch.allclose(a[k], c[k], rtol=1e-3, atol=1e-4) for k in a if a[k].is_floating_point())


def test_lr_schedule_closed_forms():
    import math

    cfg = TrainConfig(lr=1.0, warmup_steps=10, steps=110, lr_schedule="cosine")
    assert cfg.lr_at(0) == 0.1 and cfg.lr_at(9) == 1.0
    assert math.isclose(cfg.lr_at(60), 0.5, rel_tol=1e-12)  # half-way through the decay: (1 + cos(pi / 2)) / 2
    assert cfg.lr_at(110) == 0.0
    lin = cfg.replace(lr_schedule="linear")
    assert math.isclose(lin.lr_at(35), 0.75, rel_tol=1e-12)
    assert cfg.replace(lr_schedule="constant").lr_at(100) == 1.0


def test_bf16_autocast_trains_and_fp16_needs_cuda(tmp_path):
    from difflab.training.engine import autocast
    from difflab.utils.config import ConfigError

    with autocast("bf16", torch.device("cpu")):
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16  # the matmul really runs in bf16
    cfg = TrainConfig(network=TINY_MLP, batch_size=32, steps=40, sample_steps=2, warmup_steps=3, precision="bf16",
                      log_every=10, schedule={"kind": "linear", "T": 50})
    train(cfg, load("toy:moons"), tmp_path / "bf16", progress=False)
    ck = load_checkpoint(tmp_path / "bf16")
    assert all(v.dtype == torch.float32 for v in ck.modules["model"].values() if v.is_floating_point())  # fp32 master
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
            train(cfg.replace(precision="fp16"), load("toy:moons"), tmp_path / "fp16", progress=False)


def test_typed_config_sections_reject_unknown_values():
    from difflab.utils.config import ConfigError

    with pytest.raises(ConfigError, match="objective"):
        TrainConfig.from_dict({"objective": "nope"})
    with pytest.raises(ConfigError, match="schedule.kind"):
        TrainConfig.from_dict({"schedule": {"kind": "nope"}})
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_dict({"network": {"chanels": 8}})
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig.from_dict({"schedule": {"kind": "linear", "T": 1000, "bogus": 1}})
    cfg = TrainConfig.from_dict({"schedule": {"kind": "ve", "sigma_max": 20.0}, "network": {"kind": "mlp", "hidden": 8}})
    assert cfg.to_dict()["schedule"] == {"kind": "ve", "sigma_max": 20.0}
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_nan_halt_under_bf16(tmp_path, monkeypatch):
    from difflab.errors import TrainingDiverged
    from difflab.training import objectives

    real, calls = objectives.OBJECTIVES["simple"], {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("inf") if calls["n"] > 7 else out

    monkeypatch.setitem(objectives.OBJECTIVES, "simple", flaky)
    cfg = TrainConfig(network=TINY_MLP, batch_size=16, steps=20, checkpoint_every=5, sample_steps=2,
                      precision="bf16", schedule={"kind": "linear", "T": 50})
    with pytest.raises(TrainingDiverged, match="loss became inf at step 7"):
        train(cfg, load("toy:moons"), tmp_path / "r", progress=False)
    ck = load_checkpoint(tmp_path / "r")
    assert ck.step == 5 and all(torch.isfinite(v).all() for v in ck.modules["model"].values())


def test_a_non_finite_gradient_stops_before_a_checkpoint_keeps_it(tmp_path, monkeypatch):
    """A finite loss with an infinite gradient spoils the weights: the run stops at that step, not one later."""
    from difflab.errors import TrainingDiverged
    from difflab.training import objectives

    real, calls = objectives.OBJECTIVES["simple"], {"n": 0}

    class Blow(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * float("inf")

    def flaky(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return Blow.apply(out) if calls["n"] == 5 else out  # step 4 (0-based): finite loss, infinite gradient

    monkeypatch.setitem(objectives.OBJECTIVES, "simple", flaky)
    cfg = TrainConfig(network=TINY_MLP, batch_size=16, steps=20, checkpoint_every=5, sample_steps=2, grad_clip=0.0,
                      schedule={"kind": "linear", "T": 50})
    with pytest.raises(TrainingDiverged, match="grad_norm became (inf|nan) at step 4; no checkpoint"):
        train(cfg, load("toy:moons"), tmp_path / "r", progress=False)


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    cfg = TrainConfig(network=TINY_MLP, batch_size=16, steps=3, sample_steps=2, schedule={"kind": "linear", "T": 50})
    train(cfg, load("toy:moons"), tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError, match="does not match this model"):
        train(cfg.replace(steps=6, network=TINY_MLP | {"hidden": 16}), load("toy:moons"), tmp_path / "r",
              resume=True, progress=False)
