"""Statistics over shards combine into the statistics of the whole; evaluate reads a shard folder one file at a time."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY_UNET
from difflab.cli.main import main
from difflab.evaluation import frechet_distance
from difflab.evaluation.inception import FIDInception
from difflab.evaluation.metrics import gaussian_stats
from difflab.evaluation.shards import MomentSums, frechet_from_sums


def test_summed_moments_equal_the_statistics_of_the_concatenation(tmp_path):
    rng = np.random.default_rng(0)
    shards = [rng.normal(3.0, 2.0, (n, 5)) @ rng.normal(size=(5, 5)) for n in (7, 1, 30)]
    whole = np.concatenate(shards)
    sums = MomentSums.of(shards[0]) + MomentSums.of(shards[1]) + MomentSums.of(shards[2])
    mu, cov = sums.mean_cov()
    mu_ref, cov_ref = gaussian_stats(whole)
    np.testing.assert_allclose(mu, mu_ref, rtol=1e-12)
    np.testing.assert_allclose(cov, cov_ref, rtol=1e-9, atol=1e-9 * np.abs(cov_ref).max())
    other = rng.normal(size=(40, 5))
    assert frechet_from_sums(sums, MomentSums.of(other)) == pytest.approx(frechet_distance(whole, other), rel=1e-9)
    sums.save(tmp_path / "s.npz")
    back = MomentSums.load(tmp_path / "s.npz")
    assert back.n == 38 and np.array_equal(back.outer, sums.outer)


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    (d / "cfg.json").write_text(json.dumps({"network": TINY_UNET, "batch_size": 8, "sample_steps": 2,
                                            "schedule": {"kind": "linear", "T": 50}}))
    assert main(["train", "--data", "digits", "--out", str(d / "run"), "--steps", "2", "--config", str(d / "cfg.json"),
                 "--quiet"]) == 0
    args = ["sample", "--run", str(d / "run"), "--num", "12", "--steps", "2", "--batch-size", "5"]
    assert main([*args, "--out", str(d / "folder")]) == 0 and main([*args, "--out", str(d / "all.npz")]) == 0
    return d


def test_evaluate_a_shard_folder_like_the_merged_file(shard_folder):
    d = shard_folder
    for name in ("folder", "all.npz"):
        assert main(["evaluate", "--samples", str(d / name), "--data", "digits", "--json", str(d / f"{name}.json")]) == 0
    a = json.loads((d / "folder.json").read_text())["metrics"]
    b = json.loads((d / "all.npz.json").read_text())["metrics"]
    assert a.keys() == b.keys() and "class_kl" in a
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), k


def _inception_args(d):
    return ["evaluate", "--samples", str(d / "folder"), "--data", "digits", "--features", "inception", "--ref-num", "6"]


def test_inception_needs_a_local_weights_file(shard_folder, monkeypatch, capsys):
    monkeypatch.delenv("DIFFLAB_INCEPTION_WEIGHTS", raising=False)
    assert main(_inception_args(shard_folder)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--inception-weights PATH" in err


@pytest.mark.slow  # 18 images through a 299 x 299 Inception-v3 on the CPU
def test_evaluate_with_inception_features(shard_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    base = _inception_args(shard_folder)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = FIDInception()
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    assert main([*base, "--inception-weights", str(tmp_path / "w.safetensors"), "--json", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())["metrics"]
    assert m["num_samples"] == 12 and m["num_reference"] == 6 and m["fd"] > 0
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1  # the reference features, cached
