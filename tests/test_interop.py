"""diffusers interop: tiny random UNet2DModels saved in tmp_path (no downloads) round-trip through difflab runs."""
from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from difflab import schedules  # noqa: E402
from difflab.cli.main import main  # noqa: E402
from difflab.errors import UserError  # noqa: E402
from difflab.interop.diffusers import export_run, import_pipeline, schedule_from_scheduler  # noqa: E402
from difflab.models.denoiser import Denoiser  # noqa: E402
from difflab.models.mlp import MLP, MLPConfig  # noqa: E402
from difflab.models.networks import network_spec  # noqa: E402
from difflab.models.unet import UNet, UNetConfig  # noqa: E402
from difflab.samplers import grids, sample  # noqa: E402
from difflab.training import load_run  # noqa: E402
from difflab.training.checkpoint import save_checkpoint, write_json  # noqa: E402
from difflab.training.run import RUN_FORMAT  # noqa: E402

T = 100
TINY = dict(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8, norm_num_groups=4)


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Perturb every parameter (zero-initialised output layers would hide mapping errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def tiny_unet(seed: int = 0, **changes) -> "diffusers.UNet2DModel":
    torch.manual_seed(seed)
    u = diffusers.UNet2DModel(**{**TINY, **changes})
    _randomise(u, seed)
    return u.eval()


def save_pipeline(path, unet, prediction="epsilon", pipeline="ddim", **sched):
    kw = dict(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-3, beta_end=0.2, clip_sample=False,
              prediction_type=prediction, **sched)
    if pipeline == "ddim":
        diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler(**kw)).save_pretrained(str(path))
    else:
        diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(**kw)).save_pretrained(str(path))
    return path


def write_run(path, net, schedule, prediction="eps", shape=(1, 8, 8)):
    """A difflab run folder holding ``net`` untrained (config.json + checkpoint.safetensors)."""
    model = Denoiser(net, schedule, prediction)
    save_checkpoint(path, {"model": model})
    write_json(path / "config.json", {"format": RUN_FORMAT, "family": "diffusion", "data": None,
                                      "data_kind": "image" if len(shape) == 3 else "points", "shape": list(shape),
                                      "class_names": None, "train": {}, "network": network_spec(net),
                                      "schedule": schedule.config(), "prediction": prediction, "denoiser": "plain"})
    return path


X = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
TS = torch.tensor([0, 37, T - 1])


@pytest.mark.parametrize("flip,shift,injection", [(True, 0, "default"), (False, 0, "scale_shift"), (False, 1, "default"),
                                                  (True, 1, "scale_shift")])
def test_imported_prediction_equals_diffusers_forward(tmp_path, flip, shift, injection):
    extra = {"attn_norm_num_groups": 4} if injection == "scale_shift" else {}
    u = tiny_unet(flip_sin_to_cos=flip, freq_shift=shift, resnet_time_scale_shift=injection, **extra)
    import_pipeline(save_pipeline(tmp_path / "pipe", u), tmp_path / "run")
    m = load_run(tmp_path / "run", device="cpu").model.double()
    with torch.no_grad():
        ref = u.double()(X, TS).sample
        got = m.raw(X, TS.double())
    # Both compute the time features in float32. With freq_shift 0 they are the same numbers, so float64 networks
    # agree to rounding; otherwise difflab's Fourier frequencies f = w 1000 / (2 pi) are w rounded to float32,
    # which moves the features by about t w 2^-23 <= 1.2e-5 at t = 99.
    tol = 1e-9 if shift == 0 else 1e-4
    assert (got - ref).abs().max() <= tol * ref.abs().max()


def test_ddim_sample_equals_diffusers_ddim(tmp_path):
    u = tiny_unet(1)
    import_pipeline(save_pipeline(tmp_path / "pipe", u), tmp_path / "run")
    m = load_run(tmp_path / "run", device="cpu").model.double()
    s = diffusers.DDIMScheduler.from_pretrained(str(tmp_path / "pipe"), subfolder="scheduler")
    s.set_timesteps(10)
    u = u.double()
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = x_T.clone()
    with torch.no_grad():
        for t in s.timesteps:
            x = s.step(u(x, t).sample, t, x).prev_sample
        y = sample(m, x_T, "ddim", grid=grids.timesteps(m.schedule, s.timesteps.tolist()))
    assert s.timesteps.tolist() == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    # diffusers keeps alpha-bar in float32 (error <= 1e-7 against difflab's float64 table): relative 1e-5 covers it
    assert (x - y).abs().max() <= 1e-5 * x.abs().max()


@pytest.mark.parametrize("prediction,ours", [("epsilon", "eps"), ("sample", "x0"), ("v_prediction", "v")])
def test_every_prediction_type_gives_diffusers_x0(tmp_path, prediction, ours):
    u = tiny_unet(2)
    import_pipeline(save_pipeline(tmp_path / "pipe", u, prediction), tmp_path / "run")
    m = load_run(tmp_path / "run", device="cpu").model.double()
    assert m.prediction == ours
    s = diffusers.DDIMScheduler.from_pretrained(str(tmp_path / "pipe"), subfolder="scheduler")
    s.set_timesteps(10)
    u = u.double()
    t = 50
    with torch.no_grad():
        ref = s.step(u(X, t).sample, t, X).pred_original_sample
        got = m(X, torch.tensor(float(t)))
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("sched", [dict(beta_schedule="linear"), dict(beta_schedule="scaled_linear", beta_start=1e-4,
                                                                      beta_end=0.05),
                                   dict(beta_schedule="squaredcos_cap_v2"), dict(trained_betas=[0.01 * (i + 1) for i in range(20)])])
def test_schedule_tables_match(sched):
    kw = dict(num_train_timesteps=20 if "trained_betas" in sched else T, beta_start=1e-3, beta_end=0.2)
    s = diffusers.DDPMScheduler(**{**kw, **sched})
    ours = schedule_from_scheduler(dict(s.config))
    # diffusers builds its betas in float32 and multiplies them out in float32
    assert torch.allclose(ours.alphas_cumprod, s.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)


def test_exported_run_loads_in_diffusers_and_predicts_the_same(tmp_path):
    # difflab's default time_scale 1000 / (T - 1) has no positional counterpart: the embedding becomes a table
    for name, scale, kind in (("table", 1000 / (T - 1), "learned"), ("plain", 1.0, "positional")):
        net = UNet(UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2,
                              groups=4, dropout=0.0, time_scale=scale))
        _randomise(net, 4)
        sched = schedules.get("cosine", T=T)
        run = write_run(tmp_path / name, net, sched, "v")
        export_run(run, tmp_path / f"{name}_pipe")
        pipe = diffusers.DDPMPipeline.from_pretrained(str(tmp_path / f"{name}_pipe"))
        assert pipe.unet.config.time_embedding_type == kind
        assert pipe.scheduler.config.prediction_type == "v_prediction"
        assert torch.allclose(pipe.scheduler.alphas_cumprod.double(), sched.alphas_cumprod, rtol=1e-5, atol=1e-7)
        with torch.no_grad():
            ref = net.double()(X, TS.double())
            got = pipe.unet.double()(X, TS).sample
        assert (got - ref).abs().max() <= 1e-9 * ref.abs().max()
        image = pipe(batch_size=1, num_inference_steps=2, output_type="np").images
        assert image.shape == (1, 8, 8, 1)
    # both exports import back to the same network (the table is recognised as difflab's own features)
    for name in ("table", "plain"):
        import_pipeline(tmp_path / f"{name}_pipe", tmp_path / f"{name}_back")
        a, b = (load_run(tmp_path / n, device="cpu").model.net for n in (name, f"{name}_back"))
        assert a.config == b.config
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_refusals_name_what_does_not_map(tmp_path):
    mlp = MLP(MLPConfig(dim=2, hidden=16, depth=2))
    write_run(tmp_path / "mlp", mlp, schedules.get("linear", T=T), shape=(2,))
    with pytest.raises(UserError, match="network kind 'mlp'"):
        export_run(tmp_path / "mlp", tmp_path / "out1")
    net = UNet(UNetConfig(channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(1,), num_heads=2,
                          groups=4, cond_channels=1))
    write_run(tmp_path / "sr", net, schedules.get("vp"), "score")
    with pytest.raises(UserError) as e:
        export_run(tmp_path / "sr", tmp_path / "out2")
    assert "cond_channels=1" in str(e.value) and "continuous-time" in str(e.value) and "'score'" in str(e.value)
    assert not (tmp_path / "out2").exists()
    u = tiny_unet(time_embedding_type="fourier")
    with pytest.raises(UserError, match="time_embedding_type='fourier'"):
        import_pipeline(save_pipeline(tmp_path / "pipe", u), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    u = tiny_unet(time_embedding_type="learned", num_train_timesteps=T)  # a table that is no sinusoid of ours
    with pytest.raises(UserError, match="time_embedding_type='learned'"):
        import_pipeline(save_pipeline(tmp_path / "pipe2", u), tmp_path / "run")


def test_cli_import_then_sample_and_one_line_errors(tmp_path, capsys, monkeypatch):
    save_pipeline(tmp_path / "pipe", tiny_unet(5), pipeline="ddpm")
    assert main(["import-diffusers", str(tmp_path / "pipe"), "--out", str(tmp_path / "run"), "--data", "digits"]) == 0
    rc = json.loads((tmp_path / "run" / "config.json").read_text())
    assert rc["imported"]["pipeline"] == "DDPMPipeline" and rc["data"] == "digits"
    assert main(["sample", "--run", str(tmp_path / "run"), "--num", "2", "--steps", "2",
                 "--out", str(tmp_path / "s.npz")]) == 0
    assert main(["import-diffusers", str(tmp_path / "pipe"), "--out", str(tmp_path / "run")]) == 2  # never overwrites
    assert main(["import-diffusers", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r2")]) == 2
    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)  # the extra missing
    assert main(["export-diffusers", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "exp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "difflab: error: reading or writing diffusers folders needs the optional diffusers extra: " \
                      "pip install 'difflab[diffusers]'"
    assert "already holds a run" in err[-3] and "is not a folder" in err[-2]


def test_every_sampler_guidance_and_task_run_on_an_imported_run(tmp_path):
    from difflab import samplers, tasks
    from difflab.guidance import ClassifierFreeGuidance

    u = tiny_unet(6, num_class_embeds=3)  # a label table: difflab adds the null label for guidance
    import_pipeline(save_pipeline(tmp_path / "pipe", u), tmp_path / "run")
    loaded = load_run(tmp_path / "run", device="cpu")
    assert loaded.conditioning.kind == "labels"
    x_T = loaded.model.schedule.sample_prior((2, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    cond = loaded.conditioning.labels(torch.tensor([0, 2]), torch.device("cpu"))
    guided = ClassifierFreeGuidance(loaded.model, 1.5)
    for name in samplers.names():
        loose = {"rtol": 1e-2, "atol": 1e-2} if name == "dopri5" else {}  # adaptive: a loose tolerance keeps it short
        out = samplers.sample(guided, x_T, name, steps=4, cond=cond, generator=torch.Generator().manual_seed(0), **loose)
        assert out.shape == x_T.shape and bool(torch.isfinite(out).all()), name
    with torch.no_grad():  # the label table maps: difflab's prediction for label 2 is diffusers' for class_labels 2
        ref = u(X.float(), TS, class_labels=torch.tensor([2, 2, 2])).sample
        got = loaded.model.raw(X.float(), TS.float(), {"y": torch.tensor([2, 2, 2])})
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()
    image = x_T.clamp(-1, 1)
    mask = torch.ones(8, 8)
    mask[2:5] = 0
    filled = tasks.inpaint(loaded.model, image, mask, steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(filled[..., mask.bool()], image[..., mask.bool()])


# ---- flow matching: FlowMatchEulerDiscreteScheduler ------------------------------------------------------------
def _flow_run(path, prediction="flow", time_scale=1000.0, seed=3):
    from difflab.models.networks import time_scale_for

    flow = schedules.get("flow")
    assert time_scale_for(flow) == 1000.0  # flow networks see 1000 t = diffusers' timestep 1000 sigma
    torch.manual_seed(seed)
    net = UNet(UNetConfig(in_channels=1, out_channels=1, channels=8, channel_mult=(1, 2), num_res_blocks=1,
                          attention_levels=(1,), num_heads=1, groups=4, time_scale=time_scale))
    _randomise(net, seed)
    return write_run(path, net, flow, prediction)


def test_flow_run_exports_to_flow_match_euler_and_samples_the_same(tmp_path):
    """diffusers' flow models get timestep = 1000 sigma and predict noise - x_0, which is difflab's flow velocity
    eps - x_0: its Euler loop on the exported UNet2DModel equals difflab's euler on the same grid and noise."""
    run = _flow_run(tmp_path / "run")
    out = export_run(run, tmp_path / "pipe")
    sched_cfg = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched_cfg["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert sched_cfg["shift"] == 1.0 and sched_cfg["num_train_timesteps"] == 1000
    pipe = diffusers.DDPMPipeline.from_pretrained(str(out))
    assert isinstance(pipe.scheduler, diffusers.FlowMatchEulerDiscreteScheduler)
    model = load_run(run, device="cpu").model.eval()

    # the sign: the exported network's output is the velocity noise - x_0 of difflab's flow prediction
    x0 = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    sig = torch.tensor([0.3, 0.8])
    xt = (1 - sig)[:, None, None, None] * x0 + sig[:, None, None, None] * noise
    with torch.no_grad():
        ours = model.raw(xt, sig)
        theirs = pipe.unet(xt, sig * 1000).sample
    assert torch.allclose(theirs, ours, rtol=1e-4, atol=1e-5)

    # diffusers' Euler loop on the grid of difflab's euler (6 levels, sigma = t = s / (1 + s)) from the same x_T
    sigmas = grids.karras(model.schedule, 6)
    t_grid = (sigmas / (1 + sigmas))[:-1]
    xT = model.schedule.sample_prior((4, 1, 8, 8), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = sample(model, xT, "euler", grid=sigmas)
        sch = pipe.scheduler
        sch.set_timesteps(sigmas=t_grid.float().tolist())
        assert torch.allclose(sch.sigmas[:-1].double(), t_grid, rtol=1e-6) and float(sch.sigmas[-1]) == 0.0
        x = xT.clone()
        for t in sch.timesteps:
            x = sch.step(pipe.unet(x, t).sample, t, x).prev_sample
    assert torch.allclose(x, ref, rtol=1e-4, atol=1e-4), float((x - ref).abs().max())
    pipe(batch_size=1, num_inference_steps=2, output_type="np")  # the pipeline itself runs

    # import back: the same network, schedule and prediction, so bitwise the same samples
    import_pipeline(out, tmp_path / "back")
    back = load_run(tmp_path / "back", device="cpu").model.eval()
    assert back.prediction == "flow" and back.schedule.config() == model.schedule.config()
    assert back.net.config.time_scale == 1000.0
    sd0, sd1 = model.net.state_dict(), back.net.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)
    with torch.no_grad():
        for name in ("euler", "heun", "dpmpp_2m"):
            a = sample(model, xT, name, steps=6, generator=torch.Generator().manual_seed(9))
            b = sample(back, xT, name, steps=6, generator=torch.Generator().manual_seed(9))
            assert torch.equal(a, b), name


@pytest.mark.parametrize("prediction,time_scale,words", [
    ("edm", 1000.0, "EDM preconditioning scales the network's input"),
    ("eps", 1000.0, "on the flow schedule"),
    ("flow", 1000.0 / (1 - 1e-3), "timestep = 1000 sigma"),
])
def test_flow_exports_that_cannot_map_are_refused_in_one_line(tmp_path, prediction, time_scale, words):
    run = _flow_run(tmp_path / "run", prediction=prediction, time_scale=time_scale)
    with pytest.raises(UserError, match=words) as e:
        export_run(run, tmp_path / "pipe")
    assert "\n" not in str(e.value) and not (tmp_path / "pipe").exists()


def test_flow_scheduler_with_a_shift_is_refused(tmp_path):
    run = _flow_run(tmp_path / "run")
    out = export_run(run, tmp_path / "pipe")
    p = out / "scheduler" / "scheduler_config.json"
    cfg = json.loads(p.read_text())
    p.write_text(json.dumps({**cfg, "shift": 3.0}))
    with pytest.raises(UserError, match="shift=3.0"):
        import_pipeline(out, tmp_path / "back")
