"""Several processes (torch.distributed, gloo on the CPU) train like one process with the whole batch."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MLP
from difflab.data import load
from difflab.training import TrainConfig, train
from difflab.training.checkpoint import CHECKPOINT, load_checkpoint

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "difflab"]
BASE = {"network": TINY_MLP, "batch_size": 16, "log_every": 5, "checkpoint_every": 10, "sample_steps": 2,
        "warmup_steps": 5, "schedule": {"kind": "linear", "T": 100}}


def _cfg_file(tmp_path, **fields):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(BASE | fields))
    return str(path)


def _run(cmd, timeout=900):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout[-1500:]}\nstderr: {r.stderr[-4000:]}"
    return r


def _assert_close(a_dir, b_dir):
    a, b = load_file(str(a_dir / CHECKPOINT)), load_file(str(b_dir / CHECKPOINT))
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            # the only difference is the order of float32 sums (two half-batch means averaged vs one mean)
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


def test_two_processes_match_one_process(tmp_path):
    cfg = _cfg_file(tmp_path)
    _run([sys.executable, "-m", "difflab", "train", "--data", "toy:moons", "--out",
          tmp_path / "two", "--steps", 20, "--config", cfg, "--quiet", "--nproc", 2])
    train(TrainConfig.load(cfg, steps=20), load("toy:moons"), tmp_path / "one", progress=False)
    _assert_close(tmp_path / "one", tmp_path / "two")
    assert json.loads((tmp_path / "two" / "config.json").read_text())["processes"] == 2
    assert (tmp_path / "two" / "log.csv").read_text().count("\n") == 5  # rank 0 alone writes the log


def test_learned_schedule_synchronised_and_multi_process_resume(tmp_path):
    """VDM's learned schedule lives outside the network and is trained in both processes; resume continues exactly."""
    cfg = _cfg_file(tmp_path, objective="vdm", schedule={"kind": "learned"})
    cmd = [*TORCHRUN, "train", "--data", "toy:moons", "--out", tmp_path / "two", "--config", cfg, "--quiet"]
    _run([*cmd, "--steps", 10])
    _run([*cmd, "--steps", 20, "--resume"])
    train(TrainConfig.load(cfg, steps=20), load("toy:moons"), tmp_path / "one", progress=False)
    assert load_checkpoint(tmp_path / "two").step == 20
    ck = load_checkpoint(tmp_path / "one")
    assert any(k.startswith("schedule.") for k in ck.modules["model"])  # the schedule's parameters are checkpointed
    _assert_close(tmp_path / "one", tmp_path / "two")


def test_minute_budget_stops_every_process_at_the_same_step(tmp_path):
    cfg = _cfg_file(tmp_path, checkpoint_every=10**6)
    r = _run([*TORCHRUN, "train", "--data", "toy:moons", "--out", tmp_path / "r", "--minutes", 0.05, "--config", cfg,
              "--quiet"])
    step = load_checkpoint(tmp_path / "r").step
    assert 0 < step < TrainConfig.steps and f"trained {step} steps" in r.stdout  # the minutes stopped it, not the steps
    # both processes made the same `step` synchronised steps: the weights are those of one process trained that long
    train(TrainConfig.load(cfg, steps=step), load("toy:moons"), tmp_path / "one", progress=False)
    _assert_close(tmp_path / "one", tmp_path / "r")


def test_nproc_checks_its_argument(tmp_path, capsys):
    from difflab.cli.main import main

    assert main(["train", "--data", "toy:moons", "--out", str(tmp_path / "r"), "--nproc", "0"]) == 2
    assert "--nproc must be at least 1" in capsys.readouterr().err


def test_batch_must_split_evenly():
    from difflab.utils.config import ConfigError

    with pytest.raises(ConfigError, match="divisible by accumulate"):
        TrainConfig(batch_size=10, accumulate=3)


def test_nproc_launches_in_process_and_returns_the_workers_exit_status(tmp_path):
    """--nproc runs the workers through torch's elastic launcher: a worker's user error (exit 2, one line) is the
    command's exit status, with no launcher traceback after it."""
    r = subprocess.run([sys.executable, "-m", "difflab", "train", "--data", str(tmp_path / "missing"), "--out",
                        str(tmp_path / "r"), "--steps", "1", "--nproc", "2"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "no such file or directory" in r.stderr and "Traceback" not in r.stderr and "ChildFailedError" not in r.stderr


def test_workers_share_the_cores_out_unless_the_thread_count_is_set(monkeypatch):
    """--nproc gives each worker cores // N torch threads (torchrun's default is one), leaves a user's
    OMP_NUM_THREADS alone and restores the launcher's environment afterwards."""
    import torch.distributed.launcher.api as api

    from difflab.training import distributed

    assert [distributed.worker_threads(n, cores=16) for n in (1, 2, 3, 32)] == [16, 8, 5, 1]
    seen = []
    monkeypatch.setattr(api, "elastic_launch", lambda config, cmd: lambda *a: seen.append(
        os.environ.get("OMP_NUM_THREADS")))
    monkeypatch.setattr(distributed, "usable_cores", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert distributed.relaunch(2, ["--version"]) == 0
    assert seen == ["8"] and "OMP_NUM_THREADS" not in os.environ
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert distributed.relaunch(2, ["--version"]) == 0
    assert seen == ["8", "3"] and os.environ["OMP_NUM_THREADS"] == "3"
