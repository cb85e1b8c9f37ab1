"""Hostile and careless input to the command line: every case is one line ``difflab: error: ...``, exit 2, and
nothing already saved is lost (docs/cli.md)."""
from __future__ import annotations

import copy
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.cli import _args
from difflab.cli.main import main, parser
from difflab.training.checkpoint import CHECKPOINT, CONFIG, PENDING, data_shape, write_json
from difflab.utils.config import ConfigError, loads_json, read_config_file

UNET = {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1], "num_heads": 2,
        "groups": 4, "dropout": 0.0}


def cli(*args) -> int:
    """Exit status of ``difflab ARGS`` run in this process (argparse's refusals included)."""
    try:
        return main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code)


def one_line(capsys) -> str:
    """The single line on stderr (asserting there is exactly one, and no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("difflab: error: "), err
    return err[0]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """A tiny 8x8 digits run with a U-Net and a DDPM table (T = 100), trained 2 steps."""
    d = tmp_path_factory.mktemp("hard")
    cfg = d / "cfg.json"
    cfg.write_text(json.dumps({"network": UNET, "batch_size": 8, "warmup_steps": 2, "checkpoint_every": 10,
                               "sample_steps": 2, "schedule": {"kind": "linear", "T": 100}}))
    assert cli("train", "--data", "digits", "--out", d / "run", "--steps", 2, "--config", cfg, "--quiet") == 0
    return d / "run"


def copy_run(run: Path, where: Path, **edits) -> Path:
    """A copy of ``run`` whose config.json has the given top-level fields replaced."""
    shutil.copytree(run, where)
    rc = json.loads((where / CONFIG).read_text())
    rc.update(edits)
    (where / CONFIG).write_text(json.dumps(rc))
    return where


# ---- arguments ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,words", [
    (["train", "--data", "digits", "--out", "{tmp}/r", "--minutes", "0"], ["--minutes", "> 0"]),
    (["train", "--data", "digits", "--out", "{tmp}/r", "--minutes", "-2"], ["--minutes", "> 0"]),
    (["train", "--data", "digits", "--out", "{tmp}/r", "--minutes", "nan"], ["--minutes", "finite"]),
    (["train", "--data", "digits", "--out", "{tmp}/r", "--seed", "1180591620717411303424"], ["--seed", "2**63 - 1"]),
    (["train", "--data", "digits", "--out", "{tmp}/r", "--device", "nosuch"], ["--device", "unknown device"]),
    (["train", "--data", "digits", "--out", "{tmp}/r", "--steps", "1", "--minutes", "1"], ["not allowed with"]),
    (["sample", "--run", "{tmp}/r", "--out", "{tmp}/x.png", "--seed", "-1"], ["--seed", "[0, 2**63 - 1]"]),
    (["sample", "--run", "{tmp}/r", "--out", "{tmp}/x.png", "--guidance-scale", "nan"], ["--guidance-scale", "finite"]),
    (["sample", "--run", "{tmp}/r", "--out", "{tmp}/x.png", "--guidance-scale", "inf"], ["--guidance-scale", "finite"]),
    (["sample", "--run", "{tmp}/r", "--out", "{tmp}/x.png", "--guidance-interval", "0", "nan"], ["finite"]),
    (["edit", "uncrop", "--run", "{tmp}/r", "--input", "{tmp}/i.png", "--out", "{tmp}/o.png", "--seed", "2e3"],
     ["--seed", "integer"]),
    (["evaluate", "--samples", "{tmp}/x.npz", "--device", "cuda:x"], ["--device"]),
])
def test_bad_arguments_are_one_line_exit_2(tmp_path, capsys, args, words):
    assert cli(*[a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    line = one_line(capsys)
    assert all(w in line for w in words), line
    assert not (tmp_path / "r").exists()


def test_cuda_without_cuda_is_refused_before_any_work(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli("train", "--data", "digits", "--out", tmp_path / "r", "--device", "cuda", "--steps", 1) == 2
    assert "no CUDA device" in one_line(capsys) and not (tmp_path / "r").exists()


def test_validators_accept_the_edges_of_their_ranges():
    assert _args.seed("0") == 0 and _args.seed(str(2**63 - 1)) == 2**63 - 1
    assert _args.finite_float("-3.5") == -3.5 and _args.positive_float("1e-9") == 1e-9
    assert _args.device("cpu") == "cpu"
    for bad in (str(2**63), "-1", "1.5", "x"):
        with pytest.raises(Exception, match="seed"):
            _args.seed(bad)


def test_every_seed_and_device_option_uses_the_shared_validators():
    """No command parses --seed with a bare int or --device unchecked (the shared policy of cli/_args.py)."""
    seen = {"seed": 0, "device": 0}

    def walk(p):
        for a in p._actions:
            if a.dest in seen:
                assert a.type is getattr(_args, a.dest), (p.prog, a.dest)
                seen[a.dest] += 1
            for sub in (getattr(a, "choices", None) or {}).values() if a.__class__.__name__ == "_SubParsersAction" else ():
                walk(sub)

    walk(parser())
    assert seen["seed"] >= 8 and seen["device"] >= 6


# ---- the last resort ------------------------------------------------------------------------------------
def test_an_unexpected_error_is_one_line_naming_the_command(tmp_path, capsys, monkeypatch):
    from difflab.cli import sample

    def broken(args):
        raise RuntimeError("something nobody checked\nsecond line")

    monkeypatch.setattr(sample, "run", broken)
    monkeypatch.delenv("DIFFLAB_DEBUG", raising=False)
    args = ["sample", "--run", tmp_path, "--out", tmp_path / "x.png"]
    assert cli(*args) == 1
    line = one_line(capsys)
    assert "sample failed with RuntimeError: something nobody checked" in line and "--debug" in line
    assert cli("--debug", *args) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "second line" in err
    monkeypatch.setenv("DIFFLAB_DEBUG", "1")
    assert cli(*args) == 1 and "Traceback" in capsys.readouterr().err


# ---- config files and run folders ------------------------------------------------------------------------
@pytest.mark.parametrize("text,words", [
    ('{"seed": %s}' % ("9" * 5000), ["not valid JSON", "digits"]),
    ("[" * 100000, ["not valid JSON", "nested"]),
    ('{"seed": 1e23}', ["seed", "expected int"]),
    ('{"seed": %d}' % 2**64, ["seed", "2**63 - 1"]),
    ('{"schedule": {"kind": "linear", "T": 1000000000000000}}', ["schedule.T", "100000"]),
])
def test_hostile_config_files_are_one_line(tmp_path, capsys, text, words):
    (tmp_path / "c.json").write_text(text)
    assert cli("train", "--data", "digits", "--out", tmp_path / "r", "--config", tmp_path / "c.json", "--steps", 1) == 2
    line = one_line(capsys)
    assert all(w in line for w in words), line


def test_loads_json_bounds_depth_without_recursion():
    assert loads_json('{"a": [[["]]]]]]"]]]}') == {"a": [[["]]]]]]"]]]}  # brackets inside strings do not count
    assert loads_json("[" * 64 + "]" * 64) is not None
    with pytest.raises(ValueError, match="65 levels"):
        loads_json("[" * 65 + "]" * 65)
    with pytest.raises(ValueError):
        loads_json(b"\xff\xfe")


def test_read_config_file_names_the_file(tmp_path):
    (tmp_path / "deep.json").write_text('{"a": ' + "{" * 200 + "}" * 201)
    with pytest.raises(ConfigError, match="deep.json"):
        read_config_file(tmp_path / "deep.json")


@pytest.mark.parametrize("edits,words", [
    ({"train": "x"}, ['"train"', "mapping"]),
    ({"shape": "x"}, ['"shape"', "integers"]),
    ({"shape": [1, 1e6, 1e6]}, ['"shape"', "integers"]),
    ({"shape": [1, 8000, 8000]}, ['"shape"', "values per example"]),
    ({"shape": [1, 16, 16]}, ['"shape"', "does not match the data 'digits'", "1x8x8"]),
    ({"shape": [3, 8, 8], "data": "elsewhere"}, ["shape", "input channels"]),
    ({"family": "nosuch"}, ["family 'nosuch'"]),
    ({"family": 7}, ['"family"', "string"]),
    ({"class_names": [1, 2]}, ['"class_names"', "strings"]),
])
def test_edited_run_config_is_one_line_before_anything_is_built(image_run, tmp_path, capsys, edits, words):
    run = copy_run(image_run, tmp_path / "run", **edits)
    assert cli("sample", "--run", run, "--out", tmp_path / "s.png", "--num", 2, "--steps", 2) == 2
    line = one_line(capsys)
    assert all(w in line for w in words), line
    assert not (tmp_path / "s.png").exists()


@pytest.mark.parametrize("edits,words", [({"train": "x"}, ['"train"', "mapping"]),
                                         ({"shape": [1, 16, 16]}, ['"shape"', "1x8x8"])])
def test_resuming_an_edited_run_is_one_line_and_keeps_it(image_run, tmp_path, capsys, edits, words):
    run = copy_run(image_run, tmp_path / "run", **edits)
    before = {name: (run / name).read_bytes() for name in (CHECKPOINT, CONFIG)}
    assert cli("train", "--out", run, "--resume", "--steps", 4, "--quiet") == 2
    line = one_line(capsys)
    assert all(w in line for w in words), line
    assert {name: (run / name).read_bytes() for name in (CHECKPOINT, CONFIG)} == before


def test_an_edited_schedule_length_is_refused_before_allocating(image_run, tmp_path, capsys):
    rc = json.loads((image_run / CONFIG).read_text())
    run = copy_run(image_run, tmp_path / "run", schedule={**rc["schedule"], "T": 1e15})
    assert cli("sample", "--run", run, "--out", tmp_path / "s.png") == 2
    assert 'schedule "T"' in one_line(capsys)
    run2 = copy_run(image_run, tmp_path / "run2", schedule={**rc["schedule"], "T": 10**15})
    assert cli("sample", "--run", run2, "--out", tmp_path / "s.png") == 2
    assert "[2, 100000]" in one_line(capsys)


def test_data_shape_of_builtin_specs():
    assert data_shape("digits") == (1, 8, 8) and data_shape("toy:moons") == (2,)
    assert data_shape("color:digits") == (3, 8, 8) and data_shape("size:4:mnist:/x") == (1, 4, 4)
    assert data_shape("size:²:digits") == (1, None, None) and data_shape("/some/folder") is None


def test_fuzzed_run_config_fields_give_exit_0_or_one_line(image_run, tmp_path, capsys):
    """A fixed-seed fuzz: one field of config.json (at any depth) replaced by a value of a random type; ``sample``
    either works or refuses in one line as a user error (exit 2), never the last-resort exit 1."""
    base = json.loads((image_run / CONFIG).read_text())
    pool = [None, True, -1, 0, 1, 3.5, -0.5, 1e308, 10**30, "x", "", [], {}, [1], [1, 8], {"a": 1}, ["a", "b"]]

    def paths(d, pre=()):
        for k, v in d.items():
            yield pre + (k,)
            if isinstance(v, dict):
                yield from paths(v, pre + (k,))

    fields = list(paths(base))
    rng = random.Random(0)
    run = tmp_path / "run"
    outcomes = []
    for i in range(40):
        rc, path, value = copy.deepcopy(base), rng.choice(fields), rng.choice(pool)
        d = rc
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(image_run, run)
        (run / CONFIG).write_text(json.dumps(rc))
        code = cli("sample", "--run", run, "--out", tmp_path / f"s{i}.png", "--num", 2, "--steps", 2)
        err = capsys.readouterr().err.strip().splitlines()
        assert code in (0, 2) and len(err) <= 1 and (code == 0 or err[0].startswith("difflab: error: ")), \
            (path, value, code, err)
        outcomes.append(code)
    assert 0 in outcomes and 2 in outcomes  # the fuzz reaches both kinds of field


# ---- outputs --------------------------------------------------------------------------------------------
def test_sample_refuses_an_existing_out_without_overwrite(image_run, tmp_path, capsys):
    out = tmp_path / "s.png"
    out.write_bytes(b"precious")
    assert cli("sample", "--run", image_run, "--out", out, "--num", 2, "--steps", 2) == 2
    assert "--overwrite" in one_line(capsys) and out.read_bytes() == b"precious"
    assert cli("sample", "--run", image_run, "--out", out, "--num", 2, "--steps", 2, "--overwrite") == 0
    assert out.read_bytes() != b"precious"


def test_edit_refuses_existing_outputs_without_overwrite(image_run, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    Image.new("L", (8, 8), 100).save(tmp_path / "in" / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.png").write_bytes(b"precious")
    args = ["edit", "uncrop", "--run", image_run, "--input", tmp_path / "in", "--out", tmp_path / "out", "--left", 2,
            "--steps", 2]
    assert cli(*args) == 2
    assert "out/a.png" in one_line(capsys) and (tmp_path / "out" / "a.png").read_bytes() == b"precious"
    assert cli(*args, "--overwrite") == 0 and (tmp_path / "out" / "a.png").read_bytes() != b"precious"


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny PNG file whose header claims width x height pixels (its data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 8))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width,height,words", [(20000, 20000, ["huge.png", "pixels"]),
                                                (5000, 8, ["huge.png", "4096 pixels a side"])])
def test_edit_checks_image_size_from_the_header(image_run, tmp_path, capsys, width, height, words):
    Image.new("L", (8, 8), 255).save(tmp_path / "mask.png")
    png_claiming(tmp_path / "huge.png", width, height)
    assert cli("edit", "inpaint", "--run", image_run, "--input", tmp_path / "huge.png", "--mask", tmp_path / "mask.png",
               "--out", tmp_path / "o.png") == 2
    line = one_line(capsys)
    assert all(w in line for w in words), line
    Image.new("L", (8, 8), 0).save(tmp_path / "in.png")
    assert cli("edit", "inpaint", "--run", image_run, "--input", tmp_path / "in.png", "--mask", tmp_path / "huge.png",
               "--out", tmp_path / "o.png") == 2
    assert "--mask" in one_line(capsys) and not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("option", [["uncrop", "--right", "100000"], ["uncrop", "--top", "-1"],
                                    ["panorama", "--width", "0"], ["panorama", "--width", "5000"]])
def test_edit_bounds_the_added_pixels(image_run, tmp_path, capsys, option):
    Image.new("L", (8, 8), 0).save(tmp_path / "in.png")
    task, *rest = option
    assert cli("edit", task, "--run", image_run, "--input", tmp_path / "in.png", "--out", tmp_path / "o.png", *rest) == 2
    assert f"{rest[0]} must lie in" in one_line(capsys)


# ---- evaluate -------------------------------------------------------------------------------------------
def test_evaluate_refuses_empty_renamed_and_non_finite_samples(tmp_path, capsys):
    np.savez(tmp_path / "zero.npz", images=np.zeros((0, 8, 8, 1), np.uint8))
    np.save(tmp_path / "plain.npy", np.zeros((4, 8, 8, 1), np.uint8))
    os.replace(tmp_path / "plain.npy", tmp_path / "renamed.npz")
    np.savez(tmp_path / "nan.npz", samples=np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]], np.float32))
    for name, words, data in (("zero.npz", ["0 examples"], "digits"), ("renamed.npz", ["not an .npz"], "digits"),
                              ("nan.npz", ["1 of 3 samples", "NaN"], "toy:moons")):
        assert cli("evaluate", "--samples", tmp_path / name, "--data", data) == 2
        line = one_line(capsys)
        assert all(w in line for w in words), line
    assert not list(tmp_path.glob("*.json"))


def test_json_results_write_nan_as_null(tmp_path):
    write_json(tmp_path / "r.json", {"fd": float("nan"), "rows": [1.0, float("inf")], "ok": 2.5})

    def refuse(name):
        raise AssertionError(f"{name} in strict JSON")

    assert json.loads((tmp_path / "r.json").read_text(), parse_constant=refuse) == \
        {"fd": None, "rows": [1.0, None], "ok": 2.5}


# ---- a full disk ----------------------------------------------------------------------------------------
def _limit_file_size(limit: int):
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs RLIMIT_FSIZE")
def test_full_disk_during_a_checkpoint_keeps_checkpoint_and_config(image_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(image_run, run)
    before = {name: (run / name).read_bytes() for name in (CHECKPOINT, CONFIG)}
    assert len(before[CHECKPOINT]) > 100_000
    cmd = [sys.executable, "-m", "difflab", "train", "--data", "digits", "--out", str(run), "--resume", "--steps", "10",
           "--lr", "0.002", "--quiet"]
    r = subprocess.run(cmd, preexec_fn=_limit_file_size(100_000), capture_output=True, text=True, timeout=300)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert "could not write" in err[0] and "previous checkpoint is kept" in err[0] and "Traceback" not in r.stderr
    assert {name: (run / name).read_bytes() for name in (CHECKPOINT, CONFIG)} == before  # nothing saved is lost
    assert not [p for p in run.iterdir() if p.name.startswith(".checkpoint.")]  # no temporary file left
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # room again: the resume completes
    assert r.returncode == 0, r.stderr
    assert json.loads((run / CONFIG).read_text())["train"]["lr"] == 0.002 and not (run / PENDING).exists()


def test_export_diffusers_leaves_no_half_written_folder(image_run, tmp_path, capsys, monkeypatch):
    diffusers = pytest.importorskip("diffusers")
    import errno

    def half(self, folder, **kw):
        Path(folder, "model_index.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(diffusers.DDPMPipeline, "save_pretrained", half)
    assert cli("export-diffusers", "--run", image_run, "--out", tmp_path / "pipe") == 2
    assert "No space left on device" in one_line(capsys)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary sibling
