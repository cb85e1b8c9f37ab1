"""The CUDA path: every family trains a few steps in bf16 and fp16 (grad scaler), every sampler on the GPU matches
the CPU, channels_last and torch.compile.  Skipped without CUDA; ``benchmarks/gpu_check.sh`` runs them."""
import json

import pytest
import torch

from conftest import TINY_UNET
from difflab.cli.main import main

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

FAMILIES = [("diffusion", "digits"), ("gan", "toy:25gaussians"), ("vae", "digits"), ("ddgan", "digits"),
            ("lsgm", "digits"), ("cld", "toy:moons")]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("family,data", FAMILIES)
def test_every_family_trains_on_cuda(tmp_path, family, data, precision):
    out = tmp_path / "run"
    assert main(["train", "--family", family, "--data", data, "--steps", "3", "--batch-size", "16", "--device", "cuda",
                 "--precision", precision, "--out", str(out), "--quiet"]) == 0
    assert main(["sample", "--run", str(out), "--num", "4", "--device", "cuda",
                 "--out", str(tmp_path / "s.npz")]) == 0


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cuda")
    (d / "cfg.json").write_text(json.dumps({"network": TINY_UNET, "batch_size": 16, "sample_steps": 2,
                                            "schedule": {"kind": "linear", "T": 100}}))
    assert main(["train", "--data", "digits", "--out", str(d / "run"), "--steps", "20", "--config", str(d / "cfg.json"),
                 "--device", "cpu", "--quiet"]) == 0
    return d / "run"


def test_every_sampler_on_cuda_matches_the_cpu(image_run, monkeypatch):
    from difflab.evaluation.generate import PerSample
    from difflab.models.denoiser import Clamped
    from difflab.samplers import SAMPLERS, sample
    from difflab.training import load_run

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # full float32 convolutions, as on the CPU
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    cpu, gpu = load_run(image_run, device="cpu"), load_run(image_run, device="cuda")
    for name in SAMPLERS:
        xs = []
        for loaded in (cpu, gpu):
            dev = next(loaded.model.parameters()).device
            rng = PerSample(0, range(6))  # the same noise on both devices (drawn on the CPU)
            xs.append(sample(Clamped(loaded.model), rng.prior(loaded.model.schedule, (1, 8, 8), dev), sampler=name,
                             steps=8, generator=rng).cpu())
        torch.testing.assert_close(xs[1], xs[0], rtol=1e-3, atol=5e-3, msg=name)


def test_channels_last_and_compile_match_eager(image_run):
    from difflab.training import load_run

    model = load_run(image_run, device="cuda").model.eval()
    x, t = torch.randn(8, 1, 8, 8, device="cuda"), torch.full((8,), 0.5, device="cuda")
    with torch.no_grad():
        eager = model(x, t)
        model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x.to(memory_format=torch.channels_last), t), eager, rtol=1e-3, atol=1e-4)
        compiled = torch.compile(model)
        torch.testing.assert_close(compiled(x, t), eager, rtol=1e-3, atol=1e-4)


def test_compiled_training_on_cuda(tmp_path, tiny_config):
    assert main(["train", "--data", "digits", "--steps", "3", "--device", "cuda", "--compile", "--precision", "bf16",
                 "--config", tiny_config("unet", batch_size=16), "--out", str(tmp_path / "run"), "--quiet"]) == 0
