"""The run's stored grid (RUN/grids.json) is what evaluate and report sample with, as sample does."""
import json

import pytest
import torch

import difflab
from difflab.errors import UserError
from difflab.samplers import grids, sample_batches
from difflab.samplers.tuned import denoised_mode, entry, key, merged, run_grid


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    from difflab.cli.main import main

    d = tmp_path_factory.mktemp("tuned")
    cfg = d / "cfg.json"
    cfg.write_text(json.dumps({"network": {"hidden": 16, "depth": 2}, "batch_size": 16, "sample_steps": 2,
                               "schedule": {"kind": "linear", "T": 100}}))
    assert main(["train", "--data", "toy:moons", "--out", str(d / "run"), "--steps", "2", "--config", str(cfg),
                 "--quiet"]) == 0
    return d / "run"


def _store_three_levels(run):
    """A 3-level ddim grid stored under the 6-call key: a consumer that honours it makes 3 calls, not 6."""
    model = difflab.training.load_run(run).model
    sig = grids.karras(model.schedule, 3)
    (run / "grids.json").write_text(json.dumps({key("ddim", 6, "none"): entry("ddim", 3, sig)}))
    return model, sig


def test_run_grid_reads_checks_and_merges(tmp_path):
    assert run_grid(tmp_path, "ddim", 6, "none") is None and run_grid(None, "ddim", 6) is None
    (tmp_path / "grids.json").write_text(json.dumps({"ddim:6:none": {"sigmas": [3.0, 1.0, 0.0]}}))
    assert torch.equal(run_grid(tmp_path, "ddim", 6, "none"), torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64))
    assert set(merged(tmp_path, {"x:1:none": {}})) == {"ddim:6:none", "x:1:none"}
    (tmp_path / "grids.json").write_text(json.dumps({"ddim:6:none": {"sigmas": [1.0, 3.0, 0.0]}}))
    with pytest.raises(UserError, match="ddim:6:none has no valid 'sigmas'"):
        run_grid(tmp_path, "ddim", 6, "none")
    assert denoised_mode(False) == "none" and denoised_mode(True) == "clip"
    assert denoised_mode(True, threshold=0.99) == "threshold:0.99"


def test_sample_batches_equals_sample_on_one_batch_with_the_grid(toy_run):
    model, sig = _store_three_levels(toy_run)
    x, calls = sample_batches(model, (2,), 8, "ddim", 6, seed=1, grid=run_grid(toy_run, "ddim", 6, "none"))
    from difflab.samplers.seeds import PerSample

    g = PerSample(1, range(8))  # a seed per sample: sample i's x_T from its own generator
    want, n = difflab.sample(model, g.prior(model.schedule, (2,)), "ddim", grid=sig, generator=g, return_nfe=True)
    assert calls == n == 3 and torch.allclose(x, want, atol=1e-6)
    x3, _ = sample_batches(model, (2,), 8, "ddim", 6, seed=1, batch_size=3, grid=sig)
    assert torch.allclose(x3, x, atol=1e-6)  # the samples do not depend on the batch size


def test_evaluate_and_report_use_the_runs_tuned_grid(toy_run, tmp_path):
    from difflab.cli.main import main

    _store_three_levels(toy_run)
    common = ["--run", str(toy_run), "--num", "20"]
    assert main(["evaluate", *common, "--sampler", "ddim", "--steps", "6", "--json", str(tmp_path / "e.json")]) == 0
    ev = json.loads((tmp_path / "e.json").read_text())
    assert ev["nfe"] == 3 and ev["tuned_grid"] is True
    assert main(["evaluate", *common, "--sampler", "ddim", "--steps", "5", "--json", str(tmp_path / "f.json")]) == 0
    ev = json.loads((tmp_path / "f.json").read_text())
    assert ev["nfe"] == 5 and ev["tuned_grid"] is False
    assert main(["report", *common, "--methods", "ddim:6,ddim:5", "--ref-num", "20", "--out", str(tmp_path / "r")]) == 0
    rows = json.loads((tmp_path / "r" / "report.json").read_text())["rows"]
    assert [(r["nfe"], r["tuned_grid"]) for r in rows] == [(3, True), (5, False)]
