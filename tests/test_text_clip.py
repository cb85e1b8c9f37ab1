"""A CLIP text encoder from a local folder (``--text-encoder clip:PATH``): a tiny random CLIPTextModel and a minimal
BPE tokenizer written by the test; trained on, sampled with a prompt, resumed; the path is kept in the run and a
missing or moved folder is a one-line error naming it. Nothing is downloaded."""
import json
import shutil
import string

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from difflab.cli.main import main  # noqa: E402

from conftest import TINY_UNET  # noqa: E402
from test_text_folders import write_bars  # noqa: E402


def run(*args):
    return main([str(a) for a in args])


def write_tiny_clip(root, hidden: int = 16):
    """A 1-layer CLIPTextModel (random, seeded) and a CLIPTokenizer vocabulary of letters, digits and two merges."""
    from transformers import CLIPTextConfig, CLIPTextModel

    root.mkdir(parents=True)
    chars = list(string.ascii_lowercase + string.digits + "-")
    tokens = ["<|startoftext|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars), "ba", "bar</w>"]
    (root / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (root / "merges.txt").write_text("#version: 0.2\nb a\nba r</w>\n")
    cfg = CLIPTextConfig(vocab_size=len(tokens), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=24, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(0)
    CLIPTextModel(cfg).save_pretrained(root)
    return root


def _one_line(capsys, *needles):
    err = capsys.readouterr().err
    assert err.startswith("difflab: error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, err


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("clipcli")
    write_tiny_clip(d / "clip")
    (d / "bars").mkdir()
    write_bars(d / "bars", n=16)
    (d / "cfg.json").write_text(json.dumps({"network": TINY_UNET, "batch_size": 8, "sample_steps": 2, "warmup_steps": 2,
                                            "checkpoint_every": 2, "schedule": {"kind": "linear", "T": 100}}))
    assert run("train", "--data", d / "bars", "--image-size", 8, "--text-encoder", f"clip:{d / 'clip'}", "--out",
               d / "run", "--steps", 3, "--config", d / "cfg.json", "--quiet") == 0
    return d


def test_the_encoder_gives_clip_states_and_mask(clip_run):
    from transformers import CLIPTextModel, CLIPTokenizer

    from difflab.text import get_encoder
    from difflab.text.encoders import encoder_dim

    name = f"clip:{clip_run / 'clip'}"
    enc = get_encoder(name)
    states, mask = enc.encode(["a bar on the left", "bar"])
    assert encoder_dim(name) == 16 and states.shape[-1] == 16
    assert mask.sum(1).tolist() == [13, 3]  # <start> a bar o n t h e l e f t <end>; <start> bar <end>
    assert bool((states[1, 3:] == 0).all())  # padding positions are zeros
    tok = CLIPTokenizer.from_pretrained(str(clip_run / "clip"), local_files_only=True)
    ref = CLIPTextModel.from_pretrained(str(clip_run / "clip"), local_files_only=True).eval()
    with torch.no_grad():
        want = ref(**tok(["bar"], return_tensors="pt")).last_hidden_state
    assert torch.allclose(states[1:, :3], want, atol=1e-6)


def test_a_clip_run_trains_samples_and_resumes(clip_run, tmp_path, capsys):
    rc = json.loads((clip_run / "run" / "config.json").read_text())
    name = f"clip:{(clip_run / 'clip').resolve()}"
    assert rc["train"]["text_encoder"] == name and rc["conditioning"]["encoder"] == name
    assert rc["network"]["config"]["context_dim"] == 16
    out = tmp_path / "s.npz"
    assert run("sample", "--run", clip_run / "run", "--num", 3, "--steps", 2, "--prompt", "a bar on the right",
               "--guidance-scale", 2, "--out", out) == 0
    with np.load(out) as f:
        assert f["images"].shape == (3, 8, 8, 1)
    capsys.readouterr()
    assert run("train", "--out", clip_run / "run", "--resume", "--steps", 5, "--quiet") == 0
    assert "trained 5 steps" in capsys.readouterr().out


def test_missing_and_moved_clip_folders_are_one_line_errors(clip_run, tmp_path, capsys):
    common = ["--image-size", 8, "--steps", 1, "--config", clip_run / "cfg.json", "--quiet"]
    missing = tmp_path / "nowhere"
    assert run("train", "--data", clip_run / "bars", "--text-encoder", f"clip:{missing}", "--out", tmp_path / "a",
               *common) == 2
    _one_line(capsys, str(missing), "does not exist")
    partial = tmp_path / "partial"
    shutil.copytree(clip_run / "clip", partial)
    (partial / "merges.txt").unlink()
    assert run("train", "--data", clip_run / "bars", "--text-encoder", f"clip:{partial}", "--out", tmp_path / "b",
               *common) == 2
    _one_line(capsys, str(partial), "merges.txt")
    with pytest.raises(SystemExit):  # argparse's usage error, one line
        run("train", "--data", clip_run / "bars", "--text-encoder", "clap", "--out", tmp_path / "c", *common)
    _one_line(capsys, "clip:PATH")
    # the run's encoder moved away: sampling says where the run expects it
    run_copy, moved = tmp_path / "run", tmp_path / "clip-moved"
    shutil.copytree(clip_run / "run", run_copy)
    shutil.move(str(clip_run / "clip"), str(moved))
    try:
        for k, extra in enumerate((["--prompt", "a bar"], [])):
            assert run("sample", "--run", run_copy, "--num", 2, "--steps", 2, *extra, "--out", tmp_path / f"{k}.png") == 2
            _one_line(capsys, str((clip_run / "clip").resolve()), "does not exist")
    finally:
        shutil.move(str(moved), str(clip_run / "clip"))
