"""import-diffusers on folders that are malformed or hostile: JSON and safetensors only, an allow-list of scheduler
classes, scheduler configs refused rather than defaulted, sizes bounded, the pipeline's clipping honoured."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from difflab.cli.main import main  # noqa: E402
from difflab.errors import UserError  # noqa: E402
from difflab.interop.diffusers import (check_scheduler_config, clipped_as_imported, clipping_record,  # noqa: E402
                                       import_pipeline)
from difflab.models.denoiser import Clamped, Thresholded  # noqa: E402

T = 100
TINY = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8, norm_num_groups=4)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> Path:
    """A tiny DDPMPipeline folder (random weights, perturbed so that clipping matters), written once."""
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**TINY)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.3 * torch.randn_like(p))
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-3, beta_end=0.2)
    path = tmp_path_factory.mktemp("pipe") / "pipe"
    diffusers.DDPMPipeline(unet=unet.eval(), scheduler=sched).save_pretrained(str(path))
    return path


def variant(pipe: Path, where: Path, index: dict | None = None, scheduler: dict | None = None,
            unet: dict | None = None) -> Path:
    """A copy of the pipeline folder with fields of model_index.json, scheduler_config.json or unet/config.json replaced
    (a value None removes the key)."""
    import shutil

    shutil.copytree(pipe, where)
    for rel, edits in (("model_index.json", index), ("scheduler/scheduler_config.json", scheduler),
                       ("unet/config.json", unet)):
        if edits:
            d = json.loads((where / rel).read_text())
            d.update(edits)
            d = {k: v for k, v in d.items() if v is not None}
            (where / rel).write_text(json.dumps(d))
    return where


def refused(tmp_path, capsys, src: Path) -> str:
    """The one line import-diffusers prints refusing ``src`` (exit 2, no run folder written)."""
    assert main(["import-diffusers", str(src), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("difflab: error: "), err
    assert not (tmp_path / "run").exists()
    return err[0]


@pytest.mark.parametrize("edits,words", [
    ({"index": {"foo": 1}}, ["'foo'", "[library, class]"]),
    ({"index": {"vae": ["diffusers", "AutoencoderKL"]}}, ["unet and a scheduler", "vae"]),
    ({"index": {"scheduler": ["diffusers", "UNet2DModel"]}}, ["scheduler is", "UNet2DModel", "DDPMScheduler"]),
    ({"index": {"scheduler": ["evil_module", "DDPMScheduler"]}}, ["scheduler is", "evil_module"]),
    ({"index": {"unet": ["diffusers", "UNet2DConditionModel"]}}, ["not diffusers' UNet2DModel"]),
    ({"scheduler": {"beta_schedule": "nosuch"}}, ["beta_schedule='nosuch'", "no difflab schedule"]),
    ({"scheduler": {"beta_schedule": None, "trained_betas": None}}, ["neither beta_schedule nor trained_betas"]),
    ({"scheduler": {"prediction_type": "flow"}}, ["prediction_type", "flow"]),
    ({"scheduler": {"num_train_timesteps": 10**15}}, ["num_train_timesteps", "[2, 100000]"]),
    ({"scheduler": {"trained_betas": [0.5, float("nan")]}}, ["trained_betas"]),
    ({"scheduler": {"clip_sample": "yes"}}, ["clip_sample", "true or false"]),
    ({"scheduler": {"_class_name": "EulerDiscreteScheduler"}}, ["_class_name", "DDPMScheduler"]),
    ({"unet": {"sample_size": 10**7}}, ["sample_size", "8192"]),
    ({"unet": {"block_out_channels": [8, 10**6]}}, ["block_out_channels"]),
])
def test_malformed_pipelines_are_one_line(pipe, tmp_path, capsys, edits, words):
    line = refused(tmp_path, capsys, variant(pipe, tmp_path / "src", **edits))
    assert all(w in line for w in words), line


def test_a_deeply_nested_model_index_is_one_line(pipe, tmp_path, capsys):
    src = variant(pipe, tmp_path / "src")
    (src / "model_index.json").write_text("[" * 100000)
    assert "nested" in refused(tmp_path, capsys, src)


class _Marker:
    """Unpickling this writes a file: proof that a pickle was loaded."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path(self.path).write_text, ("unpickled",))


def test_pickled_weights_are_never_loaded(pipe, tmp_path, capsys):
    src = variant(pipe, tmp_path / "src", index={"scheduler": ["diffusers", "UNet2DModel"]})
    marker = tmp_path / "marker"
    for folder in ("scheduler", "unet"):
        (src / folder / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Marker(str(marker))))
    refused(tmp_path, capsys, src)  # the scheduler class is not on the list
    src2 = variant(pipe, tmp_path / "src2")
    (src2 / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (src2 / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(_Marker(str(marker))))
    line = refused(tmp_path, capsys, src2)
    assert "diffusion_pytorch_model.bin is pickled and never read" in line
    assert not marker.exists()


def test_scheduler_checks_accept_what_diffusers_writes():
    for cls in (diffusers.DDPMScheduler, diffusers.DDIMScheduler, diffusers.PNDMScheduler):
        check_scheduler_config(dict(cls(num_train_timesteps=T).config))
    with pytest.raises(UserError, match="neither beta_schedule nor trained_betas"):
        check_scheduler_config({"num_train_timesteps": T})


def test_clipping_record_uses_each_constructors_defaults():
    assert clipping_record({}, "DDPMScheduler")["clip_sample"] is True
    assert clipping_record({}, "PNDMScheduler")["clip_sample"] is False
    rec = clipping_record({"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 2}, "DDIMScheduler")
    assert rec["thresholding"] and rec["dynamic_thresholding_ratio"] == 0.9 and rec["sample_max_value"] == 2.0
    model = torch.nn.Identity()
    model.schedule = None
    t = clipped_as_imported(model, rec)
    assert isinstance(t, Thresholded) and t.p == 0.9 and t.max_value == 2.0
    c = clipped_as_imported(model, {"clip_sample": True, "clip_sample_range": 2.0})
    assert isinstance(c, Clamped) and (c.lo, c.hi) == (-2.0, 2.0)
    assert clipped_as_imported(model, {"clip_sample": False}) is model


def test_thresholded_max_value_is_diffusers_sample_max_value():
    """With sample_max_value 1 dynamic thresholding is clipping to [-1, 1], as in diffusers' _threshold_sample."""
    class Big(torch.nn.Module):
        schedule = None

        def forward(self, x, t, cond=None):
            return x

    x = torch.linspace(-3, 3, 64).reshape(1, 1, 8, 8)
    assert torch.equal(Thresholded(Big(), 0.9, max_value=1.0)(x, None), x.clamp(-1, 1))
    s = torch.quantile(x.abs().flatten(), 0.9)
    assert torch.allclose(Thresholded(Big(), 0.9)(x, None), x.clamp(-s, s) / s)


def _sample(run: Path, out: Path, *extra: str) -> np.ndarray:
    assert main(["sample", "--run", str(run), "--num", "4", "--steps", "5", "--out", str(out), *extra]) == 0
    with np.load(out) as f:
        return f["images"]


def test_imported_clip_sample_is_applied_by_sample(pipe, tmp_path):
    clip = variant(pipe, tmp_path / "clip", scheduler={"clip_sample": True})
    free = variant(pipe, tmp_path / "free", scheduler={"clip_sample": False})
    import_pipeline(clip, tmp_path / "run_clip")
    import_pipeline(free, tmp_path / "run_free")
    assert json.loads((tmp_path / "run_free" / "config.json").read_text())["imported"]["clip_sample"] is False
    a = _sample(tmp_path / "run_free", tmp_path / "a.npz")
    b = _sample(tmp_path / "run_clip", tmp_path / "b.npz")
    c = _sample(tmp_path / "run_clip", tmp_path / "c.npz", "--no-clip")
    assert np.array_equal(a, c) and not np.array_equal(a, b)


def test_import_data_must_match_the_pipeline_size(pipe, tmp_path, capsys):
    assert main(["import-diffusers", str(pipe), "--out", str(tmp_path / "run"), "--data", "mnist"]) == 2
    err = capsys.readouterr().err.strip()
    assert "1x28x28" in err and "1x8x8" in err and not (tmp_path / "run").exists()
