import json

from conftest import TINY_MLP
from difflab.cli import report as report_cli
from difflab.cli.main import main
from difflab.data import Dataset, load

TINY_GAN = {"width": 16, "depth": 2, "z_dim": 4, "emb_dim": 8}


def test_report_over_runs_of_every_family(tmp_path, monkeypatch):
    runs = []
    for fam, extra in [("gan", []), ("ddgan", ["--timesteps", "2"]), ("vae", [])]:
        cfg = tmp_path / f"{fam}.json"
        cfg.write_text(json.dumps({"network": TINY_GAN if fam != "vae" else {"width": 16}, "batch_size": 32}))
        assert main(["train", "--data", "toy:25gaussians", "--family", fam, "--steps", "3", "--config", str(cfg),
                     "--out", str(tmp_path / fam), "--quiet", *extra]) == 0
        runs.append(str(tmp_path / fam))
    dcfg = tmp_path / "d.json"
    dcfg.write_text(json.dumps({"network": TINY_MLP, "batch_size": 32, "schedule": {"kind": "linear", "T": 50}}))
    assert main(["train", "--data", "toy:25gaussians", "--steps", "3", "--config", str(dcfg), "--out",
                 str(tmp_path / "diff"), "--quiet"]) == 0
    full = load("toy:25gaussians")  # score against 1000 of its points: the 2-D metrics on 20000 take most of a minute
    monkeypatch.setattr(report_cli, "load", lambda spec, *a, **k: Dataset(full.x[:1000], None, full.spec))
    out = tmp_path / "rep"
    assert main(["report", "--run", *runs, str(tmp_path / "diff"), "--methods", "ddim:2,ddim:3", "--num", "60",
                 "--out", str(out)]) == 0
    rows = json.loads((out / "report.json").read_text())["rows"]
    by = {r["method"]: r for r in rows}
    assert [r["family"] for r in rows] == ["gan", "ddgan", "vae", "diffusion", "diffusion"]
    assert by["ddgan"]["nfe"] == 2 and by["gan"]["nfe"] == 1 and by["diff ddim:3"]["nfe"] == 3
    for r in rows:
        assert r["params"] > 0 and r["sec_per_1000"] > 0 and 0 <= r["modes"] <= 25 and 0 <= r["recall"] <= 1
    assert "nll" in by["vae"] and "nll" not in by["gan"]
    md = (out / "report.md").read_text()
    table = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in md.splitlines() if ln.startswith("| ")]
    head, body = table[0], table[1:]
    assert head[:3] == ["method", "family", "nfe"] and head[-3:] == ["modes", "high_quality", "nll"], head
    assert [(b[0], b[1]) for b in body] == [(r["method"], r["family"]) for r in rows]
    assert body[rows.index(by["vae"])][-1] != "" and body[rows.index(by["gan"])][-1] == ""  # nll: the VAE's only
    assert (out / "trilemma.png").stat().st_size > 1000


def test_report_on_a_family_this_version_does_not_know_is_one_line(tmp_path, capsys):
    from difflab.training.families import FAMILY_RUN_FORMAT

    run_dir = tmp_path / "future"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"format": FAMILY_RUN_FORMAT, "family": "flowmatch",
                                                     "data": "toy:25gaussians", "shape": [2], "train": {}}))
    assert main(["report", "--run", str(run_dir), "--out", str(tmp_path / "rep")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown family 'flowmatch'" in err and str(run_dir) in err
    assert not (tmp_path / "rep").exists()  # nothing written
