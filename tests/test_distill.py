"""Progressive distillation (Salimans & Ho 2022): one round on an exact Gaussian teacher, and the CLI."""
import json
import math

import numpy as np
import torch

import difflab
from difflab.data import Dataset
from difflab.models.denoiser import Denoiser
from difflab.models.gaussian_mixture import GaussianMixture
from difflab.models.mlp import MLP, MLPConfig
from difflab.samplers import grids
from difflab.training.config import FitConfig
from difflab.training.distill import halving_target, distill_round

SCHED = difflab.schedules.get("linear", T=1000)
GAUSS = GaussianMixture(torch.ones(1), torch.tensor([[0.5, -0.3]], dtype=torch.float64),
                        torch.diag(torch.tensor([0.3, 0.1], dtype=torch.float64))[None])


def test_halving_target_reproduces_two_teacher_ddim_steps():
    teacher = GAUSS.denoiser(SCHED, "x0")
    g = grids.karras(SCHED, 4, sigma_top=math.inf)
    x = SCHED.sample_prior((64, 2), generator=torch.Generator().manual_seed(0)).double()
    two = difflab.sample(teacher, x, "ddim", grid=torch.cat([g[:3], g.new_zeros(1)]))  # s0 -> s1 -> s2 -> D
    y = x / float(SCHED.alpha(SCHED.t_from_sigma_ve(g[0])))
    s = lambda v: torch.full((64,), float(v), dtype=torch.float64)
    target = halving_target(teacher, y, s(g[0]), s(g[1]), s(g[2]))
    y2 = (g[2] / g[0]) * y + (1 - g[2] / g[0]) * target  # the student's one step with x0 = target
    a2 = float(SCHED.alpha(SCHED.t_from_sigma_ve(g[2])))
    one = difflab.sample(teacher, y2 * a2, "ddim", grid=torch.tensor([float(g[2]), 0.0], dtype=torch.float64))
    torch.testing.assert_close(one, two, rtol=1e-10, atol=1e-10)


def test_one_round_on_an_exact_gaussian_teacher_halves_the_steps_with_small_error():
    teacher = GAUSS.denoiser(SCHED, "x0")
    data = Dataset(GAUSS.sample(4096, torch.Generator().manual_seed(0)).float(), None, "gauss")
    g8 = grids.karras(SCHED, 8, sigma_top=math.inf)
    torch.manual_seed(0)
    student = Denoiser(MLP(MLPConfig(dim=2, hidden=64, depth=2)), SCHED, "x0")
    cfg = FitConfig(batch_size=256, steps=300, lr=3e-3, warmup_steps=20, log_every=10**6, checkpoint_every=10**6)
    st, g4 = distill_round(teacher, data, g8, cfg, student=student)
    assert torch.equal(g4, torch.cat([g8[:-1:2], g8.new_zeros(1)])) and len(g4) == 5
    x = SCHED.sample_prior((500, 2), generator=torch.Generator().manual_seed(1))
    ref = difflab.sample(teacher, x, "ddim", grid=g8)  # the teacher's 8 steps

    def err(model):
        return float((difflab.sample(model, x, "ddim", grid=g4) - ref).pow(2).mean().sqrt())

    assert err(st) < 0.4 * err(teacher)  # measured 0.028 against the teacher's 0.122 at 4 steps


def test_cli_distill_writes_a_run_that_samples_in_the_student_steps(tmp_path, capsys):
    from difflab.cli.main import main

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"network": {"hidden": 32, "depth": 2}, "batch_size": 32, "sample_steps": 3,
                               "schedule": {"kind": "linear", "T": 100}}))
    assert main(["train", "--data", "toy:moons", "--out", str(tmp_path / "t"), "--steps", "4", "--config", str(cfg),
                 "--quiet"]) == 0
    out = tmp_path / "d"
    assert main(["distill", "--run", str(tmp_path / "t"), "--steps", "2", "--start", "8", "--round-steps", "3",
                 "--batch-size", "32", "--out", str(out), "--quiet"]) == 0
    grid = json.loads((out / "grids.json").read_text())["ddim:2:none"]["sigmas"]
    assert len(grid) == 3 and grid[-1] == 0.0
    capsys.readouterr()
    assert main(["sample", "--run", str(out), "--sampler", "ddim", "--steps", "2", "--num", "8",
                 "--out", str(tmp_path / "s.npz")]) == 0
    assert "using the tuned ddim grid" in capsys.readouterr().out
    model = difflab.training.load_run(out).model
    x_T = model.schedule.sample_prior((8, 2), generator=torch.Generator().manual_seed(0))
    with np.load(tmp_path / "s.npz") as f:
        want = difflab.sample(model, x_T, "ddim", grid=torch.tensor(grid, dtype=torch.float64))
        assert np.allclose(f["samples"], want.numpy(), atol=1e-5)
    assert main(["distill", "--run", str(tmp_path / "t"), "--steps", "3", "--start", "8", "--out", str(tmp_path / "e")]) == 2
    assert main(["distill", "--run", str(tmp_path / "t"), "--steps", "2", "--start", "8", "--out", str(out)]) == 2
