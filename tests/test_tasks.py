"""Tasks on exact Gaussian denoisers: inpainting keeps known pixels, RePaint beats replacement on the analytic
conditional, SDEdit's end points, uncropping and panoramas, validation; every task with ddim, ddpm and dpmpp_2m."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from difflab import samplers, schedules
from difflab.models.gaussian_mixture import GaussianMixture
from difflab.tasks import inpaint, panorama, repaint_plan, sdedit, uncrop
from difflab.tasks.sdedit import budget, sdedit_grid

SAMPLERS = ["ddim", "ddpm", "dpmpp_2m"]


def smooth_gaussian(d: int, scale: float = 8.0) -> GaussianMixture:
    """N(0, S) with S_ij = 0.5 exp(-(i - j)^2 / scale) + 0.01 delta_ij: neighbouring coordinates strongly correlated."""
    i = torch.arange(d, dtype=torch.float64)
    cov = 0.5 * torch.exp(-(i[:, None] - i[None]) ** 2 / scale) + 0.01 * torch.eye(d, dtype=torch.float64)
    return GaussianMixture(torch.ones(1), torch.zeros(1, d, dtype=torch.float64), cov[None])


class ImageDenoiser:
    """An exact vector denoiser seen as one on [B, 1, h, w] images (row-major pixels)."""

    def __init__(self, gm: GaussianMixture, schedule, h: int, w: int):
        self.d, self.schedule, self.h, self.w = gm.denoiser(schedule), schedule, h, w

    def __call__(self, x, t, cond=None):
        return self.d(x.reshape(x.shape[0], -1), t).reshape(x.shape)


SCHED = schedules.get("linear", T=1000)


def conditional(gm: GaussianMixture, keep: torch.Tensor, xk: torch.Tensor):
    """Mean and covariance of the unknown coordinates given the known ones (Bishop 2006, eq. 2.81-2.82)."""
    S = gm.cov
    k, u = keep, ~keep
    gain = S[u][:, k] @ torch.linalg.inv(S[k][:, k])
    return gain @ xk, S[u][:, u] - gain @ S[k][:, u]


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("resample", [1, 3])
def test_inpaint_keeps_known_pixels_exactly(sampler, resample):
    gm = smooth_gaussian(6)
    x = gm.sample(8, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([1, 0, 1, 1, 0, 0], dtype=torch.float64)
    out = inpaint(gm.denoiser(SCHED), x, mask, sampler=sampler, steps=8, resample=resample, jump=2,
                  generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.equal(out[:, mask == 1], x[:, mask == 1])
    assert not torch.equal(out[:, mask == 0], x[:, mask == 0])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_empty_mask_is_the_sampler_itself(sampler):
    """Nothing known: inpainting is one call of the unchanged sampler from the same x_T."""
    gm = smooth_gaussian(4)
    D = gm.denoiser(SCHED)
    x = torch.zeros(16, 4, dtype=torch.float64)
    out = inpaint(D, x, torch.zeros(4), sampler=sampler, steps=6, resample=1, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    torch.randn(x.shape, generator=g, dtype=x.dtype)  # the known pixels' noise, drawn first
    x_T = SCHED.sample_prior(x.shape, generator=g, dtype=x.dtype)
    assert torch.equal(out, samplers.sample(D, x_T, sampler=sampler, steps=6, generator=g))


def test_repaint_beats_replacement_on_the_analytic_conditional():
    """Unknown coordinates given known ones, exact Gaussian denoiser, DDPM with 50 steps: RePaint (r = 5, j = 1)
    is closer to the closed-form conditional than replacement in mean and covariance, by more than 4 standard errors."""
    d, n = 6, 2000
    gm = smooth_gaussian(d)
    keep = torch.tensor([True, True, True, False, False, False])
    xk = torch.ones(3, dtype=torch.float64)
    mu, C = conditional(gm, keep, xk)
    image = torch.zeros(n, d, dtype=torch.float64)
    image[:, keep] = xk
    se_mean = math.sqrt(float(C.trace()) / n)  # std of |mean error| of n exact draws, roughly
    se_cov = math.sqrt(float((C.diag()[:, None] * C.diag()[None] + C**2).sum()) / n)
    errs = {}
    for r in (1, 5):
        out = inpaint(gm.denoiser(SCHED), image, keep.double(), sampler="ddpm", steps=50, resample=r, jump=1,
                      generator=torch.Generator().manual_seed(0))
        xu = out[:, ~keep]
        errs[r] = (float((xu.mean(0) - mu).norm()), float((torch.cov(xu.T) - C).norm()))
    (m1, c1), (m5, c5) = errs[1], errs[5]
    assert m5 + 4 * se_mean < m1, errs
    assert c5 + 4 * se_cov < c1, errs


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_default_inpaint_recovers_the_conditional_mean_that_replacement_misses(sampler):
    """N(0, [[1, .9], [.9, 1]]) with x_1 = 1 known: x_2 | x_1 ~ N(0.9, 0.19) (Bishop 2006, eq. 2.81-2.82). The default
    (RePaint, r = 10, j = 5, 50 steps, the known region re-noised from q(x_t | x_0)) lands within 0.1 of the mean
    and 0.06 of the variance; plain replacement (r = 1) is more than 0.25 off the mean (0.44 DDIM, 0.61 DDPM)."""
    n = 2000
    gm = GaussianMixture(torch.ones(1), torch.zeros(1, 2, dtype=torch.float64),
                         torch.tensor([[[1.0, 0.9], [0.9, 1.0]]], dtype=torch.float64))
    keep = torch.tensor([True, False])
    mu, C = conditional(gm, keep, torch.ones(1, dtype=torch.float64))
    assert torch.allclose(mu, torch.tensor([0.9], dtype=torch.float64)) and torch.allclose(C, torch.tensor([[0.19]], dtype=torch.float64))
    image = torch.zeros(n, 2, dtype=torch.float64)
    image[:, 0] = 1.0

    def unknown(**kw):
        out = inpaint(gm.denoiser(SCHED), image, keep.double(), sampler=sampler, generator=torch.Generator().manual_seed(0), **kw)
        assert torch.equal(out[:, 0], image[:, 0])
        return out[:, 1]

    default, plain = unknown(), unknown(resample=1)
    assert abs(float(default.mean()) - 0.9) < 0.1 and abs(float(default.var()) - 0.19) < 0.06, (default.mean(), default.var())
    assert abs(float(plain.mean()) - 0.9) > 0.25, plain.mean()


def test_known_region_is_a_fresh_draw_of_q_xt_given_x0_at_every_call():
    """RePaint eq. 8: whatever the state holds there, the network sees alpha_t x_0 + sigma_t eps with a new eps per call."""
    from difflab.tasks.inpaint import Known

    seen = []

    class Spy:
        schedule = SCHED

        def __call__(self, x, t, cond=None):
            seen.append(x.clone())
            return torch.zeros_like(x)

    x0 = torch.full((20000, 2), 0.5, dtype=torch.float64)
    mask = torch.tensor([1.0, 0.0], dtype=torch.float64)
    known = Known(Spy(), x0, mask, torch.Generator().manual_seed(0))
    state = torch.full_like(x0, 7.0)
    t = torch.full((x0.shape[0],), 600.0, dtype=torch.float64)
    d1, _ = known(state, t), known(state, t)
    a, s = (float(v[0]) for v in SCHED.alpha_sigma(t[:1]))
    k1, k2 = seen[0][:, 0], seen[1][:, 0]
    assert abs(float(k1.mean()) - 0.5 * a) < 4 * s / math.sqrt(len(k1)) and abs(float(k1.std()) / s - 1) < 0.03
    assert abs(float(torch.corrcoef(torch.stack([k1, k2]))[0, 1])) < 0.03  # a new eps each call
    assert torch.equal(seen[0][:, 1], state[:, 1]) and torch.equal(d1[:, 0], x0[:, 0]) and torch.equal(d1[:, 1], torch.zeros(len(x0), dtype=torch.float64))


def test_repaint_plan():
    assert repaint_plan(4, jump=2, resample=1) == [(0, 4, False)]
    assert repaint_plan(5, jump=2, resample=2) == [(0, 2, True), (0, 2, False), (2, 4, True), (2, 4, False),
                                                   (4, 5, False)]
    with pytest.raises(ValueError, match="jump"):
        repaint_plan(5, jump=0, resample=2)
    with pytest.raises(ValueError, match="resample"):
        repaint_plan(5, jump=1, resample=0)


def test_inpaint_validation():
    gm = smooth_gaussian(4)
    D, x = gm.denoiser(SCHED), torch.zeros(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"mask of shape \(3,\) does not fit the image of shape \(2, 4\)"):
        inpaint(D, x, torch.ones(3))
    with pytest.raises(ValueError, match="larger than the image"):
        inpaint(D, x, torch.ones(3, 2, 4))
    with pytest.raises(ValueError, match="0 \\(generate\\) or 1 \\(keep\\)"):
        inpaint(D, x, torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="batch dimension"):
        inpaint(D, torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="unknown sampler"):
        inpaint(D, x, torch.ones(4), sampler="nope")


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sdedit_end_points(sampler):
    gm = smooth_gaussian(4)
    D = gm.denoiser(SCHED)
    guide = gm.sample(8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sdedit(D, guide, 0.0, sampler=sampler), guide)
    other = guide + 3.0
    a = sdedit(D, guide, 1.0, sampler=sampler, steps=5, generator=torch.Generator().manual_seed(2))
    b = sdedit(D, other, 1.0, sampler=sampler, steps=5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)  # independent of the guide
    x_T = SCHED.sample_prior(guide.shape, generator=torch.Generator().manual_seed(2), dtype=guide.dtype)
    g = torch.Generator().manual_seed(2)
    SCHED.sample_prior(guide.shape, generator=g, dtype=guide.dtype)
    assert torch.equal(a, samplers.sample(D, x_T, sampler=sampler, steps=5, generator=g))  # = plain sampling
    c = sdedit(D, guide, 0.3, sampler=sampler, steps=10, generator=torch.Generator().manual_seed(2))
    assert 0 < float((c - guide).norm()) < float((a - guide).norm())


def test_sdedit_budget_and_start_level():
    assert budget(50, 0.5) == 25 and budget(10, 0.3) == 3 and budget(50, 0.01) == 1  # never 0 steps
    for sampler in SAMPLERS:
        sig = sdedit_grid(SimpleNamespace(schedule=SCHED), sampler, 20, 0.4)
        assert float(sig[-1]) == 0 and len(sig) - 1 == samplers.n_levels(sampler, 8)
        t0 = round(0.4 * SCHED.t_max)
        assert float(sig[0]) == pytest.approx(float(SCHED.sigma_ve(torch.tensor(float(t0), dtype=torch.float64))))
    gm = smooth_gaussian(4)
    guide = torch.zeros(3, 4, dtype=torch.float64)
    tiny = sdedit(gm.denoiser(SCHED), guide + 2.0, 0.01, steps=50, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(tiny, guide + 2.0)  # one step at t0 = 0.01 T was run
    with pytest.raises(ValueError, match="strength must lie in"):
        sdedit(gm.denoiser(SCHED), guide, 1.5)


def test_sdedit_mask_keeps_pixels():
    gm = smooth_gaussian(4)
    guide = gm.sample(4, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    out = sdedit(gm.denoiser(SCHED), guide, 0.6, mask=mask, steps=10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:, :2], guide[:, :2]) and not torch.equal(out[:, 2:], guide[:, 2:])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_uncrop_and_panorama(sampler):
    h, w = 3, 4
    gm = smooth_gaussian(h * w, scale=2.0)
    model = ImageDenoiser(gm, SCHED, h, w)
    img = gm.sample(2, generator=torch.Generator().manual_seed(0)).reshape(2, 1, h, w)
    out = uncrop(model, img, left=1, right=2, top=1, sampler=sampler, steps=5,
                 generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 1, h + 1, w + 3)
    assert torch.equal(out[..., 1:1 + h, 1:1 + w], img) and torch.isfinite(out).all()
    strip = panorama(model, img, 11, sampler=sampler, steps=5, generator=torch.Generator().manual_seed(1))
    assert strip.shape == (2, 1, h, 11) and torch.equal(strip[..., :w], img)
    assert float(strip[..., w:].abs().sum()) > 0


def test_uncrop_conditions_on_the_overlap():
    """One new column right of a 3x4 image of a smooth field: the window's inpainting is the exact conditional,
    so the new column's sample mean given the image matches the closed form (the overlap conditioned, not blended)."""
    h, w, n = 3, 4, 1000
    gm = smooth_gaussian(h * w, scale=2.0)
    model = ImageDenoiser(gm, SCHED, h, w)
    one = gm.sample(1, generator=torch.Generator().manual_seed(4)).reshape(1, 1, h, w)
    out = uncrop(model, one.expand(n, 1, h, w), right=1, sampler="ddpm", steps=20, resample=5, jump=1,
                 generator=torch.Generator().manual_seed(5))
    # the window holds image columns 1..3 and the new column: compare with its exact conditional
    keep = torch.ones(h, w, dtype=torch.bool)
    keep[:, -1] = False
    mu, C = conditional(gm, keep.flatten(), one[0, 0, :, 1:].flatten())
    err = float((out[:, 0, :, -1].mean(0) - mu).norm())
    prior_err = float(mu.norm())  # what an unconditioned (or blended) column's mean 0 would miss by
    assert err < 0.5 * prior_err, (err, prior_err)


def test_uncrop_validation():
    gm = smooth_gaussian(12)
    model = ImageDenoiser(gm, SCHED, 3, 4)
    img = torch.zeros(1, 1, 3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="right must be"):
        uncrop(model, img, right=-1)
    with pytest.raises(ValueError, match="width must be"):
        panorama(model, img, 3)
    with pytest.raises(ValueError, match="smaller than the model"):
        uncrop(model, img, right=1, size=(4, 4))


# ---- the command line: difflab edit on an 8x8 digits run ----

@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    import json

    from difflab.cli.main import main

    d = tmp_path_factory.mktemp("edit")
    cfg = d / "cfg.json"
    cfg.write_text(json.dumps({"network": {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                           "attention_levels": [], "num_heads": 2, "groups": 4, "dropout": 0.0},
                               "batch_size": 16, "sample_steps": 2, "schedule": {"kind": "linear", "T": 100}}))
    assert main(["train", "--data", "digits", "--out", str(d / "run"), "--steps", "3", "--config", str(cfg),
                 "--quiet"]) == 0
    return d / "run"


def _png(path, array):
    from PIL import Image

    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def edit(*args):
    from difflab.cli.main import main

    return main(["edit", *[str(a) for a in args]])


def test_cli_edit_tasks_on_digits(digits_run, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = 255  # white = keep the left half
    src = tmp_path / "in"
    src.mkdir()
    _png(src / "a.png", img)
    _png(src / "b.png", img[::-1])
    _png(tmp_path / "mask.png", mask)
    assert edit("inpaint", "--run", digits_run, "--input", src / "a.png", "--mask", tmp_path / "mask.png",
                "--out", tmp_path / "filled.png", "--steps", 3, "--resample", 2, "--jump", 1) == 0
    out = np.asarray(Image.open(tmp_path / "filled.png"))
    assert out.shape == (8, 8) and np.array_equal(out[:, :4], img[:, :4])
    assert edit("inpaint", "--run", digits_run, "--input", src, "--mask", tmp_path / "mask.png",
                "--out", tmp_path / "outdir", "--steps", 2, "--sampler", "dpmpp_2m") == 0
    assert sorted(p.name for p in (tmp_path / "outdir").iterdir()) == ["a.png", "b.png"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "outdir" / "b.png"))[:, :4], img[::-1][:, :4])
    assert edit("sdedit", "--run", digits_run, "--input", src / "a.png", "--strength", 0,
                "--out", tmp_path / "same.png") == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "same.png")), img)
    assert edit("uncrop", "--run", digits_run, "--input", src / "a.png", "--right", 4, "--top", 2,
                "--out", tmp_path / "wide.png", "--steps", 2, "--sampler", "ddpm") == 0
    wide = np.asarray(Image.open(tmp_path / "wide.png"))
    assert wide.shape == (10, 12) and np.array_equal(wide[2:, :8], img)
    assert edit("panorama", "--run", digits_run, "--input", src / "a.png", "--width", 20,
                "--out", tmp_path / "strip.png", "--steps", 2) == 0
    assert np.asarray(Image.open(tmp_path / "strip.png")).shape == (8, 20)


def test_cli_edit_refuses_bad_inputs_in_one_line(digits_run, tmp_path, capsys):
    _png(tmp_path / "big.png", np.zeros((9, 8)))
    _png(tmp_path / "img.png", np.zeros((8, 8)))
    _png(tmp_path / "mask.png", np.zeros((8, 6)))
    cases = [
        (("inpaint", "--input", tmp_path / "img.png", "--mask", tmp_path / "mask.png"),
         "mask.png is 8x6 but the image"),
        (("inpaint", "--input", tmp_path / "big.png", "--mask", tmp_path / "mask.png"),
         "big.png is 9x8 but the run"),
        (("sdedit", "--input", tmp_path / "img.png", "--strength", 2), "--strength must lie in [0, 1]"),
        (("panorama", "--input", tmp_path / "img.png", "--width", 4), "width must be a whole number"),
        (("inpaint", "--input", tmp_path / "none.png", "--mask", tmp_path / "mask.png"), "no such file"),
    ]
    for (task, *rest), message in cases:
        assert edit(task, "--run", digits_run, *rest, "--out", tmp_path / "o.png") == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


# ---- super-resolution (SR3): a conditioning kind plus --task superres ----

SR_NET = {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [], "num_heads": 2,
          "groups": 4, "dropout": 0.0}


def _train_sr(directory, steps):
    import json

    from difflab.cli.main import main

    cfg = directory / "cfg.json"
    cfg.write_text(json.dumps({"network": SR_NET, "batch_size": 64, "sample_steps": 2, "lr": 3e-3,
                               "warmup_steps": 10, "schedule": {"kind": "linear", "T": 100}}))
    assert main(["train", "--data", "digits", "--task", "superres", "--scale", "2", "--out", str(directory / "sr"),
                 "--steps", str(steps), "--config", str(cfg), "--quiet"]) == 0
    return directory / "sr"


def test_superres_conditioning_and_cli(tmp_path, capsys):
    """A 3-step SR run: its condition is the bicubic upsampling of the 2x2 block means; edit superres maps
    4x4 PNGs to 8x8 ones; the conditioning is rebuilt from the run; a wrong size and a non-SR run are one line."""
    import json

    from PIL import Image

    from difflab import data
    from difflab.training import load_run
    from difflab.training.conditioning import downsampled, upsampled

    run_dir = _train_sr(tmp_path, 3)
    loaded = load_run(run_dir, device="cpu")
    assert json.loads((run_dir / "config.json").read_text())["train"]["task"] == "superres"
    c = loaded.conditioning
    assert (c.kind, c.scale, c.channels) == ("superres", 2, 1)
    x = data.load("digits").batch(torch.arange(4))
    low = (x[:, :, 0::2, 0::2] + x[:, :, 1::2, 0::2] + x[:, :, 0::2, 1::2] + x[:, :, 1::2, 1::2]) / 4
    assert torch.allclose(downsampled(x, 2), low, atol=1e-6)
    assert torch.equal(c.of_low(low, "cpu")["image"], upsampled(low, 2)) and upsampled(low, 2).shape == x.shape
    _png(tmp_path / "small.png", np.full((4, 4), 200))
    assert edit("superres", "--run", run_dir, "--input", tmp_path / "small.png", "--out", tmp_path / "big.png",
                "--steps", 2) == 0
    assert np.asarray(Image.open(tmp_path / "big.png")).shape == (8, 8)
    assert edit("superres", "--run", run_dir, "--input", tmp_path / "big.png", "--out", tmp_path / "o.png") == 2
    assert "big.png is 8x8 but the run" in capsys.readouterr().err
    assert edit("inpaint", "--run", run_dir, "--input", tmp_path / "big.png", "--mask", tmp_path / "big.png",
                "--out", tmp_path / "o.png") == 2
    assert "(superres conditioning) does not support edit inpaint; it supports superres" in capsys.readouterr().err


def test_superres_refused_for_a_scale_that_does_not_divide(tmp_path, capsys):
    from difflab.cli.main import main

    assert main(["train", "--data", "digits", "--task", "superres", "--scale", "3", "--out", str(tmp_path / "r"),
                 "--steps", "1", "--quiet"]) == 2
    assert "--scale 3 does not divide the 8x8 images of digits" in capsys.readouterr().err


@pytest.mark.slow
def test_superres_output_downsampled_matches_the_input(tmp_path):
    """After 150 steps on digits (about a minute), SR samples of held-out 4x4 inputs, averaged back to 4x4, are
    within 0.2 RMSE of their input (data range 2; bicubic upsampling, clamped, gives 0.11) and 3x closer to it than to other inputs'."""
    from difflab import data, tasks
    from difflab.models.denoiser import Clamped
    from difflab.training import load_run
    from difflab.training.conditioning import downsampled

    loaded = load_run(_train_sr(tmp_path, 150), device="cpu")
    low = downsampled(data.load("digits", "test").batch(torch.arange(100)), 2)
    for sampler in SAMPLERS:
        out = tasks.superres(Clamped(loaded.model), low, loaded.conditioning, sampler=sampler, steps=20,
                             generator=torch.Generator().manual_seed(0))
        back = downsampled(out, 2)
        err = float((back - low).pow(2).mean().sqrt())
        other = float((back - low.roll(1, 0)).pow(2).mean().sqrt())
        assert err < 0.2 and 3 * err < other, (sampler, err, other)


# ---- mask-conditioned inpainting (Palette): random box / strokes / half masks ----

def test_training_masks_kinds_and_determinism():
    from difflab.training.conditioning import training_masks
    from difflab.utils.random import BatchRandom

    full = training_masks(BatchRandom(torch.Generator().manual_seed(0), 0, 300, 300), 300, 8, 8)
    assert full.shape == (300, 1, 8, 8) and set(full.unique().tolist()) <= {0.0, 1.0}
    holes = (1 - full).flatten(1).sum(1)
    assert bool((holes > 0).all()) and bool((holes < 64).all())  # something to fill and something kept
    assert int((holes == 32).sum()) >= 50  # the halves (a third of the rows) remove exactly 32 pixels
    part = training_masks(BatchRandom(torch.Generator().manual_seed(0), 100, 200, 300), 100, 8, 8)
    assert torch.equal(part, full[100:200])  # a part of the batch draws its own rows of the whole batch's masks


def test_mask_conditioned_run_from_the_command_line(tmp_path):
    import json

    from PIL import Image

    from difflab.cli.main import main
    from difflab.training import load_run

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"network": SR_NET, "batch_size": 16, "sample_steps": 2,
                               "schedule": {"kind": "linear", "T": 100}}))
    assert main(["train", "--data", "digits", "--task", "inpaint", "--out", str(tmp_path / "pal"), "--steps", "2",
                 "--config", str(cfg), "--quiet"]) == 0
    loaded = load_run(tmp_path / "pal", device="cpu")
    assert loaded.conditioning.kind == "inpaint" and loaded.model.net.config.cond_channels == 2
    img = np.random.default_rng(1).integers(0, 256, (8, 8), dtype=np.uint8)
    mask = np.full((8, 8), 255, np.uint8)
    mask[2:6, 2:6] = 0
    _png(tmp_path / "a.png", img)
    _png(tmp_path / "m.png", mask)
    assert edit("inpaint", "--run", tmp_path / "pal", "--input", tmp_path / "a.png", "--mask", tmp_path / "m.png",
                "--out", tmp_path / "o.png", "--steps", 2) == 0
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert np.array_equal(out[mask == 255], img[mask == 255])


# ---- colorization: a seeded colour digits set and a grayscale-conditioned run ----

def test_color_digits_and_colorize_run(tmp_path, capsys):
    import json

    from PIL import Image

    from difflab import data
    from difflab.cli.main import main
    from difflab.training import load_run
    from difflab.training.conditioning import grayscale

    gray, col = data.load("digits"), data.load("color:digits")
    assert col.shape == (3, 8, 8) and torch.equal(col.y, gray.y)
    assert torch.equal(col.stored, data.load("color:digits").stored)  # deterministic
    levels = torch.tensor([0, 255, 128], dtype=torch.uint8).reshape(1, 1, 1, 3).expand(5, 1, 1, 3)
    out = data.colored(levels.contiguous()).float()  # per image: [bg, fg, bg + (fg - bg) 128/255] in each channel
    bg, fg = out[..., 0], out[..., 1]
    assert bool((bg < 64).all() and (fg >= 96).all())
    assert torch.equal(out[..., 2], (bg + (fg - bg) * 128 / 255).round())
    assert torch.equal(col.stored, data.colored(gray.stored))  # the split coloured by colored()
    rgb = torch.tensor([[[[1.0]], [[0.0]], [[-1.0]]]])
    assert torch.allclose(grayscale(rgb), torch.tensor(0.299 - 0.114).reshape(1, 1, 1, 1))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"network": SR_NET, "batch_size": 16, "sample_steps": 2,
                               "schedule": {"kind": "linear", "T": 100}}))
    assert main(["train", "--data", "color:digits", "--task", "colorize", "--out", str(tmp_path / "col"),
                 "--steps", "2", "--config", str(cfg), "--quiet"]) == 0
    loaded = load_run(tmp_path / "col", device="cpu")
    assert loaded.conditioning.kind == "colorize" and loaded.model.net.config.cond_channels == 1
    _png(tmp_path / "g.png", np.full((8, 8), 128))
    assert edit("colorize", "--run", tmp_path / "col", "--input", tmp_path / "g.png", "--out", tmp_path / "c.png",
                "--steps", 2) == 0
    assert np.asarray(Image.open(tmp_path / "c.png")).shape == (8, 8, 3)
    assert main(["train", "--data", "digits", "--task", "colorize", "--out", str(tmp_path / "bad"), "--steps", "1",
                 "--quiet"]) == 2
    assert "needs colour images; digits has shape [1, 8, 8] (try color:digits)" in capsys.readouterr().err


def test_noise_conditioning_augmentation(tmp_path, capsys):
    """Ho et al. 2022: the condition is [cos(pi s/2) up + sin(pi s/2) z, s]; s ~ U(0, 1) per training example,
    drawn through the batch's BatchRandom (a batch part sees its rows of the whole batch); chosen at sampling."""
    import json

    from PIL import Image

    from difflab import data
    from difflab.cli.main import main
    from difflab.training import load_run
    from difflab.training.conditioning import SuperResConditioning, downsampled, upsampled
    from difflab.utils.random import BatchRandom

    digits = data.load("digits")
    c = SuperResConditioning(2, 1, digits, augment=True)
    assert c.network_options() == {"cond_channels": 2}
    idx = torch.arange(40)
    whole = c.draw(idx, BatchRandom(torch.Generator().manual_seed(0), 0, 40, 40), "cpu")["image"]
    part = c.draw(idx[10:30], BatchRandom(torch.Generator().manual_seed(0), 10, 30, 40), "cpu")["image"]
    assert whole.shape == (40, 2, 8, 8) and torch.equal(part, whole[10:30])
    s = whole[:, 1, 0, 0]
    assert bool(((s >= 0) & (s < 1)).all()) and bool((whole[:, 1] == s[:, None, None]).all())
    up = upsampled(downsampled(digits.batch(idx), 2), 2)
    z = (whole[:, :1] - torch.cos(0.5 * torch.pi * s)[:, None, None, None] * up) / torch.sin(0.5 * torch.pi * s)[:, None, None, None]
    assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1) < 0.1  # the rest is standard normal noise
    low = downsampled(digits.batch(idx[:3]), 2)
    assert torch.equal(c.of_low(low, "cpu")["image"][:, :1], upsampled(low, 2))  # level 0: no noise
    assert bool((c.of_low(low, "cpu", level=0.3, generator=torch.Generator())["image"][:, 1] == 0.3).all())
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"network": SR_NET, "batch_size": 16, "sample_steps": 2,
                               "schedule": {"kind": "linear", "T": 100}}))
    assert main(["train", "--data", "digits", "--task", "superres", "--noise-aug", "--out", str(tmp_path / "sr"),
                 "--steps", "2", "--config", str(cfg), "--quiet"]) == 0
    loaded = load_run(tmp_path / "sr", device="cpu")
    assert loaded.conditioning.augment and loaded.model.net.config.cond_channels == 2
    _png(tmp_path / "small.png", np.full((4, 4), 90))
    assert edit("superres", "--run", tmp_path / "sr", "--input", tmp_path / "small.png", "--aug-level", 0.1,
                "--out", tmp_path / "big.png", "--steps", 2) == 0
    assert np.asarray(Image.open(tmp_path / "big.png")).shape == (8, 8)
    assert edit("superres", "--run", tmp_path / "sr", "--input", tmp_path / "small.png", "--aug-level", 2,
                "--out", tmp_path / "big.png", "--overwrite") == 2
    assert "--aug-level must lie in [0, 1]" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--noise-aug", "--out", str(tmp_path / "x"), "--steps", "1",
                 "--quiet"]) == 2
    assert "noise_aug needs task='superres'" in capsys.readouterr().err


def test_conditioned_tasks_with_every_sampler(tmp_path):
    """superres, colorize and mask-conditioned inpainting on 1-step runs with ddim, ddpm and dpmpp_2m: the output
    shape, a seed fixes the output, and the mask-conditioned fill keeps the known pixels exactly."""
    import json

    from difflab import data, tasks
    from difflab.cli.main import main
    from difflab.models.denoiser import Clamped
    from difflab.training import load_run
    from difflab.training.conditioning import downsampled, grayscale

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"network": {**SR_NET, "channels": 8}, "batch_size": 8, "sample_steps": 1,
                               "schedule": {"kind": "linear", "T": 100}}))
    runs = {}
    for task, spec in (("superres", "digits"), ("colorize", "color:digits"), ("inpaint", "digits")):
        assert main(["train", "--data", spec, "--task", task, "--out", str(tmp_path / task), "--steps", "1",
                     "--config", str(cfg), "--quiet"]) == 0
        runs[task] = load_run(tmp_path / task, device="cpu")
    x = data.load("digits", "test").batch(torch.arange(3))
    rgb = data.load("color:digits", "test").batch(torch.arange(3))
    mask = torch.ones(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 0
    for sampler in SAMPLERS:
        def run(task):
            r, g = runs[task], torch.Generator().manual_seed(3)
            opts = dict(sampler=sampler, steps=2, generator=g)
            if task == "superres":
                return tasks.superres(Clamped(r.model), downsampled(x, 2), r.conditioning, **opts)
            if task == "colorize":
                return tasks.colorize(Clamped(r.model), grayscale(rgb), r.conditioning, **opts)
            return tasks.inpaint_conditioned(Clamped(r.model), x, mask, r.conditioning, **opts)

        for task, shape in (("superres", (3, 1, 8, 8)), ("colorize", (3, 3, 8, 8)), ("inpaint", (3, 1, 8, 8))):
            y = run(task)
            assert y.shape == shape and bool(torch.isfinite(y).all()), (task, sampler)
            assert torch.equal(run(task), y), (task, sampler)
        filled = run("inpaint")
        assert torch.equal(filled * mask, x * mask)
