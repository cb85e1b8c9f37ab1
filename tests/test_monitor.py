"""--logger tensorboard: the named losses, LR, samples/s and previews beside log.csv; a clear error without the extra."""
import csv
import sys

import pytest

from difflab.cli.main import main


def _train(tmp_path, tiny_config, out, *extra):
    return main(["train", "--data", "digits", "--out", str(out), "--steps", "4", "--sample-every", "2",
                 "--config", tiny_config("unet", batch_size=8, log_every=2, sample_steps=2), "--quiet", *extra])


def test_tensorboard_logs_what_log_csv_logs(tmp_path, tiny_config):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert _train(tmp_path, tiny_config, tmp_path / "run", "--logger", "tensorboard") == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/samples_per_s", "train/grad_norm"} <= set(tags["scalars"])
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [int(r["step"]) for r in rows] == [2, 4]
    assert [e.value for e in logged] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-5)
    assert all(e.value > 0 for e in events.Scalars("train/samples_per_s"))
    assert [e.step for e in events.Images("samples")] == [2, 4]


def test_tensorboard_missing_is_one_line(tmp_path, tiny_config, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    assert _train(tmp_path, tiny_config, tmp_path / "run", "--logger", "tensorboard") == 2
    err = capsys.readouterr().err
    assert err.startswith("difflab: error: --logger tensorboard needs the tensorboard package") and err.count("\n") == 1
