"""FD-DINOv2: difflab's DINOv2 ViT gives transformers' Dinov2Model features on the same (random) weights, reads
official and Hugging Face files from a local path only, and scores samples through ``difflab evaluate``."""
import json
import types

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from difflab.cli.main import main
from difflab.evaluation import frechet_distance
from difflab.evaluation.dinov2 import ENV, DINOv2, from_state_dict, load_dinov2, official_names
from difflab.evaluation.features import EvaluationError

transformers = pytest.importorskip("transformers")


def _hf(swiglu=False, seed=0):
    """A tiny random Dinov2Model (64 wide, one 64-wide head, 2 layers, the 16 x 16 grid of a 224 input) with every
    parameter perturbed (layer scales and norms are not left at 1 and 0)."""
    cfg = transformers.Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, intermediate_size=256,
                                    image_size=224, patch_size=14, use_swiglu_ffn=swiglu)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = transformers.Dinov2Model(cfg).eval()
        model.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()})
    return model


def _images(n, seed, channels=3):
    return torch.rand(n, channels, 12, 12, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("swiglu", [False, True], ids=["mlp", "swiglu"])
def test_features_and_fd_match_transformers_dinov2_on_random_weights(swiglu):
    hf = _hf(swiglu)
    ours = from_state_dict(hf.state_dict()).eval()
    assert len(ours.blocks) == 2 and ours.blocks[0].attn.heads == 1 and isinstance(ours.blocks[0].mlp.w3 if swiglu
                                                                                    else ours.blocks[0].mlp.fc2,
                                                                                    torch.nn.Linear)
    a, b = _images(24, 1), _images(24, 2)
    with torch.no_grad():
        fa, fb = ours(a), ours(b)
        ra = hf(pixel_values=DINOv2.prepare(a)).pooler_output
        rb = hf(pixel_values=DINOv2.prepare(b)).pooler_output
    assert fa.shape == (24, 64)
    torch.testing.assert_close(fa, ra, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fb, rb, rtol=1e-4, atol=1e-5)
    fd, fd_ref = frechet_distance(fa.double().numpy(), fb.double().numpy()), frechet_distance(ra.double().numpy(),
                                                                                               rb.double().numpy())
    assert fd > 0 and fd == pytest.approx(fd_ref, rel=1e-4)


def test_preprocessing_is_dgm_evals():
    """224 x 224, ImageNet normalisation, grey repeated to RGB; a constant image stays constant."""
    grey = torch.full((2, 1, 8, 8), 0.5)
    x = DINOv2.prepare(grey)
    assert x.shape == (2, 3, 224, 224)
    want = (0.75 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(x[:, :, 100, 37], want.expand(2, 3))
    torch.testing.assert_close(DINOv2.prepare(grey), DINOv2.prepare(grey.repeat(1, 3, 1, 1)))


def test_official_names_and_position_interpolation():
    """An official-named state dict (q, k, v fused) loads as the HF one does; a 37 x 37 grid is interpolated to 16."""
    hf = _hf()
    official = official_names(hf.state_dict())
    assert "blocks.1.attn.qkv.weight" in official and official["blocks.1.attn.qkv.weight"].shape == (192, 64)
    assert "blocks.0.ls1.gamma" in official and "pos_embed" in official and "norm.bias" in official
    x = _images(3, 5)
    with torch.no_grad():
        torch.testing.assert_close(from_state_dict(official)(x), from_state_dict(hf.state_dict())(x))
    big = dict(official, pos_embed=torch.randn(1, 1 + 37 * 37, 64))
    net = from_state_dict(big)
    assert net.grid == 37 and net.position(16, 16).shape == (1, 257, 64)
    const = dict(big, pos_embed=torch.full((1, 1 + 37 * 37, 64), 0.3))
    torch.testing.assert_close(from_state_dict(const).position(16, 16), torch.full((1, 257, 64), 0.3))


def test_weights_from_a_local_file_only(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(EvaluationError, match="--dinov2-weights PATH"):
        load_dinov2()
    with pytest.raises(EvaluationError, match="do not exist"):
        load_dinov2(tmp_path / "none.pth")
    hf = _hf()
    torch.save(official_names(hf.state_dict()), tmp_path / "official.pth")
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, str(tmp_path / "model.safetensors"))
    monkeypatch.setenv(ENV, str(tmp_path / "model.safetensors"))
    x = _images(2, 3, channels=1)
    with torch.no_grad():
        want = hf(pixel_values=DINOv2.prepare(x)).pooler_output
        torch.testing.assert_close(load_dinov2()(x), want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(load_dinov2(tmp_path / "official.pth")(x), want, rtol=1e-4, atol=1e-5)
    torch.save({"cls_token": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(EvaluationError, match="not a DINOv2 ViT state dict"):
        load_dinov2(tmp_path / "bad.pth")
    torch.save(types.SimpleNamespace(a=1), tmp_path / "code.pth")
    with pytest.raises(EvaluationError, match="not readable"):
        load_dinov2(tmp_path / "code.pth")  # a pickle of objects is refused, never executed


def test_evaluate_cli_dinov2_one_line_error_then_scores_with_cached_reference(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "s.npz", images=rng.integers(0, 17, (12, 8, 8, 1), dtype=np.uint8) * 15)
    base = ["evaluate", "--samples", str(tmp_path / "s.npz"), "--data", "digits", "--features", "dinov2",
            "--ref-num", "10"]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dinov2-weights PATH" in err
    save_file({k: v.contiguous() for k, v in _hf().state_dict().items()}, str(tmp_path / "w.safetensors"))
    for name in ("a", "b"):  # the second run reads the cached reference features
        assert main([*base, "--dinov2-weights", str(tmp_path / "w.safetensors"), "--json",
                     str(tmp_path / f"{name}.json")]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text())["metrics"] for n in "ab")
    assert a["num_samples"] == 12 and a["num_reference"] == 10 and a["fd"] > 0 and a == b
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1


def test_report_scores_runs_in_dinov2_features(tmp_path, monkeypatch):
    from conftest import TINY_UNET

    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("DIFFLAB_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cfg.json").write_text(json.dumps({"network": TINY_UNET, "batch_size": 8, "sample_steps": 2,
                                                   "schedule": {"kind": "linear", "T": 50}}))
    assert main(["train", "--data", "digits", "--out", str(tmp_path / "run"), "--steps", "2", "--config",
                 str(tmp_path / "cfg.json"), "--quiet"]) == 0
    save_file({k: v.contiguous() for k, v in _hf().state_dict().items()}, str(tmp_path / "w.safetensors"))
    assert main(["report", "--runs", str(tmp_path / "run"), "--methods", "ddim:2", "--num", "12", "--ref-num", "20",
                 "--features", "dinov2", "--dinov2-weights", str(tmp_path / "w.safetensors"), "--out",
                 str(tmp_path / "rep")]) == 0
    (row,) = json.loads((tmp_path / "rep" / "report.json").read_text())["rows"]
    assert row["num_reference"] == 20 and row["fd"] > 0
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 1
