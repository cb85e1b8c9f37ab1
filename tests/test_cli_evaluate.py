import json

import numpy as np
import pytest

from difflab.cli.main import main
from difflab.data import load, to_uint8


def run(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    cfg = d / "cfg.json"
    cfg.write_text(json.dumps({"network": {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                           "attention_levels": [], "groups": 4, "num_heads": 2},
                               "batch_size": 16, "sample_steps": 2, "schedule": {"kind": "linear", "T": 100}}))
    assert run("train", "--data", "digits", "--out", d / "run", "--steps", 3, "--config", cfg, "--quiet") == 0
    return d / "run"


def test_evaluate_real_digits_file_scores_better_than_noise(tmp_path, capsys):
    real = load("digits", "test").x
    np.savez(tmp_path / "real.npz", images=to_uint8(real))
    noise = np.random.default_rng(0).integers(0, 256, (300, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "noise.npz", images=noise)
    assert run("evaluate", "--samples", tmp_path / "real.npz", "--data", "digits") == 0
    assert run("evaluate", "--samples", tmp_path / "noise.npz", "--data", "digits") == 0
    good = json.loads((tmp_path / "real.json").read_text())["metrics"]
    bad = json.loads((tmp_path / "noise.json").read_text())["metrics"]
    assert good["fd"] < bad["fd"] / 10 and good["recall"] > bad["recall"]
    assert "fd" in capsys.readouterr().out


def test_evaluate_points_file(tmp_path):
    pts = load("toy:moons", "train").x[:1000].numpy()  # scored against the 5000 test points (the O(N^2) metrics)
    np.savez(tmp_path / "p.npz", samples=pts)
    assert run("evaluate", "--samples", tmp_path / "p.npz", "--data", "toy:moons", "--split", "test",
               "--json", tmp_path / "o.json") == 0
    out = json.loads((tmp_path / "o.json").read_text())
    m = out["metrics"]
    assert out["split"] == "test" and m["num_reference"] == 5000
    assert m["sw1"] < 0.05 and m["num_samples"] == len(pts)


def test_evaluate_run_and_report(digits_run, tmp_path):
    assert run("evaluate", "--run", digits_run, "--num", 40, "--steps", 2) == 0
    res = json.loads((digits_run / "evaluation.json").read_text())
    assert res["nfe"] == 2 and res["metrics"]["num_samples"] == 40
    assert run("evaluate", "--run", digits_run, "--num", 20, "--steps", 2, "--nll", "--nll-num", 8) == 0
    nll = json.loads((digits_run / "evaluation.json").read_text())["nll"]
    assert nll["unit"] == "bits/dim" and nll["n"] == 8 and 0 < nll["nll"] < 20
    assert set(nll["terms"]) >= {"prior", "diffusion", "reconstruction"}
    assert run("report", "--run", digits_run, "--methods", "ddim:2,euler:3", "--num", 30, "--out", tmp_path / "rep") == 0
    rows = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    assert [(r["sampler"], r["nfe"]) for r in rows] == [("ddim", 2), ("euler", 3)]
    assert (tmp_path / "rep" / "trilemma.png").stat().st_size > 1000
    assert "| ddim:2 |" in (tmp_path / "rep" / "report.md").read_text()


def test_evaluate_nll_by_the_ode(digits_run, tmp_path):
    """--nll-method ode: the probability-flow likelihood of the first --nll-num test digits, as the library gives it."""
    import torch

    from difflab.likelihood import evaluate_nll
    from difflab.training import load_run

    out = tmp_path / "e.json"
    assert run("evaluate", "--run", digits_run, "--num", 10, "--steps", 2, "--nll", "--nll-method", "ode",
               "--nll-num", 3, "--json", out) == 0
    nll = json.loads(out.read_text())["nll"]
    assert nll["method"] == "ode" and nll["unit"] == "bits/dim" and nll["n"] == 3 and nll["terms"] == {}
    ref = evaluate_nll(load_run(digits_run).model, load("digits", "test").batch(torch.arange(3)), method="ode", seed=0)
    assert nll["nll"] == pytest.approx(ref["nll"], rel=1e-9) and 0 < nll["nll"] < 20


def test_report_refuses_a_shape_mismatch(digits_run, tmp_path, capsys):
    assert run("report", "--run", digits_run, "--data", "toy:moons", "--methods", "ddim:2", "--num", 10,
               "--out", tmp_path / "rep") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{digits_run} makes samples of shape (1, 8, 8), but toy:moons has (2,)" in err
    assert not (tmp_path / "rep").exists()


@pytest.mark.parametrize("args,message", [
    (["evaluate", "--samples", "{tmp}/none.npz", "--data", "digits"], "does not exist"),
    (["evaluate", "--samples", "{tmp}/bad.npz", "--data", "digits"], "neither 'images' nor 'samples'"),
    (["evaluate", "--samples", "{tmp}/bad.npz"], "needs --data"),
    (["evaluate", "--samples", "{tmp}/wrong.npz", "--data", "digits"], "samples have shape"),
    (["report", "--run", "{tmp}/none", "--out", "{tmp}/r", "--methods", "warp:3"], "unknown sampler 'warp'"),
    (["report", "--run", "{tmp}/none", "--out", "{tmp}/r", "--methods", "ddim"], "positive step count"),
])
def test_evaluate_bad_input(tmp_path, capsys, args, message):
    np.savez(tmp_path / "bad.npz", other=np.zeros(3))
    np.savez(tmp_path / "wrong.npz", images=np.zeros((20, 28, 28, 1), np.uint8))
    assert run(*[a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
