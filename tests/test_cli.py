import json
import subprocess
import sys

import numpy as np
import torch
import pytest
from PIL import Image

from difflab.cli.main import main
from difflab.training.checkpoint import CHECKPOINT


def run(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    cfg = d / "cfg.json"
    cfg.write_text(json.dumps({"network": {"hidden": 32, "depth": 2}, "batch_size": 32, "sample_steps": 3,
                               "schedule": {"kind": "linear", "T": 100}}))
    assert run("train", "--data", "toy:moons", "--out", d / "run", "--steps", 20, "--config", cfg, "--quiet") == 0
    return d / "run"


def test_train_writes_a_complete_run_folder(toy_run):
    for name in ["config.json", CHECKPOINT, "log.csv", "loss.png", "samples.png"]:
        assert (toy_run / name).is_file(), name
    assert json.loads((toy_run / "config.json").read_text())["data"] == "toy:moons"


def test_sample_npz_and_png(toy_run, tmp_path):
    assert run("sample", "--run", toy_run, "--num", 33, "--steps", 4, "--sampler", "dpmpp_2m",
               "--out", tmp_path / "s.npz") == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["samples"].shape == (33, 2) and f["samples"].dtype == np.float32
    assert run("sample", "--run", toy_run, "--num", 50, "--steps", 3, "--out", tmp_path / "s.png") == 0
    assert Image.open(tmp_path / "s.png").size[0] > 100
    # same seed, same samples
    run("sample", "--run", toy_run, "--num", 33, "--steps", 4, "--sampler", "dpmpp_2m", "--out", tmp_path / "t.npz")
    with np.load(tmp_path / "s.npz") as a, np.load(tmp_path / "t.npz") as b:
        assert np.array_equal(a["samples"], b["samples"])


def test_digits_end_to_end_images(tmp_path, tiny_config):
    out = tmp_path / "digits"
    assert run("train", "--data", "digits", "--out", out, "--steps", 6, "--config", tiny_config("unet"), "--quiet") == 0
    assert run("sample", "--run", out, "--num", 10, "--steps", 3, "--out", tmp_path / "d.npz") == 0
    with np.load(tmp_path / "d.npz") as f:
        assert f["images"].shape == (10, 8, 8, 1) and f["images"].dtype == np.uint8


def test_refuses_to_overwrite_and_resumes(toy_run, capsys):
    before = (toy_run / CHECKPOINT).read_bytes()
    assert run("train", "--data", "toy:moons", "--out", toy_run, "--steps", 5) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (toy_run / CHECKPOINT).read_bytes() == before
    assert run("train", "--data", "toy:moons", "--out", toy_run, "--steps", 25, "--resume", "--quiet") == 0
    from difflab.training.checkpoint import load_checkpoint

    assert load_checkpoint(toy_run).step == 25  # the resumed run reached the requested total
    assert (toy_run / "log.csv").read_text().splitlines()[-1].startswith("25,")
    assert run("train", "--data", "toy:rings", "--out", toy_run, "--steps", 30, "--resume", "--quiet") == 2
    assert "was trained on 'toy:moons'" in capsys.readouterr().err


def test_resume_without_data_uses_the_runs_folder_and_size(tmp_path, tiny_config):
    from PIL import Image

    from difflab.training.checkpoint import load_checkpoint

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "r"
    cfg = tiny_config("unet")
    assert run("train", "--data", folder, "--image-size", 8, "--out", out, "--steps", 2, "--config", cfg, "--quiet") == 0
    assert run("train", "--out", out, "--steps", 4, "--resume", "--quiet") == 0  # folder and 8x8 from config.json
    assert load_checkpoint(out).step == 4
    assert json.loads((out / "config.json").read_text())["shape"] == [1, 8, 8]


@pytest.mark.parametrize("args,message", [
    (["train", "--data", "/no/such/folder", "--out", "{tmp}/r", "--steps", "1"], "no such file or directory"),
    (["train", "--data", "toy:nope", "--out", "{tmp}/r", "--steps", "1"], "unknown toy distribution"),
    (["train", "--data", "{tmp}/empty", "--out", "{tmp}/r", "--steps", "1"], "contains no PNG/JPEG"),
    (["train", "--data", "digits", "--out", "{tmp}/r", "--config", "{tmp}/unknown.json"], "unknown key(s) colour"),
    (["train", "--data", "digits", "--out", "{tmp}/r", "--config", "{tmp}/range.json"], "lr must be > 0"),
    (["train", "--data", "digits", "--out", "{tmp}/r", "--config", "{tmp}/missing.json"], "does not exist"),
    (["train", "--data", "digits", "--out", "{tmp}/r", "--config", "{tmp}/notjson.json"], "not valid JSON"),
    (["train", "--data", "digits", "--out", "{tmp}/r", "--resume"], "holds no checkpoint"),
    (["train", "--out", "{tmp}/r", "--steps", "1"], "--data is required"),
    (["train", "--out", "{tmp}/r", "--steps", "1", "--resume"], "--data is required"),
    (["sample", "--run", "{tmp}/nothing", "--out", "{tmp}/x.png"], "does not exist"),
    (["sample", "--run", "{tmp}/nothing", "--out", "{tmp}/x.gif"], "must end in .png or .npz"),
    (["sample", "--run", "{tmp}/nothing", "--num", "0", "--out", "{tmp}/x.png"], "--num must be at least 1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "unknown.json").write_text(json.dumps({"colour": "red"}))
    (tmp_path / "range.json").write_text(json.dumps({"lr": -1}))
    (tmp_path / "notjson.json").write_text("{lr: ")
    assert run(*[a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_corrupt_checkpoint(toy_run, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(toy_run, broken)
    data = (broken / CHECKPOINT).read_bytes()
    (broken / CHECKPOINT).write_bytes(data[: len(data) // 2])
    assert run("sample", "--run", broken, "--out", tmp_path / "x.png") == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    assert run("train", "--data", "toy:moons", "--out", broken, "--steps", 40, "--resume") == 2
    assert (broken / CHECKPOINT).read_bytes() == data[: len(data) // 2]  # nothing overwritten


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_config, capsys, monkeypatch):
    import torch

    from difflab.training import objectives

    real = objectives.OBJECTIVES["simple"]
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] > 12 else out

    monkeypatch.setitem(objectives.OBJECTIVES, "simple", flaky)
    out = tmp_path / "nan"
    assert run("train", "--data", "toy:moons", "--out", out, "--steps", 50, "--config", tiny_config(), "--quiet") == 2
    err = capsys.readouterr().err
    assert "at step 12" in err and "last good checkpoint" in err
    from difflab.training.checkpoint import load_checkpoint

    ck = load_checkpoint(out)
    assert ck.step == 10
    assert all(torch.isfinite(v).all() for v in ck.modules["model"].values())  # the kept weights are the good ones


def test_help(capsys):
    for cmd in (["--help"], ["train", "--help"], ["sample", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(cmd)
        assert e.value.code == 0 and "usage: difflab" in capsys.readouterr().out


def test_module_entry_point_exits_2_without_traceback():
    r = subprocess.run([sys.executable, "-m", "difflab.cli.main", "train", "--data", "toy:nope", "--out", "/tmp/x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("difflab: error:") and "Traceback" not in r.stderr


def test_resume_with_a_minute_budget_continues_from_the_checkpoint(toy_run):
    from difflab.training.checkpoint import load_checkpoint

    before = load_checkpoint(toy_run).step
    assert run("train", "--data", "toy:moons", "--out", toy_run, "--minutes", 0.02, "--resume", "--quiet") == 0
    after = load_checkpoint(toy_run).step
    assert after > before  # counted on from the stored step, not from 0
    steps = [int(r.split(",")[0]) for r in (toy_run / "log.csv").read_text().splitlines()[1:]]
    assert steps == sorted(steps) and steps[-1] == after


def test_sample_no_ema_uses_the_raw_weights(toy_run, tmp_path):
    from difflab.training import load_run

    ema, raw = load_run(toy_run, ema=True, device="cpu"), load_run(toy_run, ema=False, device="cpu")
    pe, pr = dict(ema.model.named_parameters()), dict(raw.model.named_parameters())
    assert any(not torch.equal(pe[k], pr[k]) for k in pe)  # the EMA differs from the trained weights
    for flag, name in (([], "ema.npz"), (["--no-ema"], "raw.npz")):
        assert run("sample", "--run", toy_run, "--num", 64, "--steps", 4, "--sampler", "ddim", *flag,
                   "--out", tmp_path / name) == 0
    from difflab.evaluation.generate import PerSample

    rng = PerSample(0, range(64))  # a generator per sample, seeded by (seed, index)
    x_T = rng.prior(ema.model.schedule, (2,))
    with np.load(tmp_path / "raw.npz") as f, torch.no_grad():
        from difflab import sample

        expect = sample(raw.model, x_T, sampler="ddim", steps=4, generator=rng)
        assert np.allclose(f["samples"], expect.numpy(), atol=1e-5)
    with np.load(tmp_path / "ema.npz") as a, np.load(tmp_path / "raw.npz") as b:
        assert not np.allclose(a["samples"], b["samples"])


def test_resume_keeps_the_schedule_the_run_was_trained_with(tmp_path, tiny_config):
    """A run whose recipe names only (kind, T) resumes on the betas it was built with, not today's defaults."""
    import json

    from difflab.data import load
    from difflab.errors import UserError
    from difflab.training import TrainConfig, train

    out = tmp_path / "old"
    cfg = tiny_config(schedule={"kind": "linear", "T": 50, "beta_start": 1e-4, "beta_end": 0.02})
    assert run("train", "--data", "toy:moons", "--out", out, "--steps", 5, "--config", cfg, "--quiet") == 0
    rc = json.loads((out / "config.json").read_text())
    rc["train"]["schedule"] = {"kind": "linear", "T": 50}  # as a run written before betas were scaled to T
    (out / "config.json").write_text(json.dumps(rc))
    assert run("train", "--data", "toy:moons", "--out", out, "--steps", 8, "--resume", "--quiet") == 0
    assert json.loads((out / "config.json").read_text())["schedule"]["beta_end"] == 0.02
    with pytest.raises(UserError, match="was trained with schedule"):
        train(TrainConfig.load(cfg, schedule={"kind": "linear", "T": 50}, steps=9), load("toy:moons"), out,
              resume=True, progress=False)


def test_an_os_error_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    from difflab.training import checkpoint

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(checkpoint, "atomic_write", full)
    assert run("train", "--data", "toy:moons", "--out", tmp_path / "r", "--steps", 2, "--quiet") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("difflab: error: No space left on device")


def test_channels_option_forces_grayscale_for_a_colour_folder(tmp_path, tiny_config):
    import json

    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{k}.png")
    for channels, expect in (("1", 1), (None, 3)):
        out = tmp_path / f"run{channels}"
        extra = ["--channels", channels] if channels else []
        assert run("train", "--data", folder, "--image-size", 8, "--out", out, "--steps", 2,
                   "--config", tiny_config("unet"), "--quiet", *extra) == 0
        assert json.loads((out / "config.json").read_text())["shape"] == [expect, 8, 8]
