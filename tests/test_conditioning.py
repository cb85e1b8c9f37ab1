"""The conditioning object: one per run, the same at training, preview, sample, evaluate and report."""
import json
import math

import pytest
import torch

from conftest import TINY_UNET
from difflab.cli.main import main
from difflab.data import load
from difflab.errors import UserError
from difflab.training import TrainConfig, conditioning_for, load_run, train
from difflab.training.conditioning import Conditioning, LabelConditioning
from difflab.utils.random import BatchRandom


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cond") / "run"
    cfg = TrainConfig(network=TINY_UNET, conditional=True, batch_size=16, steps=3, sample_steps=2,
                      schedule={"kind": "linear", "T": 50})
    train(cfg, load("digits"), out, progress=False)
    return out


def test_rebuilt_from_the_run_config(labelled_run):
    c = load_run(labelled_run, device="cpu").conditioning
    assert isinstance(c, LabelConditioning) and c.num_classes == 10
    assert torch.equal(c.preview(12, "cpu")["y"], torch.arange(12) % 10)
    assert torch.equal(c.null(3, "cpu")["y"], torch.full((3,), 10))
    with pytest.raises(UserError, match="out of range"):
        c.labels(torch.tensor([3, 10]), "cpu")


def test_dropout_draws_split_like_the_whole_batch():
    """Rows of a split batch get exactly the dropout decisions the whole batch gets (processes, micro-batches)."""
    data = load("digits")
    c = conditioning_for(TrainConfig(conditional=True, p_uncond=0.5), data)
    idx = torch.arange(40)
    whole = c.draw(idx, BatchRandom(torch.Generator().manual_seed(3), 0, 40, 40), "cpu")["y"]
    parts = [c.draw(idx[lo:lo + 10], BatchRandom(torch.Generator().manual_seed(3), lo, lo + 10, 40), "cpu")["y"]
             for lo in range(0, 40, 10)]
    assert torch.equal(torch.cat(parts), whole)
    n, p = 40, 0.5
    assert abs(float((whole == 10).float().mean()) - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_unconditional_runs_have_no_condition():
    c = conditioning_for(TrainConfig(), load("toy:moons"))
    assert type(c) is Conditioning and c.draw(torch.arange(4), None, "cpu") is None and c.preview(4, "cpu") is None
    with pytest.raises(UserError, match="not class-conditional"):
        c.labels(torch.tensor([1]), "cpu")
    with pytest.raises(UserError, match="needs labelled data"):
        conditioning_for(TrainConfig(conditional=True), load("toy:moons"))


def test_evaluate_and_report_sample_a_conditional_run_by_class(labelled_run, tmp_path):
    assert main(["evaluate", "--run", str(labelled_run), "--num", "20", "--steps", "2", "--device", "cpu",
                 "--json", str(tmp_path / "e.json")]) == 0
    assert main(["report", "--run", str(labelled_run), "--num", "20", "--methods", "ddim:2", "--device", "cpu",
                 "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.md").is_file()


@pytest.mark.parametrize("fields, data", [
    ({}, "digits"), ({"conditional": True}, "digits"), ({"conditional": True, "text_encoder": "small"}, "digits"),
    ({"task": "superres", "scale": 2, "noise_aug": True, "aug_blur": 0.4}, "digits"),
    ({"task": "superres", "scale": 2, "text_encoder": "small", "conditional": True}, "digits"),
    ({"task": "inpaint"}, "digits"), ({"task": "colorize"}, "color:digits")])
def test_conditioning_round_trips_through_its_tagged_config(fields, data):
    from difflab.training.conditioning import conditioning_from_config

    c = conditioning_for(TrainConfig.from_dict(fields), load(data))
    back = conditioning_from_config(json.loads(json.dumps(c.config())))
    assert type(back) is type(c) and back.config() == c.config() and back.kind == c.kind


def test_a_run_stores_its_conditioning_and_sampling_reads_it(labelled_run):
    from difflab.training.conditioning import conditioning_of_run

    rc = json.loads((labelled_run / "config.json").read_text())
    assert rc["conditioning"] == {"kind": "labels", "num_classes": 10, "p_uncond": 0.1}
    rc["conditioning"]["p_uncond"] = 0.3  # the tagged record, not the recipe, is what is read
    assert conditioning_of_run(rc).p_uncond == 0.3
    del rc["conditioning"]  # a run written before the record: rebuilt from the recipe and network
    assert conditioning_of_run(rc).config() == {"kind": "labels", "num_classes": 10, "p_uncond": 0.1}
    with pytest.raises(UserError, match="cannot rebuild the run's conditioning"):
        conditioning_of_run({**rc, "conditioning": {"kind": "nosuch"}})
