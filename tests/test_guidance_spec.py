"""GuidanceSpec: JSON round trip, validation messages, and wrap() equal to composing the wrappers by hand."""
import json
from types import SimpleNamespace

import pytest
import torch

from difflab.errors import UserError
from difflab.guidance import ClassifierFreeGuidance, GuidanceSpec, wrap
from difflab.training.conditioning import LabelConditioning

from test_guidance import K, batch, tiny_model


def run_of(model):
    return SimpleNamespace(model=model, conditioning=LabelConditioning(K, 0.1), shape=(1, 8, 8))


def test_spec_round_trips_through_json():
    spec = GuidanceSpec(label=2, guidance_scale=1.5, guidance_interval=(0.2, 4.0), classifier_scale=0.5)
    back = GuidanceSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and back.guidance_interval == (0.2, 4.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(label=1, guidance_scale=-1.0), "must be finite and >= 0"),
    (dict(label=1, classifier="c", classifier_scale=float("nan")), "must be finite and >= 0"),
    (dict(label=1, guidance_scale=float("inf")), "must be finite and >= 0"),
    (dict(clip="c", guidance_scale=0.0), "--clip needs --prompt"),
    (dict(classifier="c"), "--classifier needs --label"),
    (dict(label=1, guidance_interval=(0.0, 1.0)), "needs --guidance-scale"),
    (dict(label=1, guidance_scale=1.0, guidance_interval=(2.0, 1.0)), "needs 0 <= LO < HI"),
])
def test_spec_refuses_bad_values_with_the_option_named(kwargs, message):
    with pytest.raises(UserError, match=message):
        GuidanceSpec(**kwargs)


@pytest.mark.parametrize("interval", [None, (0.5, 3.0)])
def test_wrap_equals_the_hand_composed_cfg(interval):
    model = tiny_model("eps")
    spec = GuidanceSpec(label=2, guidance_scale=2.0, guidance_interval=interval)
    guided, make_cond = wrap(spec, run_of(model))
    cond = make_cond(4, torch.device("cpu"))
    assert torch.equal(cond["y"], torch.full((4,), 2))
    x, t, _ = batch()
    by_hand = ClassifierFreeGuidance(model, 2.0, interval=interval)
    with torch.no_grad():
        assert torch.equal(guided(x, t, cond), by_hand(x, t, cond))
        assert not torch.equal(guided(x, t, cond), model(x, t, cond))


def test_wrap_without_guidance_is_the_model_and_checks_the_label():
    model = tiny_model("eps")
    guided, make_cond = wrap(GuidanceSpec(), run_of(model))
    assert guided is model and torch.equal(make_cond(3, "cpu")["y"], torch.full((3,), K))  # the null label
    with pytest.raises(UserError, match=r"--label 5: the run in R has classes 0..2"):
        wrap(GuidanceSpec(label=5), run_of(model), where="R")
    with pytest.raises(UserError, match="--guidance-scale needs --label"):
        wrap(GuidanceSpec(guidance_scale=1.0), run_of(model))
