"""Sampling with a seed per sample: any number of processes gives the same samples, bit for bit."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import TINY_MLP, TINY_UNET
from difflab.cli.main import main
from difflab.evaluation.generate import PerSample, ShardError, batches, generate, merge, sample_seed


class _Rank:
    """A process of a W-process world, run one after the other (the barrier is a no-op here)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def barrier(self):
        pass


def _noise(idx, rng):
    return rng.randn((len(idx), 3, 2))


def test_per_sample_generators_ignore_the_batch():
    rng = PerSample(5, [7, 8, 9])
    x = rng.randn((3, 4))
    for row, i in zip(x, [7, 8, 9]):
        assert torch.equal(row, torch.randn(4, generator=torch.Generator().manual_seed(sample_seed(5, i))))
    assert torch.equal(PerSample(5, [8]).randn((1, 4))[0], x[1])
    with pytest.raises(ValueError, match="2 rows"):
        rng.randn((2, 4))


def test_shards_over_processes_and_batch_sizes(tmp_path):
    assert [list(r) for r in batches(10, 3, rank=1, size=2)] == [[3, 4, 5], [9]]
    generate(_noise, 10, 3, seed=1, folder=tmp_path / "one")
    for r in (1, 0):  # two processes, in either order
        generate(_noise, 10, 3, seed=1, folder=tmp_path / "two", world=_Rank(r, 2))
    generate(_noise, 10, 4, seed=1, folder=tmp_path / "four")
    one = merge(tmp_path / "one", 10)
    assert one.shape == (10, 3, 2)
    assert np.array_equal(one, merge(tmp_path / "two", 10)) and np.array_equal(one, merge(tmp_path / "four", 10))
    assert not np.array_equal(one, merge(_gen(tmp_path / "other", seed=2), 10))
    with pytest.raises(ShardError, match="other settings"):
        generate(_noise, 10, 3, seed=2, folder=tmp_path / "one")
    (tmp_path / "one" / "000000003.npz").unlink()
    with pytest.raises(ShardError, match="samples 3..5 are missing"):
        merge(tmp_path / "one", 10)
    generate(_noise, 10, 3, seed=1, folder=tmp_path / "one")  # an interrupted folder: the missing batch is redrawn
    assert np.array_equal(one, merge(tmp_path / "one", 10))
    (tmp_path / "one" / "000000006.npz").write_bytes(b"garbage")
    with pytest.raises(ShardError, match="000000006.npz is not a readable sample shard"):
        merge(tmp_path / "one", 10)


def _gen(folder, seed):
    generate(_noise, 10, 3, seed=seed, folder=folder)
    return folder


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    (d / "cfg.json").write_text(json.dumps({"network": TINY_UNET, "batch_size": 8, "sample_steps": 2,
                                            "schedule": {"kind": "linear", "T": 50}, "checkpoint_every": 10}))
    assert main(["train", "--data", "digits", "--out", str(d / "run"), "--steps", "2", "--config", str(d / "cfg.json"),
                 "--quiet"]) == 0
    return d / "run"


def test_two_processes_sample_like_one(image_run, tmp_path):
    """ddpm draws fresh noise at every step: each sample's comes from its own generator in every process."""
    args = ["sample", "--run", str(image_run), "--num", "7", "--steps", "3", "--sampler", "ddpm", "--batch-size", "2",
            "--seed", "4"]
    assert main([*args, "--out", str(tmp_path / "one.npz")]) == 0
    r = subprocess.run([sys.executable, "-m", "difflab", *args, "--out", str(tmp_path / "two.npz"), "--nproc", "2"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "7 samples" in r.stdout and "(2 processes)" in r.stdout
    with np.load(tmp_path / "one.npz") as a, np.load(tmp_path / "two.npz") as b:
        assert a["images"].shape == (7, 8, 8, 1) and np.array_equal(a["images"], b["images"])
    assert not list(tmp_path.glob(".*shards"))  # the shard folder is merged and removed
    assert main([*args[:-4], "--batch-size", "7", "--seed", "4", "--out", str(tmp_path / "folder")]) == 0
    with np.load(tmp_path / "one.npz") as a:  # another batch size: the same samples up to rounding
        diff = np.abs(merge(tmp_path / "folder", 7).astype(int) - a["images"].astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.05


def test_sample_points_into_a_folder(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"network": TINY_MLP, "batch_size": 16, "sample_steps": 2,
                                                   "schedule": {"kind": "linear", "T": 50}}))
    assert main(["train", "--data", "toy:moons", "--out", str(tmp_path / "run"), "--steps", "2", "--config",
                 str(tmp_path / "cfg.json"), "--quiet"]) == 0
    base = ["sample", "--run", str(tmp_path / "run"), "--num", "5", "--steps", "2", "--batch-size", "2"]
    assert main([*base, "--out", str(tmp_path / "s")]) == 0
    assert main([*base, "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert np.array_equal(f["samples"], merge(tmp_path / "s", 5))
    assert main([*base[:-1], "3", "--out", str(tmp_path / "s")]) == 2  # a folder of other settings is refused


def test_family_runs_sample_into_one_file(tmp_path, capsys):
    (tmp_path / "vae.json").write_text(json.dumps({"network": {"width": 8}, "batch_size": 16}))
    assert main(["train", "--data", "digits", "--family", "vae", "--steps", "1", "--config", str(tmp_path / "vae.json"),
                 "--out", str(tmp_path / "vae"), "--quiet"]) == 0
    assert main(["sample", "--run", str(tmp_path / "vae"), "--num", "3", "--out", str(tmp_path / "folder")]) == 2
    assert "shard folders and several processes are for diffusion runs" in capsys.readouterr().err
    assert main(["sample", "--run", str(tmp_path / "vae"), "--num", "3", "--out", str(tmp_path / "s.npz")]) == 0
