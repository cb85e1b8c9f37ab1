"""The task registry (tasks/registry.py): one entry gives a task its `difflab edit` command, its checks and its place
on the page; the runs' declared tasks follow from it."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from difflab.errors import UserError
from difflab.tasks import registry
from difflab.tasks.registry import TASKS, Option, Task, tasks_for


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    from difflab.cli.main import main

    d = tmp_path_factory.mktemp("registry")
    cfg = d / "cfg.json"
    cfg.write_text(json.dumps({"network": {"channels": 8, "channel_mult": [1, 2], "num_res_blocks": 1,
                                           "attention_levels": [], "num_heads": 2, "groups": 4, "dropout": 0.0},
                               "batch_size": 16, "sample_steps": 2, "schedule": {"kind": "linear", "T": 100}}))
    assert main(["train", "--data", "digits", "--out", str(d / "run"), "--steps", "2", "--config", str(cfg),
                 "--quiet"]) == 0
    return d / "run"


def test_tasks_by_conditioning_kind():
    assert tasks_for("none") == ("inpaint", "sdedit", "uncrop", "panorama")
    assert tasks_for("captions") == ("inpaint", "sdedit")
    assert tasks_for("inpaint") == ("inpaint",)
    assert tasks_for("superres") == ("superres",) and tasks_for("colorize") == ("colorize",)
    assert tasks_for("labels") == ()


@pytest.mark.parametrize("value, message", [
    (2, "must lie in [0, 1], got 2"), (float("nan"), "must be a finite number"), (True, "must be a finite number"),
    ("0.5", "must be a finite number"), (10**400, "must lie in [0, 1]")])
def test_option_checks_name_the_option_and_its_range(value, message):
    with pytest.raises(UserError, match=r"--strength " + message.replace("[", r"\[").replace("]", r"\]")):
        Option("strength", float, 0.5, lo=0.0, hi=1.0).check(value)


def test_option_defaults_integers_and_required():
    jump = Option("jump", int, 5, lo=1, hi=10)
    assert jump.check(None) == 5 and jump.check(3.0) == 3 and isinstance(jump.check(3.0), int)
    with pytest.raises(UserError, match="--jump must be an integer"):
        jump.check(2.5)
    with pytest.raises(UserError, match="--width is required"):
        Option("width", int, required=True).check(None)


def test_a_run_declares_the_registry_tasks_of_its_conditioning(digits_run):
    from difflab.runs import load

    assert load(digits_run, device="cpu").tasks == ("generate", *tasks_for("none"))


def test_one_registry_entry_is_a_new_edit_command_with_checked_options(digits_run, tmp_path, monkeypatch, capsys):
    from difflab.cli.main import main

    def negate(job):  # a toy task: the input mirrored in gray level, scaled by an option
        return (-job.image * job.values["gain"]).clamp(-1, 1)

    toy = Task("negate", "mirror the gray levels", ("none",), negate, (Option("gain", float, 1.0, "a factor", 0, 1),))
    monkeypatch.setitem(TASKS, "negate", toy)
    Image.fromarray(np.full((8, 8), 64, np.uint8)).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    assert main(["edit", "negate", "--run", str(digits_run), "--input", str(tmp_path / "in.png"), "--out", str(out),
                 "--gain", "0.5"]) == 0
    y = np.asarray(Image.open(out), dtype=np.float64) / 127.5 - 1
    assert np.allclose(y, 0.5 * (1 - 64 / 127.5), atol=1 / 127.5)
    capsys.readouterr()
    assert main(["edit", "negate", "--run", str(digits_run), "--input", str(tmp_path / "in.png"),
                 "--out", str(tmp_path / "o2.png"), "--gain", "3"]) == 2
    assert "--gain must lie in [0, 1], got 3" in capsys.readouterr().err


def test_the_page_offers_the_registry_page_tasks_the_run_supports(digits_run):
    from difflab.serve.jobs import EDIT_TASKS, Service

    svc = Service(digits_run, workers=1)
    try:
        assert EDIT_TASKS == tuple(t for t in TASKS if TASKS[t].page)
        assert svc.info()["tasks"] == [t for t in tasks_for("none") if TASKS[t].page]
        with pytest.raises(UserError, match="unknown task 'uncrop'"):  # a CLI-only task is not a page task
            svc.edit({"task": "uncrop"})
    finally:
        svc.close()


def test_registry_tasks_run_through_the_job_contract():
    from difflab.models.denoiser import from_x0
    from difflab.schedules import get

    model = from_x0(lambda x, t, *c: torch.zeros_like(x), get("linear", T=50))  # predicts x_0 = 0 everywhere
    image = torch.full((1, 1, 2, 2), 0.5)
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    common = {"sampler": "ddim", "steps": 5, "generator": torch.Generator().manual_seed(0)}
    job = registry.Job(model, image, mask, None, None, TASKS["inpaint"].values(lambda k: None), common)
    y = TASKS["inpaint"].run(job)
    assert torch.equal(y[..., mask > 0], image[..., mask > 0])  # the kept pixels stay exactly
    assert abs(float(y[0, 0, 0, 1])) < 1e-4  # the generated one is the model's x_0 (DDIM ends on it)
    sd = TASKS["sdedit"]
    y = sd.run(registry.Job(model, image, None, None, None, sd.values(lambda k: 1.0 if k == "strength" else None),
                            common))
    assert y.abs().max() < 1e-4  # strength 1 ignores the guide: the model's x_0
