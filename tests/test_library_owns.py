"""What the commands used to do themselves, now in the library: resume merging and distillation rounds."""
import pytest

from difflab.training import TrainConfig
from difflab.training.distill import progressive_rounds
from difflab.training.gan import GANConfig


def test_resumed_recipe_completes_old_runs_and_keeps_the_built_schedule():
    built = {"kind": "linear", "T": 50, "beta_start": 2e-4, "beta_end": 0.03}
    stored = {"train": {"steps": 300, "lr": 5e-4, "task": "superres", "noise_aug": True}, "schedule": built}
    cfg = TrainConfig.resumed(stored, {"lr": 1e-4})
    assert cfg.aug_blur == 0.0 and cfg.lr == 1e-4 and cfg.steps == 300  # saved before the blur: trained without it
    assert cfg.schedule.to_dict() == TrainConfig.from_dict({"schedule": built}).schedule.to_dict()
    assert TrainConfig.resumed({"train": {**stored["train"], "aug_blur": 0.7}}, {}).aug_blur == 0.7
    assert TrainConfig.from_dict({}).aug_blur == 0.5  # a new run gets today's default
    assert TrainConfig.resumed(stored, {}, more_minutes=True).steps == TrainConfig.steps
    assert TrainConfig.resumed({"train": {"steps": 10**6}}, {}, more_minutes=True).steps == 10**6


def test_resumed_family_recipe_reads_its_train_fields_and_names_the_file_on_a_bad_key():
    assert GANConfig.resumed({"train": {"steps": 7}}, {"lr": 3e-4}).steps == 7
    with pytest.raises(ValueError, match=r"run/config.json: unknown key\(s\) nope"):
        GANConfig.resumed({"train": {"nope": 1}}, {}, where="run/config.json")


@pytest.mark.parametrize("start, steps, rounds", [(64, 4, 4), (8, 4, 1), (2, 1, 1)])
def test_progressive_rounds_halve_start_down_to_steps(start, steps, rounds):
    assert progressive_rounds(start, steps) == rounds


@pytest.mark.parametrize("start, steps, message", [(4, 4, "must exceed"), (12, 4, "power of 2"), (4, 0, "must exceed")])
def test_progressive_rounds_refuse_what_halving_cannot_reach(start, steps, message):
    with pytest.raises(ValueError, match=message):
        progressive_rounds(start, steps)
