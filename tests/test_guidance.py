"""Guidance wrappers: exact reduction at zero scale, one batched CFG pass, classifier gradients, samplers, training."""
import math

import pytest
import torch

import difflab
from difflab import schedules
from difflab.data import Dataset, load
from difflab.guidance import ClassifierFreeGuidance, ClassifierGuidance, log_prob_grad, null_condition, to_schedule
from difflab.models.classifier import ClassifierConfig, NoisyClassifier
from difflab.training.classifier import ClassifierTrainConfig, load_classifier, train_classifier
from difflab.models.denoiser import Denoiser
from difflab.models.unet import UNet, UNetConfig
from difflab.training import TrainConfig
from difflab.training import DiffusionFamily, conditioning_for, fit
from difflab.training.engine import step_generator
from difflab.utils.random import BatchRandom

from conftest import TINY_UNET

K = 3


def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Give every parameter (including zero-initialised output layers) random values, so outputs depend on inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


def tiny_model(prediction: str = "eps", num_classes: int = K, dtype=torch.float32, **net) -> Denoiser:
    cfg = UNetConfig(**{**TINY_UNET, "channel_mult": (1, 2), "attention_levels": (1,)}, num_classes=num_classes, **net)
    unet = randomize(UNet(cfg)).to(dtype)
    return Denoiser(unet, schedules.get("linear", T=100), prediction).eval()


def tiny_classifier(dtype=torch.float32, seed: int = 1) -> NoisyClassifier:
    cfg = ClassifierConfig(num_classes=K, channels=8, channel_mult=(1, 2), groups=4, time_scale=10.0)
    return randomize(NoisyClassifier(cfg), seed).to(dtype)


def batch(n: int = 4, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 1, 8, 8, generator=g, dtype=dtype)
    t = torch.tensor([5.0, 30.0, 60.0, 90.0][:n], dtype=dtype)
    y = torch.arange(n) % K
    return x, t, {"y": y}


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_cfg_zero_scale_is_the_model(prediction):
    model = tiny_model(prediction)
    x, t, cond = batch()
    guided = ClassifierFreeGuidance(model, 0.0)
    with torch.no_grad():
        assert torch.equal(guided(x, t, cond), model(x, t, cond))
        assert torch.equal(guided.eps(x, t, cond), model.eps(x, t, cond))
    assert guided.schedule is model.schedule


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_cfg_one_batched_pass_equals_two_passes(prediction):
    model = tiny_model(prediction)
    x, t, cond = batch()
    w = 2.5
    guided = ClassifierFreeGuidance(model, w)
    calls = []
    model.net.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        out = guided(x, t, cond)
        assert calls == [2 * len(x)]  # one forward pass over [cond; uncond]
        eps_c = model.eps(x, t, cond)
        eps_u = model.eps(x, t, null_condition(cond, K))
        x0_c, x0_u = model(x, t, cond), model(x, t, null_condition(cond, K))
        expected_eps = (1 + w) * eps_c - w * eps_u  # Ho & Salimans 2022, eq. 6
        torch.testing.assert_close(guided.eps(x, t, cond), expected_eps, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out, (1 + w) * x0_c - w * x0_u, rtol=1e-4, atol=1e-4)  # same rule in x_0 space


def test_cfg_float32_batched_close_to_separate():
    model = tiny_model()
    x, t, cond = batch()
    with torch.no_grad():
        out = ClassifierFreeGuidance(model, 1.0)(x, t, cond)
        ref = 2 * model(x, t, cond) - model(x, t, null_condition(cond, K))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_null_condition_for_text():
    ctx = torch.randn(2, 5, 6)
    mask = torch.ones(2, 5, dtype=torch.bool)
    null = null_condition({"context": ctx, "context_mask": mask, "image": ctx}, 10)
    assert not null["context_mask"].any() and torch.equal(null["context"], torch.zeros_like(ctx))
    assert null["image"] is ctx  # image conditioning is not dropped


def test_classifier_guidance_zero_scale_is_the_model():
    model = tiny_model()
    x, t, cond = batch()
    with torch.no_grad():
        assert torch.equal(ClassifierGuidance(model, tiny_classifier(), 0.0)(x, t, cond), model(x, t, cond))


def test_classifier_gradient_matches_finite_differences():
    clf = tiny_classifier(torch.float64)
    x, t, cond = batch(2, torch.float64)
    grad, logp = log_prob_grad(clf, x, t, cond["y"])
    g = torch.Generator().manual_seed(5)
    for _ in range(3):
        v = torch.randn(x.shape, generator=g, dtype=torch.float64)
        h = 1e-5

        def f(z):
            return torch.log_softmax(clf(z, t), 1).gather(1, cond["y"].view(-1, 1)).squeeze(1)

        fd = (f(x + h * v) - f(x - h * v)) / (2 * h)
        torch.testing.assert_close((grad * v).flatten(1).sum(1), fd, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(logp, torch.log_softmax(clf(x, t), 1).gather(1, cond["y"].view(-1, 1)).squeeze(1))


def test_classifier_guidance_adds_scaled_gradient_to_the_score():
    model = tiny_model()
    clf = tiny_classifier()
    x, t, cond = batch()
    s = 3.0
    guided = ClassifierGuidance(model, clf, s)
    grad, _ = log_prob_grad(clf, x, t, cond["y"])
    with torch.no_grad():
        # Dhariwal & Nichol 2021: grad log p(x | y) = grad log p(x) + s grad log p(y | x)
        torch.testing.assert_close(guided.score(x, t, cond), model.score(x, t, cond) + s * grad, rtol=1e-4, atol=1e-4)
        a, sig = model.coefficients(t, x)
        torch.testing.assert_close(guided.eps(x, t, cond), model.eps(x, t, cond) - sig * s * grad, rtol=1e-4, atol=1e-4)


def test_classifier_guidance_label_routing():
    model = tiny_model()
    x, t, cond = batch()
    clf = tiny_classifier()
    with torch.no_grad():
        cond_out = ClassifierGuidance(model, clf, 0.0)(x, t, cond)
        uncond_out = ClassifierGuidance(model, clf, 0.0, conditional=False)(x, t, cond)
        assert torch.equal(cond_out, model(x, t, cond))
        assert torch.equal(uncond_out, model(x, t, {"y": torch.full((len(x),), K)}))
        plain = tiny_model(num_classes=0)  # an unconditional network never sees "y"
        assert torch.equal(ClassifierGuidance(plain, clf, 0.0)(x, t, cond), plain(x, t))
    with pytest.raises(ValueError, match="labels must lie"):
        ClassifierGuidance(plain, clf, 1.0)(x, t, {"y": torch.full((len(x),), K + 1)})
    with torch.no_grad():  # null-label rows are not guided: CFG may wrap classifier guidance too
        null = {"y": torch.full((len(x),), K)}
        assert torch.equal(ClassifierGuidance(model, clf, 5.0)(x, t, null), model(x, t, null))
        w, s = 1.5, 2.0
        outer = ClassifierFreeGuidance(ClassifierGuidance(model, clf, s), w)(x, t, cond)
        guided_c = ClassifierGuidance(model, clf, s)(x, t, cond)
        expected = (1 + w) * guided_c - w * model(x, t, null_condition(cond, K))
        torch.testing.assert_close(outer, expected, rtol=1e-4, atol=1e-4)


def test_schedule_mapping_preserves_log_snr():
    src, dst = schedules.get("linear", T=100), schedules.get("cosine", T=1000)
    t = torch.tensor([3.0, 40.0, 80.0], dtype=torch.float64)
    x = torch.ones(3, 1, 2, 2, dtype=torch.float64)
    xc, tc = to_schedule(x, t, src, dst)
    torch.testing.assert_close(dst.log_snr(tc), src.log_snr(t), rtol=1e-5, atol=1e-5)
    ratio = (xc / x).flatten(1)[:, 0]
    torch.testing.assert_close(ratio, dst.alpha(tc) / src.alpha(t))  # x / alpha (the scaled variable) is kept
    same_x, same_t = to_schedule(x, t, src, schedules.get("linear", T=100))
    assert same_x is x and same_t is t


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp_2m", "heun", "euler_maruyama"])
def test_guided_denoisers_work_with_samplers(sampler):
    model = tiny_model()
    clf = tiny_classifier()
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = {"y": torch.tensor([0, 1, 2])}
    for guided in (ClassifierFreeGuidance(model, 2.0), ClassifierGuidance(model, clf, 1.0),
                   ClassifierGuidance(ClassifierFreeGuidance(model, 1.0), clf, 1.0)):
        a = difflab.sample(guided, x_T, sampler=sampler, steps=4, cond=cond, generator=torch.Generator().manual_seed(1))
        b = difflab.sample(guided, x_T, sampler=sampler, steps=4, cond=cond, generator=torch.Generator().manual_seed(1))
        assert a.shape == x_T.shape and torch.isfinite(a).all()
        assert torch.equal(a, b)
    plain = difflab.sample(model, x_T, sampler=sampler, steps=4, cond=cond, generator=torch.Generator().manual_seed(1))
    zero = difflab.sample(ClassifierFreeGuidance(model, 0.0), x_T, sampler=sampler, steps=4, cond=cond,
                          generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain, zero)


def test_condition_dropout_rate():
    n = 20000
    data = Dataset(torch.zeros(n, 2), torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(0)),
                   "toy", [str(i) for i in range(10)])
    for p in (0.1, 0.3):
        cfg = TrainConfig(conditional=True, p_uncond=p)
        y = conditioning_for(cfg, data).draw(torch.arange(n), BatchRandom(step_generator(0, 0), 0, n, n), "cpu")["y"]
        rate = float((y == 10).float().mean())
        assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)
        kept = y != 10
        assert torch.equal(y[kept], data.y[kept])


@pytest.fixture(scope="module")
def digits_small():
    d = load("digits", "train")
    return Dataset(d.stored[:256], d.y[:256], d.spec, d.class_names)


def test_classifier_training_is_deterministic_and_round_trips(digits_small, tmp_path):
    cfg = ClassifierTrainConfig(steps=3, batch_size=16, network={"channels": 8, "groups": 4},
                                schedule={"kind": "linear", "T": 100})
    a, sched = train_classifier(cfg, digits_small, tmp_path / "a")
    b, _ = train_classifier(cfg, digits_small, None)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), k
    c, sched_c = load_classifier(tmp_path / "a")
    assert sched_c.config() == sched.config()
    x = digits_small.x[:4]
    assert torch.equal(a(x, torch.full((4,), 50.0)), c(x, torch.full((4,), 50.0)))


def test_load_classifier_rejects_a_diffusion_run(tmp_path):
    from difflab.errors import UserError

    (tmp_path / "config.json").write_text('{"format": "difflab-run-1"}')
    with pytest.raises(UserError, match="not a difflab classifier"):
        load_classifier(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        load_classifier(tmp_path / "missing")


# ---- command line ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    import json

    from difflab.cli.main import main

    d = tmp_path_factory.mktemp("cond")
    cfg = d / "cfg.json"
    cfg.write_text(json.dumps({"network": TINY_UNET, "batch_size": 16, "sample_steps": 2, "warmup_steps": 2,
                               "lr": 3e-3, "schedule": {"kind": "linear", "T": 100}, "p_uncond": 0.2}))
    assert main(["train", "--data", "digits", "--out", str(d / "run"), "--steps", "30", "--config", str(cfg),
                 "--conditional", "--quiet"]) == 0
    ccfg = d / "clf.json"
    ccfg.write_text(json.dumps({"network": {"channels": 8, "groups": 4}, "batch_size": 16}))
    assert main(["train-classifier", "--data", "digits", "--out", str(d / "clf"), "--run", str(d / "run"),
                 "--steps", "3", "--config", str(ccfg), "--quiet"]) == 0
    return d


def _cli_samples(out, run, *extra, num=6):
    """Images from ``difflab sample --run RUN ... --out OUT.npz`` (3 steps)."""
    import numpy as np

    from difflab.cli.main import main

    assert main(["sample", "--run", str(run), "--num", str(num), "--steps", "3", *map(str, extra), "--out", str(out),
                 "--overwrite"]) == 0
    with np.load(out) as f:
        return f["images"]


def test_cli_guided_sampling(cond_run, tmp_path):
    """--label, CFG's --guidance-scale and --classifier each change the samples; the same command repeats them.
    (The run's 30 steps are enough for its label to matter: a 3-step model's samples all saturate at 0 or 255.)"""
    import numpy as np

    run, clf = cond_run / "run", cond_run / "clf"
    for sampler in ("ddim", "dpmpp_2m"):
        draw = lambda name, *extra: _cli_samples(tmp_path / f"{name}.npz", run, "--sampler", sampler, *extra)  # noqa: E731
        base = draw("base", "--label", 7, "--guidance-scale", 3)
        assert base.shape == (6, 8, 8, 1) and base.dtype == np.uint8
        assert np.array_equal(base, draw("again", "--label", 7, "--guidance-scale", 3))
        for name, extra in (("label", ["--label", 3, "--guidance-scale", 3]), ("cfg", ["--label", 7]),
                            ("clf", ["--label", 7, "--guidance-scale", 3, "--classifier", clf, "--classifier-scale", 2])):
            other = draw(name, *extra)
            # by more than a rounding could move a pixel (one level of 255)
            assert np.abs(other.astype(int) - base).max() >= 3, (sampler, name)


def test_cli_guidance_interval(cond_run, tmp_path):
    """--guidance-interval LO HI: an interval holding every noise level gives full CFG's samples, one holding none
    gives the conditional model's, and one in between gives neither."""
    import numpy as np

    run = cond_run / "run"
    draw = lambda name, *extra: _cli_samples(tmp_path / f"{name}.npz", run, "--label", 7, *extra)  # noqa: E731
    full, plain = draw("full", "--guidance-scale", 3), draw("plain")
    assert np.array_equal(draw("all", "--guidance-scale", 3, "--guidance-interval", 0, 1e12), full)
    assert np.array_equal(draw("none", "--guidance-scale", 3, "--guidance-interval", 0, 1e-12), plain)
    part = draw("part", "--guidance-scale", 3, "--guidance-interval", 0, 1.0)
    assert not np.array_equal(part, full) and not np.array_equal(part, plain)


def test_cli_more_samples_than_a_batch(cond_run, tmp_path):
    """--num above --batch-size: every sample is written, and the first batch is what --num 3 alone draws."""
    import numpy as np

    run = cond_run / "run"
    for sampler in ("ddim", "ddpm"):  # ddpm also draws noise at every step from the same generator
        many = _cli_samples(tmp_path / "many.npz", run, "--sampler", sampler, "--label", 2, "--guidance-scale", 1,
                            "--batch-size", 3, num=7)
        few = _cli_samples(tmp_path / "few.npz", run, "--sampler", sampler, "--label", 2, "--guidance-scale", 1, num=3)
        assert many.shape == (7, 8, 8, 1)
        assert np.array_equal(many[:3], few) and not np.array_equal(many[3:6], many[:3])


def test_cli_train_clip(cond_run, tmp_path, capsys):
    """train-clip from the command line: the schedule of --run, a loadable model, no overwrite, CLIP-guided samples."""
    import json

    import numpy as np

    from difflab.cli.main import main
    from difflab.training.clip import load_clip
    from difflab.training import load_run

    run, out, conf = cond_run / "run", tmp_path / "clip", tmp_path / "clip.json"
    conf.write_text(json.dumps({"batch_size": 16, "clip": {"embed_dim": 8, "image": {"channels": 8, "groups": 4},
                                                           "text": {"dim": 16, "heads": 2}}}))
    args = ["train-clip", "--data", "digits", "--run", str(run), "--out", str(out), "--steps", "2",
            "--config", str(conf), "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"noisy CLIP written to {out}" in printed and "zero-shot accuracy on clean held-out images" in printed
    clip, sched = load_clip(out)
    assert sched.config() == load_run(run).model.schedule.config()
    assert clip.text_features(["a seven"]).shape == (1, 8)
    before = (out / "checkpoint.safetensors").read_bytes()
    assert main(args) == 2 and "already holds a checkpoint" in capsys.readouterr().err
    assert (out / "checkpoint.safetensors").read_bytes() == before
    plain = _cli_samples(tmp_path / "p.npz", run, "--label", 7)
    seven = _cli_samples(tmp_path / "c7.npz", run, "--label", 7, "--clip", out, "--prompt", "a seven")
    assert np.abs(seven.astype(int) - plain).max() >= 3


@pytest.mark.parametrize("extra, message", [
    (["--guidance-scale", "2"], "needs --label"),
    (["--prompt", "a seven"], "not text-conditional"),
    (["--classifier", "MISSING", "--label", "1"], "does not exist"),
    (["--label", "3", "--guidance-scale", "-1"], ">= 0"),
    (["--label", "10"], "has classes 0..9"),
    (["--label", "-1"], "has classes 0..9"),
    (["--label", "3", "--guidance-interval", "0", "1"], "needs --guidance-scale"),
    (["--label", "3", "--guidance-scale", "2", "--guidance-interval", "2", "1"], "needs 0 <= LO < HI"),
])
def test_cli_guidance_mistakes(cond_run, tmp_path, capsys, extra, message):
    from difflab.cli.main import main

    extra = [str(cond_run / "nope") if e == "MISSING" else e for e in extra]
    code = main(["sample", "--run", str(cond_run / "run"), "--num", "2", "--steps", "2",
                 "--out", str(tmp_path / "x.png"), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_train_classifier_refuses_to_overwrite(cond_run, capsys):
    from difflab.cli.main import main

    assert main(["train-classifier", "--data", "digits", "--out", str(cond_run / "clf"), "--steps", "1"]) == 2
    assert "already holds" in capsys.readouterr().err


# ---- a conditional model trained a short while -----------------------------------------------------------------
def _train_conditional(steps: int):
    d = load("digits", "train")
    net = {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [], "num_heads": 2,
           "groups": 8, "dropout": 0.0}
    cfg = TrainConfig(conditional=True, p_uncond=0.1, network=net, batch_size=64, lr=3e-3, warmup_steps=20,
                      schedule={"kind": "linear", "T": 100})
    torch.manual_seed(0)
    family = DiffusionFamily(cfg.replace(steps=steps), d)
    fit(family, len(d), family.cfg, None, progress=False)
    return family.model.eval()


def _label_accuracy(model, w: float, n: int = 50) -> float:
    from difflab.evaluation import extract

    y = torch.arange(n) % 10
    x_T = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = difflab.sample(ClassifierFreeGuidance(model, w), x_T, sampler="ddim", steps=10, cond={"y": y})
    logits = torch.as_tensor(extract(x.clamp(-1, 1), "digits").logits)
    return float((logits.argmax(1) == y).float().mean())


def test_short_conditional_training_beats_chance():
    """80 steps: with CFG the shipped digits classifier recognises the requested class far above chance (10%)."""
    model = _train_conditional(80)
    assert _label_accuracy(model, 2.0) > 0.3  # P(>= 16/50 correct | chance 0.1) < 1e-4


@pytest.mark.slow
def test_conditional_training_label_accuracy_grows_with_guidance():
    model = _train_conditional(300)
    plain, guided = _label_accuracy(model, 0.0, 200), _label_accuracy(model, 2.0, 200)
    assert plain > 0.25 and guided > max(plain, 0.7)


# ---- CLIP-style guidance ---------------------------------------------------------------------------------------
def tiny_clip(seed: int = 2):
    from difflab.models.clip import ClipConfig, NoisyClip

    cfg = ClipConfig(embed_dim=8, image={"channels": 8, "groups": 4, "time_scale": 10.0},
                     text={"dim": 16, "layers": 1, "heads": 2})
    return randomize(NoisyClip(cfg), seed, std=0.3)


def test_clip_loss_is_symmetric_infonce():
    from difflab.training.clip import clip_loss

    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))
    manual = -0.5 * (torch.log_softmax(logits, 1).diag().mean() + torch.log_softmax(logits, 0).diag().mean())
    torch.testing.assert_close(clip_loss(logits), manual)
    assert clip_loss(torch.eye(4) * 50) < 1e-6  # perfectly aligned pairs


def test_clip_similarity_gradient_and_guidance():
    from difflab.guidance import ClipGuidance, similarity_grad

    clip = tiny_clip().double()
    x, t, _ = batch(2, torch.float64)
    text = clip.text_features(["a thick seven"]).double()
    grad, sim = similarity_grad(clip, x, t, text)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    f = lambda z: (clip.image_features(z, t) * text).sum(1)  # noqa: E731
    fd = (f(x + 1e-5 * v) - f(x - 1e-5 * v)) / 2e-5
    torch.testing.assert_close((grad * v).flatten(1).sum(1), fd, rtol=1e-6, atol=1e-8)
    assert sim.abs().max() <= 1 + 1e-9  # cosine similarity
    model = tiny_model()
    x, t, cond = batch()
    clip = tiny_clip()
    with torch.no_grad():
        assert torch.equal(ClipGuidance(model, clip, "a seven", 0.0)(x, t, cond), model(x, t, cond))
        s = 2.0
        guided = ClipGuidance(model, clip, "a seven", s)
        g, _ = similarity_grad(clip, x, t, clip.text_features(["a seven"]))
        torch.testing.assert_close(guided.score(x, t, cond), model.score(x, t, cond) + s * g, rtol=1e-4, atol=1e-4)
    out = difflab.sample(guided, torch.randn(3, 1, 8, 8), sampler="dpmpp_2m", steps=3, cond={"y": torch.tensor([0, 1, 2])})
    assert out.shape == (3, 1, 8, 8) and torch.isfinite(out).all()


def test_clip_training_is_deterministic_and_cli(digits_small, tmp_path, capsys):
    from difflab.cli.main import main
    from difflab.training.clip import ClipTrainConfig, load_clip, train_clip

    cfg = ClipTrainConfig(steps=2, batch_size=16, schedule={"kind": "linear", "T": 100},
                          clip={"embed_dim": 8, "image": {"channels": 8, "groups": 4}, "text": {"dim": 16, "heads": 2}})
    a, _ = train_clip(cfg, digits_small, tmp_path / "clip")
    b, _ = train_clip(cfg, digits_small)
    for (k, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), k
    c, _ = load_clip(tmp_path / "clip")
    assert torch.equal(c.text_features(["a two"]), a.text_features(["a two"]))
    run = tmp_path / "run"
    conf = tmp_path / "cfg.json"
    conf.write_text('{"network": %s, "batch_size": 16, "sample_steps": 2, "schedule": {"kind": "linear", "T": 100}}'
                    % __import__("json").dumps(TINY_UNET))
    assert main(["train", "--data", "digits", "--out", str(run), "--steps", "2", "--config", str(conf), "--quiet"]) == 0
    assert main(["sample", "--run", str(run), "--num", "3", "--steps", "2", "--clip", str(tmp_path / "clip"),
                 "--prompt", "a thick seven", "--out", str(tmp_path / "c.png")]) == 0
    assert main(["sample", "--run", str(run), "--num", "3", "--steps", "2", "--clip", str(tmp_path / "clip"),
                 "--out", str(tmp_path / "c2.png")]) == 2
    assert "--clip needs --prompt" in capsys.readouterr().err
