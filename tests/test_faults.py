"""Fault drills of ``difflab train``: SIGKILL (also inside a checkpoint write), SIGTERM, Ctrl-C and a full disk.

Training runs in a child process (``python -m difflab``) that the test kills; every wait has a deadline. The
resumed runs are compared bitwise with an uninterrupted run of the same total steps (CPU, one thread).
"""
import csv
import errno
import json
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MLP
from difflab.cli.main import main
from difflab.training import checkpoint as checkpoint_module
from difflab.training.checkpoint import CHECKPOINT, load_checkpoint

STEPS = 100  # length of the straight run a resumed run is compared with (longer if the kill landed later)
ENDLESS = 10**7  # the killed children's budget: they never finish before the signal, however slow this process is
EVERY = 5  # checkpoint_every and log_every of the drills
DEADLINE = 240.0  # seconds: generous for a heavily loaded machine, and nothing can hang past it


def _config(path: Path, **fields) -> Path:
    cfg = {"network": TINY_MLP, "batch_size": 16, "log_every": EVERY, "checkpoint_every": EVERY, "sample_steps": 3,
           "warmup_steps": 5, "schedule": {"kind": "linear", "T": 100}, **fields}
    path.write_text(json.dumps(cfg))
    return path


def _train_args(run: Path, cfg: Path, steps: int = STEPS, *extra: str) -> list[str]:
    return ["train", "--data", "toy:moons", "--out", str(run), "--steps", str(steps), "--config", str(cfg), "--quiet",
            "--threads", "1", *extra]


@contextmanager
def _child(cmd: list[str], cwd: Path):
    """A child process with captured output, killed on the way out whatever happens.  SIGINT is reset to its
    default in the child: a test run started in the background by a non-interactive shell inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt."""
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=DEADLINE)


def _wait_for(condition, p: subprocess.Popen) -> None:
    """Poll until condition() holds; fail if the child exits first or the deadline passes."""
    end = time.monotonic() + DEADLINE
    while not condition():
        if p.poll() is not None:
            pytest.fail(f"the child exited with {p.returncode} first: {p.stderr.read()}")
        if time.monotonic() > end:
            pytest.fail("the child did not get there in time")
        time.sleep(0.005)


def _stop(p: subprocess.Popen, sig: signal.Signals) -> str:
    """Send sig and wait for the child to exit; its stderr."""
    p.send_signal(sig)
    _, err = p.communicate(timeout=DEADLINE)
    return err


def _difflab_line(err: str) -> str:
    """The one line the command wrote about the failure ("difflab: ..."); no traceback. Other lines (warnings of a
    library, for example) may come and go with the environment, so only this line is checked."""
    lines = [ln for ln in err.splitlines() if ln.startswith("difflab:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _says(line: str, *words: str) -> None:
    """Every key word (or path) occurs in line."""
    missing = [w for w in words if str(w) not in line]
    assert not missing, f"{line!r} lacks {missing}"


def _assert_bitwise_equal(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def _log_steps(run: Path) -> list[int]:
    with (run / "log.csv").open() as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _step(run: Path) -> int:
    return load_checkpoint(run).step


def _temps(run: Path) -> list[Path]:
    return sorted(run.glob(".checkpoint.*"))


@pytest.fixture(scope="module")
def drill(tmp_path_factory):
    """The drills' config file and straight(n): the folder of an uninterrupted in-process run of n steps (cached).
    The constant learning rate after warm-up makes step k's weights independent of the step budget, so a child
    trained on an endless budget and resumed to n steps must equal it bitwise."""
    d = tmp_path_factory.mktemp("faults")
    cfg = _config(d / "cfg.json")

    def straight(n: int) -> Path:
        out = d / f"straight{n}"
        if not (out / CHECKPOINT).exists():
            assert main(_train_args(out, cfg, n)) == 0
        return out

    return cfg, straight


def _start(run: Path, cfg: Path, tmp_path: Path, steps: int = ENDLESS):
    return _child([sys.executable, "-m", "difflab", *_train_args(run, cfg, steps)], tmp_path)


def _target(stopped_at: int) -> int:
    """Steps of the comparison: STEPS, or a few checkpoints past a kill that landed late on a loaded machine."""
    return max(STEPS, stopped_at + 4 * EVERY)


def test_sigkill_then_resume_equals_an_uninterrupted_run_bitwise(tmp_path, drill):
    cfg, straight = drill
    run = tmp_path / "run"
    with _start(run, cfg, tmp_path) as p:
        _wait_for((run / CHECKPOINT).exists, p)
        _stop(p, signal.SIGKILL)
    assert p.returncode == -signal.SIGKILL
    killed_at = _step(run)
    assert 0 < killed_at and killed_at % EVERY == 0
    n = _target(killed_at)
    assert main(_train_args(run, cfg, n, "--resume")) == 0
    assert _step(run) == n
    _assert_bitwise_equal(straight(n) / CHECKPOINT, run / CHECKPOINT)
    assert _log_steps(run) == list(range(EVERY, n + 1, EVERY))  # no row of the killed steps twice


# Run by the child: the safetensors writer inside atomic_write, from the second checkpoint on, writes half the
# file, leaves a marker naming the file and sleeps until it is killed.
HANG_IN_WRITE = """
import os, sys, time
import safetensors.torch
import difflab.training.checkpoint as ck

marker, calls = sys.argv[1], []

def half_then_hang(tensors, filename, metadata=None):
    calls.append(filename)
    if len(calls) == 1:
        return safetensors.torch.save_file(tensors, filename, metadata=metadata)
    data = safetensors.torch.save(tensors, metadata=metadata)
    with open(filename, "wb") as f:
        f.write(data[: len(data) // 2])
    with open(marker + ".tmp", "w") as f:
        f.write(filename)
    os.replace(marker + ".tmp", marker)
    time.sleep(600)

ck.save_file = half_then_hang
from difflab.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def test_sigkill_inside_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    cfg = _config(tmp_path / "cfg.json", checkpoint_every=10, log_every=2)
    run, marker, script = tmp_path / "run", tmp_path / "writing", tmp_path / "hang_in_write.py"
    script.write_text(HANG_IN_WRITE)
    with _child([sys.executable, str(script), str(marker), *_train_args(run, cfg, 30)], tmp_path) as p:
        _wait_for(marker.exists, p)
        _stop(p, signal.SIGKILL)
    assert p.returncode == -signal.SIGKILL
    half = Path(marker.read_text())
    assert half.parent == run and half.name != CHECKPOINT
    assert half.stat().st_size < (run / CHECKPOINT).stat().st_size  # killed halfway through the write
    ck = load_checkpoint(run)  # the previous checkpoint, whole
    assert ck.step == 10 and set(ck.modules) == {"model"}
    # SIGKILL runs no cleanup: the half-written temporary file stays beside the checkpoint ...
    assert _temps(run) == [half] and re.fullmatch(r"\.checkpoint\..+\.safetensors", half.name)
    # ... until the resumed run's next checkpoint removes it
    assert main(_train_args(run, cfg, 30, "--resume")) == 0
    assert _step(run) == 30
    assert _temps(run) == []
    assert _log_steps(run) == list(range(2, 31, 2))  # rows 12..20 of the killed run were dropped, not repeated


def test_sigterm_checkpoints_the_step_it_names_and_resume_is_bitwise(tmp_path, drill):
    cfg, straight = drill
    run = tmp_path / "run"
    with _start(run, cfg, tmp_path) as p:
        _wait_for((run / CHECKPOINT).exists, p)
        err = _stop(p, signal.SIGTERM)
    assert p.returncode == 143, err
    m = re.search(r"SIGTERM.*step (\d+).*checkpoint.*? to (.+?);.*--resume", _difflab_line(err))
    assert m, err
    step = int(m.group(1))
    assert Path(m.group(2)) == run and 0 < step
    assert _step(run) == step and _temps(run) == []
    assert not (run / "samples.png").exists()  # a terminated run is not finished
    n = _target(step)
    assert main(_train_args(run, cfg, n, "--resume")) == 0
    _assert_bitwise_equal(straight(n) / CHECKPOINT, run / CHECKPOINT)
    steps = _log_steps(run)
    assert steps == sorted(set(steps)) and steps[-1] == n and step in steps


def test_ctrl_c_exits_130_keeping_the_last_checkpoint(tmp_path, drill):
    cfg, _ = drill
    run = tmp_path / "run"
    with _start(run, cfg, tmp_path) as p:
        _wait_for((run / CHECKPOINT).exists, p)
        err = _stop(p, signal.SIGINT)
    assert p.returncode == 130, err
    _says(_difflab_line(err), "interrupted", "last checkpoint is kept")
    kept = _step(run)  # loads: an interrupt inside a write removes its temporary file
    assert 0 < kept < ENDLESS and kept % EVERY == 0 and _temps(run) == []


def _full_disk(monkeypatch, where: str, from_call: int) -> None:
    """Writes of checkpoint.safetensors fail with ENOSPC from call from_call on (in save_file or in os.replace)."""
    calls = []

    def no_space(name: str):
        calls.append(name)
        if len(calls) >= from_call:
            raise OSError(errno.ENOSPC, "No space left on device", name)

    if where == "save_file":
        real = checkpoint_module.save_file

        def save_file(tensors, filename, metadata=None):
            with open(filename, "wb") as f:  # a full disk takes part of the file first
                f.write(b"\0" * 1000)
            no_space(filename)
            real(tensors, filename, metadata=metadata)

        monkeypatch.setattr(checkpoint_module, "save_file", save_file)
    else:
        real_replace = checkpoint_module.os.replace

        def replace(src, dst):
            if Path(dst).name == CHECKPOINT:
                no_space(str(dst))
            real_replace(src, dst)

        monkeypatch.setattr(checkpoint_module.os, "replace", replace)


@pytest.mark.parametrize("where", ["save_file", "replace"])
def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch, where):
    cfg, run = _config(tmp_path / "cfg.json", checkpoint_every=10), tmp_path / "run"
    _full_disk(monkeypatch, where, from_call=2)
    assert main(_train_args(run, cfg, 30)) == 2
    err = capsys.readouterr().err
    _says(_difflab_line(err), "difflab: error:", run / CHECKPOINT, "No space left on device",
          "previous checkpoint is kept")
    assert _step(run) == 10 and _temps(run) == []
    monkeypatch.undo()  # space freed: the run resumes from the kept checkpoint
    assert main(_train_args(run, cfg, 30, "--resume")) == 0
    assert _step(run) == 30
    assert _log_steps(run) == list(range(5, 31, 5))  # rows 15 and 20 of the failed run are not repeated


def test_full_disk_before_any_checkpoint_says_none_was_written(tmp_path, capsys, monkeypatch):
    cfg, run = _config(tmp_path / "cfg.json", checkpoint_every=10), tmp_path / "run"
    _full_disk(monkeypatch, "save_file", from_call=1)
    assert main(_train_args(run, cfg, 30)) == 2
    err = capsys.readouterr().err
    _says(_difflab_line(err), "difflab: error:", run / CHECKPOINT, "No space left on device",
          "no checkpoint was written")
    assert not (run / CHECKPOINT).exists() and _temps(run) == []


def test_full_disk_at_the_log_is_one_line_and_keeps_the_checkpoint(tmp_path, capsys, monkeypatch):
    cfg, run = _config(tmp_path / "cfg.json", checkpoint_every=10), tmp_path / "run"
    real_open = Path.open

    def open_(self, mode="r", *args, **kwargs):  # the disk fills up once the first checkpoint is written
        if self.name == "log.csv" and mode[0] in "wa" and (run / CHECKPOINT).exists():
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    assert main(_train_args(run, cfg, 30)) == 2
    err = capsys.readouterr().err
    _says(_difflab_line(err), "difflab: error:", run / "log.csv", "No space left on device",
          "last checkpoint is kept")
    assert _step(run) == 10
