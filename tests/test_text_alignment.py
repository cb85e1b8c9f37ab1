"""Text alignment in ``difflab report``: prompt accuracy of digit and coloured-digit prompts, and the CLIP-score-like
alignment of difflab's own contrastive model (``train-clip`` on any captioned folder, ``report --clip``)."""
import json

import pytest
import torch
import torch.nn.functional as F

from difflab.cli.main import main
from difflab.evaluation.alignment import (COLOURS, clip_alignment, nearest_colour, pair_alignment, prompt_accuracy,
                                          prompt_targets)

from conftest import TINY_UNET
from test_text_folders import write_bars

CLIP_CFG = {"clip": {"embed_dim": 16, "image": {"channels": 8, "groups": 4}, "text": {"dim": 16, "layers": 1, "heads": 2}},
            "lr": 3e-3, "schedule": {"kind": "linear", "T": 100}}


def run(*args):
    return main([str(a) for a in args])


def _one_line(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("difflab: error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err


# ---- constructed cases ----

def test_prompt_targets_and_accuracy_of_known_answers():
    digit, colour = prompt_targets(["a red seven", "a 3", "a thick slanted nine", "a bar on the left", "a blue two"])
    names = list(COLOURS)
    assert digit.tolist() == [7, 3, 9, -1, 2]
    assert colour.tolist() == [names.index("red"), -1, -1, -1, names.index("blue")]
    # painted squares: red, blue, green ink on black; the classifier says 7, 2, 4
    x = torch.full((3, 3, 4, 4), -1.0)
    for i, k in enumerate(("red", "blue", "green")):
        x[i, :, 1:3, 1:3] = torch.tensor(COLOURS[k], dtype=torch.float32)[:, None, None] / 127.5 - 1
    cands = [names.index(k) for k in ("red", "green", "blue")]
    assert nearest_colour(x, cands).tolist() == [names.index(k) for k in ("red", "blue", "green")]
    classify = lambda g: torch.tensor([7, 2, 4])  # noqa: E731
    acc = prompt_accuracy(x, ["a red seven", "a red two", "a green five"], classify)
    assert acc == pytest.approx({"digit_acc": 2 / 3, "colour_acc": 2 / 3, "prompt_acc": 1 / 3})
    assert prompt_accuracy(x, ["a bar"] * 3, classify) == {}  # nothing judgeable


class _Known(torch.nn.Module):
    """image_features: a fixed unit vector per image; text_features: one per prompt word count."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def image_features(self, x, t):
        return F.normalize(torch.stack([x.mean((1, 2, 3)), torch.ones(len(x))], 1), dim=1)

    def text_features(self, prompts):
        return F.normalize(torch.tensor([[float(len(p.split())), 1.0] for p in prompts]), dim=1)


def test_clip_alignment_is_the_cosine_of_the_embeddings():
    x = torch.stack([torch.full((1, 2, 2), v) for v in (0.0, 2.0, 1.0)])
    prompts = ["a", "a b", "a"]
    got = clip_alignment(_Known(), 0.0, x, prompts, batch_size=2)
    want = [F.cosine_similarity(torch.tensor([[v, 1.0]]), torch.tensor([[float(len(p.split())), 1.0]])).item()
            for v, p in zip((0.0, 2.0, 1.0), prompts)]
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    assert got.tolist() == pytest.approx([2 ** -0.5, 1.0, 1.0], abs=1e-6)  # matching directions: 1


# ---- a briefly trained contrastive model on a captioned folder ----

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("align")
    (d / "bars").mkdir()
    write_bars(d / "bars", n=64)
    (d / "clip.json").write_text(json.dumps(CLIP_CFG))
    assert run("train-clip", "--data", d / "bars", "--image-size", 8, "--steps", 120, "--batch-size", 32, "--config",
               d / "clip.json", "--out", d / "clip", "--quiet") == 0
    (d / "cfg.json").write_text(json.dumps({"network": TINY_UNET, "batch_size": 8, "sample_steps": 2, "warmup_steps": 2,
                                            "schedule": {"kind": "linear", "T": 100}}))
    assert run("train", "--data", d / "bars", "--image-size", 8, "--text-encoder", "small", "--out", d / "run",
               "--steps", 3, "--config", d / "cfg.json", "--quiet") == 0
    return d


def test_train_clip_on_folder_captions_aligns_real_pairs_above_shuffled(work):
    from difflab.data import load
    from difflab.training.clip import load_clip

    clip, sched = load_clip(work / "clip")
    data = load(str(work / "bars"), "all", image_size=8)
    real, shuffled = pair_alignment(clip, sched, data)
    assert real > shuffled + 0.05, (real, shuffled)  # measured 0.12 against -0.004
    x = data.batch(torch.arange(64))
    own = clip_alignment(clip, sched.t_min, x, [data.captions[i][0] for i in range(64)])
    swapped = clip_alignment(clip, sched.t_min, x, [data.captions[i ^ 1][0] for i in range(64)])  # the other side
    assert float((own > swapped).float().mean()) > 0.8


def test_report_writes_the_alignment_table(work, tmp_path):
    out = tmp_path / "rep"
    assert run("report", "--run", work / "run", "--methods", "ddim:2", "--num", 10, "--ref-num", 64, "--guidance",
               "0,2", "--clip", work / "clip", "--out", out) == 0
    md = (out / "report.md").read_text()
    assert "## Text alignment" in md and "| ddim:2 w=2 | 2 |" in md and "clip_align" in md
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["guidance"] for r in rows] == [0.0, 2.0]
    assert all(-1 <= r["clip_align"] <= 1 and "prompt_acc" not in r for r in rows)  # bar captions name no digit


def test_report_prompt_accuracy_on_digit_captions(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"network": TINY_UNET, "batch_size": 8, "sample_steps": 2, "warmup_steps": 2,
                               "schedule": {"kind": "linear", "T": 100}}))
    assert run("train", "--data", "digits", "--text-encoder", "small", "--out", tmp_path / "run", "--steps", 2,
               "--config", cfg, "--quiet") == 0
    assert run("report", "--run", tmp_path / "run", "--methods", "ddim:2", "--num", 20, "--ref-num", 100,
               "--guidance", "1", "--out", tmp_path / "rep") == 0
    (row,) = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    assert row["guidance"] == 1.0 and 0 <= row["prompt_acc"] <= 1 and row["prompt_acc"] == row["digit_acc"]
    assert "prompt_acc" in (tmp_path / "rep" / "report.md").read_text()


def test_alignment_option_errors_are_one_line(work, tmp_path, capsys):
    base = ["report", "--run", work / "run", "--methods", "ddim:2", "--num", 10, "--out", tmp_path / "r"]
    assert run(*base, "--clip", tmp_path / "nope") == 2
    _one_line(capsys, "--clip", "nope")
    (tmp_path / "notclip").mkdir()
    (tmp_path / "notclip" / "config.json").write_text("{}")
    assert run(*base, "--clip", tmp_path / "notclip") == 2
    _one_line(capsys, "notclip")
    assert run(*base, "--guidance", "1,x") == 2
    _one_line(capsys, "--guidance")
    assert run(*base, "--guidance", "-1") == 2
    _one_line(capsys, "--guidance")
    assert run("train", "--data", work / "bars", "--image-size", 8, "--out", tmp_path / "plain", "--steps", 1,
               "--config", work / "cfg.json", "--quiet") == 0
    assert run("report", "--run", tmp_path / "plain", "--methods", "ddim:2", "--num", 10, "--guidance", "0,1",
               "--out", tmp_path / "r2") == 2
    _one_line(capsys, "not a text-conditional run")
