"""Cascaded diffusion (Ho et al. 2022): the blur + noise conditioning augmentation, cascade folders made by
``difflab cascade`` and sampled by ``difflab sample`` (output size = the last stage's), and one-line errors."""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from difflab.cli.main import main
from difflab.training.conditioning import SuperResConditioning, downsampled, gaussian_blur, upsampled
from difflab.utils.random import BatchRandom

NET = {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [], "num_heads": 2,
       "groups": 4, "dropout": 0.0}


# ---- the augmentation ----

def test_blur_level_zero_is_the_identity_and_preserves_constants():
    x = torch.randn(3, 2, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gaussian_blur(x, torch.zeros(3)), x)
    y = gaussian_blur(x, torch.tensor([0.0, 0.7, 1.5]))
    assert torch.equal(y[0], x[0]) and not torch.allclose(y[1], x[1])  # per-example std; 0 untouched
    c = torch.full((2, 1, 4, 4), 0.3, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(c, torch.tensor([0.5, 2.0])), c, rtol=0, atol=1e-15)  # weights sum to 1


def test_blur_of_an_impulse_has_the_kernel_variance():
    """An interior impulse blurred by std s: its spread along each axis is s^2 up to the taps cut at 3 s (the
    omitted tail mass times 9 s^2 or more, < 0.03 s^2 relative), and the blur is separable (rank one)."""
    s = 1.0
    x = torch.zeros(1, 1, 21, 21, dtype=torch.float64)
    x[..., 10, 10] = 1
    y = gaussian_blur(x, torch.tensor([s]))[0, 0]
    k = torch.arange(21, dtype=torch.float64) - 10
    row = y.sum(0)
    assert math.isclose(float(row.sum()), 1.0, rel_tol=1e-12)
    assert abs(float((row * k**2).sum()) - s**2) < 0.03 * s**2
    assert torch.allclose(y, torch.outer(y.sum(1), y.sum(0)), atol=1e-14)


def test_augmented_condition_blurs_then_noises_and_level_zero_is_plain_sr3():
    from difflab import data

    digits = data.load("digits")
    c = SuperResConditioning(2, 1, digits, augment=True, blur=0.8)
    idx = torch.arange(32)
    low = downsampled(digits.batch(idx), 2)
    # level 0 at sampling: the plain SR3 condition (no blur, no noise) plus a zero level channel
    cond = c.of_low(low, "cpu", level=0.0)["image"]
    assert torch.equal(cond[:, :1], upsampled(low, 2)) and bool((cond[:, 1] == 0).all())
    # training: cos(pi s/2) up(blur(low, 0.8 s)) + sin(pi s/2) z, so the residual is the standard normal z
    cond = c.draw(idx, BatchRandom(torch.Generator().manual_seed(0), 0, 32, 32), "cpu")["image"]
    s = cond[:, 1, 0, 0]
    up = upsampled(gaussian_blur(low, 0.8 * s), 2)
    a, b = torch.cos(0.5 * torch.pi * s)[:, None, None, None], torch.sin(0.5 * torch.pi * s)[:, None, None, None]
    z = (cond[:, :1] - a * up) / b
    assert abs(float(z.mean())) < 0.1 and abs(float(z.std()) - 1) < 0.1
    z_unblurred = (cond[:, :1] - a * upsampled(low, 2)) / b
    assert float((z_unblurred - z).abs().max()) > 0.1  # the blur is really applied
    # a run saved before the blur option rebuilds without blur; one with it keeps its std
    from difflab.training.conditioning import conditioning_of_run

    rc = {"shape": [1, 8, 8], "train": {"task": "superres", "scale": 2, "noise_aug": True}}
    assert conditioning_of_run(rc).blur == 0.0
    rc["train"]["aug_blur"] = 0.3
    assert conditioning_of_run(rc).blur == 0.3


# ---- cascade folders ----

def _folder(path, images):
    from PIL import Image

    path.mkdir()
    for i, a in enumerate(images):
        Image.fromarray(a).save(path / f"{i:04d}.png")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 4x4 base run, a digits x2 SR run with --noise-aug (4 -> 8) and an 8 -> 16 SR run; 1 step each."""
    from difflab import data

    d = tmp_path_factory.mktemp("cascade")
    cfg = d / "cfg.json"
    cfg.write_text(json.dumps({"network": NET, "batch_size": 8, "sample_steps": 1,
                               "schedule": {"kind": "linear", "T": 100}}))
    x = data.load("digits").stored[:40]
    small = torch.nn.functional.avg_pool2d(x.float(), 2).round().to(torch.uint8)[:, 0].numpy()
    big = torch.nn.functional.interpolate(x.float(), scale_factor=2).to(torch.uint8)[:, 0].numpy()
    _folder(d / "small", small)
    _folder(d / "big", big)
    common = ["--steps", "1", "--config", str(cfg), "--quiet"]
    assert main(["train", "--data", str(d / "small"), "--image-size", "4", "--out", str(d / "base"), *common]) == 0
    assert main(["train", "--data", "digits", "--task", "superres", "--noise-aug", "--out", str(d / "sr1"),
                 *common]) == 0
    assert main(["train", "--data", str(d / "big"), "--image-size", "16", "--task", "superres", "--out",
                 str(d / "sr2"), *common]) == 0
    return d


def test_cascade_round_trips_through_sample(runs, tmp_path, capsys):
    from difflab.training.cascade import load_cascade

    # assembled from copies: the cascade folder stands alone once the source runs are gone
    src = tmp_path / "src"
    for name in ("base", "sr1", "sr2"):
        shutil.copytree(runs / name, src / name)
    out = tmp_path / "c"
    assert main(["cascade", "--base", str(src / "base"), "--stage", str(src / "sr1"), "--stage", str(src / "sr2"),
                 "--out", str(out)]) == 0
    assert "4x4 -> 8x8 -> 16x16" in capsys.readouterr().out
    shutil.rmtree(src)
    manifest = json.loads((out / "cascade.json").read_text())
    assert manifest["stages"] == ["base", "sr1", "sr2"] and manifest["aug_levels"] == [0.2, 0.0]
    for sampler in ("ddim", "ddpm", "dpmpp_2m"):
        assert main(["sample", "--run", str(out), "--num", "3", "--steps", "2", "--sampler", sampler,
                     "--out", str(tmp_path / f"{sampler}.npz")]) == 0
        assert np.load(tmp_path / f"{sampler}.npz")["images"].shape == (3, 16, 16, 1)
    assert main(["sample", "--run", str(out), "--num", "3", "--steps", "2", "--sampler", "ddpm",
                 "--out", str(tmp_path / "again.npz")]) == 0
    assert np.array_equal(np.load(tmp_path / "again.npz")["images"], np.load(tmp_path / "ddpm.npz")["images"])
    assert main(["sample", "--run", str(out), "--num", "4", "--steps", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file()
    c = load_cascade(out, device="cpu")
    xs = c.sample(2, steps=2, generator=torch.Generator().manual_seed(0), intermediates=True)
    assert [tuple(x.shape) for x in xs] == [(2, 1, 4, 4), (2, 1, 8, 8), (2, 1, 16, 16)]
    assert c.shape == (1, 16, 16) and c.levels == [0.2, 0.0]
    with pytest.raises(ValueError, match="one per super-resolution stage"):
        c.sample(1, steps=1, levels=[0.1])


def test_cascade_threshold_wraps_every_stage(runs, tmp_path, monkeypatch):
    """--threshold P: each stage's denoiser (base and both SR stages) is dynamically thresholded, so every x0 it
    returns lies in [-1, 1] and is x0 clipped to s = max(1, quantile_P |x0|) divided by s (Saharia et al. 2022)."""
    from difflab.models import denoiser as dn
    from difflab.training.cascade import load_cascade

    out = tmp_path / "c"
    assert main(["cascade", "--base", str(runs / "base"), "--stage", str(runs / "sr1"), "--stage", str(runs / "sr2"),
                 "--out", str(out)]) == 0
    seen = []
    forward = dn.Thresholded.forward

    def spy(self, x, t, cond=None):
        raw = self.model(x, t, cond)
        y = forward(self, x, t, cond)
        s = torch.quantile(raw.abs().flatten(1), self.p, dim=1).clamp_min(1.0).reshape(-1, 1, 1, 1)
        assert torch.allclose(y, torch.maximum(torch.minimum(raw, s), -s) / s)
        seen.append((tuple(x.shape[-2:]), float(raw.abs().max()), float(y.abs().max())))
        return y

    monkeypatch.setattr(dn.Thresholded, "forward", spy)
    c = load_cascade(out, device="cpu")
    xs = c.sample(2, steps=2, generator=torch.Generator().manual_seed(0), intermediates=True, threshold=0.9)
    assert {s for s, _, _ in seen} == {(4, 4), (8, 8), (16, 16)}  # every stage went through the wrapper
    assert all(m <= 1.0 + 1e-6 for _, _, m in seen)
    assert any(r > 1.0 for _, r, _ in seen)  # 1-step models overshoot: the rescale did something
    assert all(float(x.abs().max()) <= 1.0 + 1e-5 for x in xs)
    with pytest.raises(ValueError, match="threshold"):
        c.sample(1, steps=1, threshold=0.0)
    assert main(["sample", "--run", str(out), "--num", "2", "--steps", "2", "--threshold", "0.95",
                 "--out", str(tmp_path / "t.npz")]) == 0
    assert np.load(tmp_path / "t.npz")["images"].shape == (2, 16, 16, 1)


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("difflab: error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err


def test_bad_cascades_are_one_line_errors(runs, tmp_path, capsys):
    b, s1, s2 = str(runs / "base"), str(runs / "sr1"), str(runs / "sr2")

    def cascade(*args):
        return main(["cascade", *map(str, args)])

    assert cascade("--base", b, "--stage", s2, "--out", tmp_path / "x") == 2  # 8 -> 16 after a 4x4 base
    _one_line_error(capsys, "takes 1x8x8", "makes 1x4x4")
    assert cascade("--base", b, "--stage", b, "--out", tmp_path / "x") == 2
    _one_line_error(capsys, "not a super-resolution run")
    assert cascade("--base", s1, "--stage", s2, "--out", tmp_path / "x") == 2
    _one_line_error(capsys, "base must be unconditional, class- or text-conditional")
    assert cascade("--base", b, "--stage", s1, "--stage", s2, "--aug-level", "0.1", "--aug-level", "0.1",
                   "--out", tmp_path / "x") == 2
    _one_line_error(capsys, "trained without --noise-aug")
    assert cascade("--base", b, "--stage", s1, "--aug-level", "0.1", "--aug-level", "0.1", "--out", tmp_path / "x") == 2
    _one_line_error(capsys, "one per --stage")
    assert cascade("--base", tmp_path / "nowhere", "--stage", s1, "--out", tmp_path / "x") == 2
    _one_line_error(capsys, "--base", "does not exist")
    assert not (tmp_path / "x").exists()
    assert cascade("--base", b, "--stage", s1, "--out", tmp_path / "c") == 0
    capsys.readouterr()
    assert cascade("--base", b, "--stage", s1, "--out", tmp_path / "c") == 2
    _one_line_error(capsys, "already exists")

    def sample(path):
        return main(["sample", "--run", str(path), "--num", "2", "--steps", "1", "--out", str(tmp_path / "s.png")])

    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "c", bad)
    (bad / "cascade.json").write_text("{not json")
    assert sample(bad) == 2
    _one_line_error(capsys, "cascade.json")
    for manifest, needle in [({"format": "other"}, "not a difflab cascade"),
                             ({"format": "difflab-cascade-1", "stages": ["base", "missing"], "aug_levels": [0]},
                              "'missing'"),
                             ({"format": "difflab-cascade-1", "stages": ["base", "../c"], "aug_levels": [0]},
                              "sub-folder name"),
                             ({"format": "difflab-cascade-1", "stages": ["base", "sr1"], "aug_levels": [2]},
                              "outside [0, 1]"),
                             ({"format": "difflab-cascade-1", "stages": ["base"], "aug_levels": []},
                              "at least one super-resolution stage")]:
        (bad / "cascade.json").write_text(json.dumps(manifest))
        assert sample(bad) == 2
        _one_line_error(capsys, needle)
    shutil.rmtree(bad / "sr1")
    shutil.copytree(tmp_path / "c" / "sr1", bad / "sr1")
    (bad / "sr1" / "checkpoint.safetensors").write_bytes(b"broken")
    (bad / "cascade.json").write_text((tmp_path / "c" / "cascade.json").read_text())
    assert sample(bad) == 2
    _one_line_error(capsys, "stage 'sr1'")
    for bad_p, extra, needle in [("1.5", [], "(0, 1]"), ("0.9", ["--no-clip"], "--no-clip")]:
        assert main(["sample", "--run", str(tmp_path / "c"), "--num", "2", "--threshold", bad_p, *extra, "--out",
                     str(tmp_path / "s.png")]) == 2
        _one_line_error(capsys, "--threshold", needle)
    assert main(["sample", "--run", str(tmp_path / "c"), "--num", "2", "--label", "3", "--out",
                 str(tmp_path / "s.png")]) == 2
    _one_line_error(capsys, "not class-conditional")


def test_edit_superres_runs_the_cascade_stages_on_a_folder(runs, tmp_path, capsys):
    from PIL import Image

    assert main(["cascade", "--base", str(runs / "base"), "--stage", str(runs / "sr1"), "--stage", str(runs / "sr2"),
                 "--out", str(tmp_path / "c")]) == 0
    (tmp_path / "in").mkdir()
    for name, v in (("a.png", 30), ("b.png", 220)):
        Image.fromarray(np.full((4, 4), v, np.uint8)).save(tmp_path / "in" / name)
    for sampler in ("ddim", "ddpm", "dpmpp_2m"):
        assert main(["edit", "superres", "--run", str(tmp_path / "c"), "--input", str(tmp_path / "in"), "--out",
                     str(tmp_path / sampler), "--steps", "2", "--sampler", sampler]) == 0
        assert sorted(p.name for p in (tmp_path / sampler).iterdir()) == ["a.png", "b.png"]
        assert np.asarray(Image.open(tmp_path / sampler / "a.png")).shape == (16, 16)
    capsys.readouterr()
    assert main(["edit", "superres", "--run", str(tmp_path / "c"), "--input", str(tmp_path / "ddim" / "a.png"),
                 "--out", str(tmp_path / "o.png")]) == 2
    _one_line_error(capsys, "is 16x16 but the cascade", "takes 4x4")
    assert main(["edit", "sdedit", "--run", str(tmp_path / "c"), "--input", str(tmp_path / "in" / "a.png"),
                 "--out", str(tmp_path / "o.png")]) == 2
    _one_line_error(capsys, "is a cascade")
