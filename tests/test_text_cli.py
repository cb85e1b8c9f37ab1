"""Text runs from the command line: a captioned folder trained with --text-encoder, sampled with --prompt and
--negative-prompt, resumed, edited with a prompt; text on latent runs (folder captions and digit captions)."""
import json

import numpy as np
import pytest

from difflab.cli.main import main

from conftest import TINY_UNET
from test_text_folders import write_bars

TINY_AE = {"channels": 8, "channel_mult": [1, 2], "groups": 4}


def run(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("textcli")
    (d / "bars").mkdir()
    write_bars(d / "bars", n=16)
    (d / "cfg.json").write_text(json.dumps({"network": TINY_UNET, "batch_size": 8, "sample_steps": 2, "warmup_steps": 2,
                                            "checkpoint_every": 2, "schedule": {"kind": "linear", "T": 100}}))
    assert run("train", "--data", d / "bars", "--image-size", 8, "--text-encoder", "small", "--out", d / "run",
               "--steps", 3, "--config", d / "cfg.json", "--quiet") == 0
    return d


def test_folder_captions_train_a_text_run(text_run):
    rc = json.loads((text_run / "run" / "config.json").read_text())
    assert rc["train"]["conditional"] and rc["train"]["text_encoder"] == "small"
    assert rc["network"]["config"]["context_dim"] == 64 and rc["network"]["config"]["num_classes"] == 0


def test_a_folder_run_stores_its_captions_for_previews_and_sample(text_run, tmp_path, monkeypatch):
    """The run keeps a few of the folder's captions: a saved run's previews and ``sample`` without --prompt ask for
    them in turn, not for the empty caption."""
    import torch

    from difflab.runs import load as load_run
    from difflab.training.conditioning import spread_captions

    rc = json.loads((text_run / "run" / "config.json").read_text())
    assert rc["conditioning"]["captions"] == ["a bar on the left", "a bar on the right"]
    r = load_run(text_run / "run", device="cpu")
    c = r.loaded.conditioning
    cond = r.condition(None, 4, 0)  # what sample without --prompt draws
    want = c.prompts(["a bar on the left", "a bar on the right"] * 2, "cpu")
    assert torch.equal(cond["context"], want["context"]) and bool(cond["context_mask"].any(1).all())
    del rc["conditioning"]["captions"]  # a run saved before: the empty caption
    from difflab.training.conditioning import conditioning_of_run

    assert not conditioning_of_run(rc).preview(2, "cpu")["context_mask"].any()
    texts = [f"caption {i:02d}" for i in range(25)]
    got = spread_captions(texts)
    assert len(got) == 10 and got[0] == texts[0] and got[-1] == texts[-1] and len(set(got)) == 10
    assert spread_captions(texts[:3]) == texts[:3]
    # sample without --prompt asks for the stored captions in turn (with --prompt "": the empty caption)
    from difflab.training.conditioning import CaptionConditioning

    asked = []
    prompts = CaptionConditioning.prompts
    spy = lambda self, texts, device: asked.append(list(texts)) or prompts(self, texts, device)  # noqa: E731
    monkeypatch.setattr(CaptionConditioning, "prompts", spy)
    assert run("sample", "--run", text_run / "run", "--num", 3, "--steps", 2, "--out", tmp_path / "u.npz") == 0
    assert asked == [["a bar on the left", "a bar on the right", "a bar on the left"]]
    asked.clear()
    assert run("sample", "--run", text_run / "run", "--num", 3, "--steps", 2, "--prompt", "", "--out",
               tmp_path / "e.npz") == 0
    assert asked == [["", "", ""]]


def test_sample_with_prompt_and_negative_prompt(text_run, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert run("sample", "--run", text_run / "run", "--num", 3, "--steps", 2, "--prompt", "a bar on the right",
               "--guidance-scale", 2, "--negative-prompt", "a bar on the left", "--out", out) == 0
    with np.load(out) as f:
        assert f["images"].shape == (3, 8, 8, 1)
    assert run("sample", "--run", text_run / "run", "--num", 2, "--steps", 2, "--out", tmp_path / "u.png") == 0
    capsys.readouterr()
    assert run("sample", "--run", text_run / "run", "--num", 2, "--steps", 2, "--prompt", "a bar",
               "--negative-prompt", "a bar on the left", "--out", tmp_path / "x.png") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("difflab: error: --negative-prompt needs --prompt and --guidance-scale")


def test_text_run_resumes(text_run, capsys):
    capsys.readouterr()
    assert run("train", "--out", text_run / "run", "--resume", "--steps", 5, "--quiet") == 0
    assert "trained 5 steps" in capsys.readouterr().out
    rc = json.loads((text_run / "run" / "config.json").read_text())
    assert rc["train"]["text_encoder"] == "small" and rc["train"]["steps"] == 5


@pytest.mark.parametrize("task", ["sdedit", "inpaint"])
def test_edit_with_a_prompt(text_run, tmp_path, task):
    from PIL import Image

    mask = tmp_path / "mask.png"
    m = np.full((8, 8), 255, np.uint8)
    m[:, 4:] = 0
    Image.fromarray(m).save(mask)
    extra = ["--strength", 0.8] if task == "sdedit" else ["--mask", mask]
    out = tmp_path / "o.png"
    assert run("edit", task, "--run", text_run / "run", "--input", text_run / "bars" / "000.png", "--out", out,
               "--steps", 4, "--prompt", "a bar on the right", "--guidance-scale", 2, "--negative-prompt",
               "a bar on the left", *extra) == 0
    with Image.open(out) as im:
        got = np.asarray(im)
    assert got.shape == (8, 8)
    if task == "inpaint":  # the kept half is the input's
        with Image.open(text_run / "bars" / "000.png") as im:
            assert np.array_equal(got[:, :4], np.asarray(im)[:, :4])


def test_prompt_errors_of_edit(text_run, tmp_path, capsys):
    src = text_run / "bars" / "000.png"
    assert run("edit", "sdedit", "--run", text_run / "run", "--input", src, "--out", tmp_path / "o.png",
               "--guidance-scale", 2) == 2
    assert "--guidance-scale needs --prompt" in capsys.readouterr().err
    (tmp_path / "u.json").write_text(json.dumps({"network": TINY_UNET, "batch_size": 8, "sample_steps": 2,
                                                 "schedule": {"kind": "linear", "T": 100}}))
    assert run("train", "--data", text_run / "bars", "--image-size", 8, "--out", tmp_path / "plain", "--steps", 1,
               "--config", tmp_path / "u.json", "--quiet") == 0
    capsys.readouterr()
    assert run("edit", "sdedit", "--run", tmp_path / "plain", "--input", src, "--out", tmp_path / "o.png",
               "--prompt", "a bar") == 2
    assert "is not text-conditional" in capsys.readouterr().err


@pytest.mark.parametrize("data", ["bars", "digits"])
def test_text_on_a_latent_run(text_run, tmp_path, data):
    """--autoencoder with --text-encoder: cross-attention to the captions in latent space, sampled with CFG."""
    spec = text_run / "bars" if data == "bars" else "digits"
    (tmp_path / "ae.json").write_text(json.dumps({"network": TINY_AE, "batch_size": 8, "warmup_steps": 2}))
    assert run("train-autoencoder", "--data", spec, "--image-size", 8, "--out", tmp_path / "ae", "--steps", 2,
               "--config", tmp_path / "ae.json", "--quiet") == 0
    (tmp_path / "ldm.json").write_text(json.dumps({"network": TINY_UNET, "batch_size": 8, "sample_steps": 2}))
    assert run("train", "--data", spec, "--image-size", 8, "--autoencoder", tmp_path / "ae", "--text-encoder", "small",
               "--out", tmp_path / "ldm", "--steps", 2, "--config", tmp_path / "ldm.json", "--quiet") == 0
    rc = json.loads((tmp_path / "ldm" / "config.json").read_text())
    assert rc["shape"] == [2, 4, 4] and rc["network"]["config"]["context_dim"] == 64
    prompt = "a bar on the left" if data == "bars" else "a thick seven"
    assert run("sample", "--run", tmp_path / "ldm", "--num", 2, "--steps", 2, "--prompt", prompt, "--guidance-scale", 3,
               "--negative-prompt", "a bar", "--out", tmp_path / "s.npz") == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (2, 8, 8, 1)


def test_text_cascade_samples_from_a_prompt(text_run, tmp_path, capsys):
    """A text base at 4x4 (the folder shrunk, captions kept) and an 8x8 text-conditional SR stage with noise-
    conditioning augmentation (Imagen); sampled with --prompt and CFG."""
    from difflab.training import load_run

    bars = text_run / "bars"
    common = ["--steps", 1, "--config", text_run / "cfg.json", "--quiet", "--image-size", 8]
    assert run("train", "--data", f"size:4:{bars}", "--text-encoder", "small", "--out", tmp_path / "base", *common) == 0
    assert run("train", "--data", bars, "--task", "superres", "--noise-aug", "--text-encoder", "small", "--out",
               tmp_path / "sr", *common) == 0
    sr = load_run(tmp_path / "sr")
    assert sr.conditioning.kind == "superres" and sr.conditioning.text.encoder == "small"
    assert sr.model.net.config.context_dim == 64 and sr.model.net.config.cond_channels == 2
    assert run("cascade", "--base", tmp_path / "base", "--stage", tmp_path / "sr", "--out", tmp_path / "c") == 0
    out = tmp_path / "c.npz"
    assert run("sample", "--run", tmp_path / "c", "--num", 2, "--steps", 2, "--prompt", "a bar on the left",
               "--guidance-scale", 2, "--out", out) == 0
    with np.load(out) as f:
        assert f["images"].shape == (2, 8, 8, 1)
    capsys.readouterr()
    assert run("sample", "--run", tmp_path / "c", "--num", 2, "--steps", 2, "--guidance-scale", 2, "--out", out, "--overwrite") == 2
    assert "--guidance-scale needs --prompt" in capsys.readouterr().err


def test_the_page_edits_a_text_run_with_its_prompt(text_run):
    """The page's SDEdit on a text run: the prompt (with guidance) is the condition, the empty caption without one."""
    import base64
    import io
    import time

    from PIL import Image

    from difflab.serve.jobs import Service

    svc = Service(text_run / "run", workers=1)
    try:
        info = svc.info()
        assert info["conditioning"] == "captions" and {"inpaint", "sdedit"} <= set(info["tasks"])
        c = info["shape"][0]
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8) if c == 1 else (8, 8, 3), 128, np.uint8)).save(buf, format="PNG")
        img = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

        def edited(**req):
            job = svc.edit({"task": "sdedit", "image": img, "strength": 0.8, "steps": 3, "seed": 1, **req})
            t0 = time.time()
            while job.state not in ("done", "error") and time.time() - t0 < 60:
                time.sleep(0.02)
            assert job.state == "done", job.error
            return np.asarray(Image.open(io.BytesIO(job.png)), dtype=np.int16)

        left = edited(prompt="a bar on the left", guidance_scale=2)
        assert np.array_equal(left, edited(prompt="a bar on the left", guidance_scale=2))  # seeded
        assert not np.array_equal(left, edited(prompt="a bar on the right", guidance_scale=2))  # the prompt counts
        assert edited().shape == left.shape  # no prompt: the empty caption
    finally:
        svc.close()


def test_edit_superres_takes_the_prompt_of_a_text_sr_stage(text_run, tmp_path, capsys):
    """edit superres on a text SR run and on a text cascade: --prompt (with CFG) is the stage's caption, seeded;
    --threshold replaces the clamping; a prompt for a run without text, guidance without a prompt and a threshold
    outside (0, 1] are one-line errors."""
    from PIL import Image

    bars = text_run / "bars"
    common = ["--steps", 3, "--config", text_run / "cfg.json", "--quiet", "--image-size", 8]
    assert run("train", "--data", bars, "--task", "superres", "--text-encoder", "small", "--out", tmp_path / "sr",
               *common) == 0
    assert run("train", "--data", f"size:4:{bars}", "--out", tmp_path / "base", *common) == 0
    assert run("cascade", "--base", tmp_path / "base", "--stage", tmp_path / "sr", "--out", tmp_path / "c") == 0
    small = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (4, 4), dtype=np.uint8)).save(small)

    def edit(name, *extra, target="sr"):
        out = tmp_path / f"{name}.png"
        assert run("edit", "superres", "--run", tmp_path / target, "--input", small, "--out", out, "--steps", 3,
                   "--seed", 1, *extra) == 0
        return np.asarray(Image.open(out), dtype=np.int16)

    # dynamic thresholding rescales x0 instead of clamping it: the barely trained stage's outputs stay unsaturated
    left = edit("l", "--prompt", "a bar on the left", "--guidance-scale", 4, "--threshold", 0.9)
    assert left.shape == (8, 8) and len(np.unique(left)) > 8
    assert np.array_equal(left, edit("l2", "--prompt", "a bar on the left", "--guidance-scale", 4, "--threshold", 0.9))
    import sys

    import difflab.tasks

    module, original, asked = sys.modules["difflab.tasks.superres"], difflab.tasks.superres, []

    def recording(*a, **kw):  # what the edit hands the SR task: the caption of the images
        asked.append(kw.get("prompts"))
        return original(*a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(module, "superres", recording)
        mp.setattr(difflab.tasks, "superres", recording)
        edit("p", "--prompt", "a bar on the left")
        edit("p0")
        edit("pc", "--prompt", "a bar on the left", target="c")
    assert asked == [["a bar on the left"], None, ["a bar on the left"]]
    assert not np.array_equal(left, edit("c", "--prompt", "a bar on the left", "--guidance-scale", 4))  # clamped
    assert np.array_equal(left, edit("cl", "--prompt", "a bar on the left", "--guidance-scale", 4, "--threshold", 0.9,
                                     target="c"))  # a cascade's text SR stage gets the same
    for target, extra, msg in [("sr", ("--guidance-scale", 2), "--guidance-scale needs --prompt"),
                               ("sr", ("--threshold", 1.5), "--threshold must lie in (0, 1]"),
                               ("sr", ("--prompt", "x", "--threshold", 0), "--threshold must lie in (0, 1]"),
                               ("c", ("--threshold", 1.5), "--threshold must lie in (0, 1]")]:
        capsys.readouterr()
        assert run("edit", "superres", "--run", tmp_path / target, "--input", small, "--out", tmp_path / "x.png",
                   *extra) == 2
        assert msg in capsys.readouterr().err
    assert run("train", "--data", bars, "--task", "superres", "--out", tmp_path / "plain", *common) == 0
    capsys.readouterr()
    assert run("edit", "superres", "--run", tmp_path / "plain", "--input", small, "--out", tmp_path / "x.png",
               "--prompt", "a bar on the left") == 2
    assert "is text-conditional" in capsys.readouterr().err
