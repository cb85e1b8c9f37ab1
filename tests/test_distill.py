"""Progressive distillation (Salimans & Ho 2022): one round on an exact Gaussian teacher, and the CLI."""
import json
import math

import numpy as np
import pytest
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


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A 4-step MLP teacher on toy:moons (linear T = 100) made by `difflab train`."""
    from difflab.cli.main import main

    d = tmp_path_factory.mktemp("teacher")
    cfg = d / "cfg.json"
    cfg.write_text(json.dumps({"network": {"hidden": 32, "depth": 2}, "batch_size": 32, "sample_steps": 3,
                               "schedule": {"kind": "linear", "T": 100}}))
    assert main(["train", "--data", "toy:moons", "--out", str(d / "t"), "--steps", "4", "--config", str(cfg),
                 "--quiet"]) == 0
    return d / "t"


def test_cli_distill_writes_a_run_that_samples_in_the_student_steps(tmp_path, capsys, teacher_run):
    from difflab.cli.main import main

    out = tmp_path / "d"
    assert main(["distill", "--run", str(teacher_run), "--steps", "2", "--start", "8", "--round-steps", "3",
                 "--batch-size", "32", "--out", str(out), "--quiet"]) == 0
    grid = json.loads((out / "grids.json").read_text())["ddim:2:none"]["sigmas"]
    assert len(grid) == 3 and grid[-1] == 0.0
    capsys.readouterr()
    assert main(["sample", "--run", str(out), "--sampler", "ddim", "--steps", "2", "--num", "8",
                 "--out", str(tmp_path / "s.npz")]) == 0
    assert "using the tuned ddim grid" in capsys.readouterr().out
    model = difflab.training.load_run(out).model
    from difflab.evaluation.generate import PerSample

    x_T = PerSample(0, range(8)).prior(model.schedule, (2,))  # sample i's noise from its own seeded generator
    with np.load(tmp_path / "s.npz") as f:
        want = difflab.sample(model, x_T, "ddim", grid=torch.tensor(grid, dtype=torch.float64))
        assert np.allclose(f["samples"], want.numpy(), atol=1e-5)
    assert main(["distill", "--run", str(teacher_run), "--steps", "3", "--start", "8", "--out", str(tmp_path / "e")]) == 2
    assert main(["distill", "--run", str(teacher_run), "--steps", "2", "--start", "8", "--out", str(out)]) == 2


# Consistency distillation (Song et al. 2023)

def _gauss_flow(y, s, s_next, m, c2):
    """Exact PF-ODE flow of N(m, c2 I) data in y = x / alpha: y - m scales by sqrt(c2 + s'^2) / sqrt(c2 + s^2)."""
    return m + (y - m) * torch.sqrt((c2 + s_next**2) / (c2 + s**2))


def test_consistency_denoiser_is_the_identity_at_s_min_and_minus_v_preconditioning_for_unit_sigma_data():
    from difflab.models.denoiser import ConsistencyDenoiser

    sched = difflab.schedules.get("vp")
    torch.manual_seed(0)
    net = MLP(MLPConfig(dim=2, hidden=16, depth=2))
    f = ConsistencyDenoiser(net, sched, "v", sigma_data=1.0).double()
    x = torch.randn(16, 2, dtype=torch.float64)
    t_min = torch.full((16,), float(sched.t_min), dtype=torch.float64)
    a = float(sched.alpha(torch.tensor(sched.t_min, dtype=torch.float64)))
    torch.testing.assert_close(f(x, t_min), x / a, rtol=1e-12, atol=1e-12)  # boundary condition f(y, s_min) = y
    t = torch.full((16,), 0.7, dtype=torch.float64)
    a, sg = (float(v) for v in sched.alpha_sigma(torch.tensor(0.7, dtype=torch.float64)))
    s, e, y = sg / a, sg / a - f.sigma_min, x / a
    want = y / (e**2 + 1) + e / math.sqrt(s**2 + 1) * (-f.raw(x, t))  # c_skip y + c_out F with F = -v (sec. C)
    torch.testing.assert_close(f(x, t), want, rtol=1e-10, atol=1e-10)
    g = ConsistencyDenoiser(MLP(MLPConfig(dim=2, hidden=16, depth=2)), sched, "v")
    g.load_state_dict(ConsistencyDenoiser(net, sched, "v", sigma_data=0.3).state_dict())
    assert float(g.sigma_data) == 0.3  # saved with the weights


def test_teacher_ode_step_has_heun_and_euler_local_orders_on_gaussian_data():
    from difflab.training.distill import ode_step

    m, c2 = torch.tensor([0.5, -0.3], dtype=torch.float64), 0.2
    gm = GaussianMixture(torch.ones(1), m[None], c2 * torch.eye(2, dtype=torch.float64)[None])
    teacher = gm.denoiser(SCHED, "x0")
    y = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2.0
    errs = {"heun": [], "euler": []}
    for h in (0.2, 0.1):
        s, sn = torch.full((32,), 1.0, dtype=torch.float64), torch.full((32,), 1.0 - h, dtype=torch.float64)
        exact = _gauss_flow(y, s[:, None], sn[:, None], m, c2)
        for k in errs:
            errs[k].append(float((ode_step(teacher, y, s, sn, k) - exact).abs().max()))
    assert 1.7 < math.log2(errs["euler"][0] / errs["euler"][1]) < 2.3  # local error O(h^2)
    assert 2.7 < math.log2(errs["heun"][0] / errs["heun"][1]) < 3.3  # local error O(h^3)


def test_consistency_sampler_makes_one_call_per_level_and_renoises_to_each_level():
    calls = []

    class Const(torch.nn.Module):
        schedule, sigma_min = SCHED, 0.0

        def forward(self, x, t, cond=None):
            calls.append(float(t[0]))
            return torch.zeros_like(x)

    g = torch.tensor([float(SCHED.sigma_ve(torch.tensor(999.0))), 3.0, 0.5, 0.0], dtype=torch.float64)
    states = []
    x_T = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0))
    out = difflab.sample(Const(), x_T, "consistency", grid=g, generator=torch.Generator().manual_seed(1),
                         callback=lambda d: states.append(d["x"]))
    assert len(calls) == 3 and torch.equal(out, torch.zeros_like(out))
    for st, s in zip(states[1:], (3.0, 0.5)):  # y = f + s z, x = alpha y: std of x = alpha s
        a = float(SCHED.alpha(SCHED.t_from_sigma_ve(torch.tensor(s, dtype=torch.float64))))
        assert abs(float(st.std()) / (a * s) - 1) < 0.05  # 8000 draws: std error about 0.8%


@pytest.mark.slow
def test_consistency_distillation_maps_noise_to_the_teachers_ode_endpoint_on_a_2d_mixture():
    from difflab.models.denoiser import ConsistencyDenoiser
    from difflab.training.distill import distill_consistency

    gm = GaussianMixture(torch.ones(2) / 2, torch.tensor([[1.0, 0.5], [-1.0, -0.5]], dtype=torch.float64),
                         torch.diag(torch.tensor([0.1, 0.05], dtype=torch.float64))[None].repeat(2, 1, 1))
    teacher = gm.denoiser(SCHED, "x0")
    data = Dataset(gm.sample(4096, torch.Generator().manual_seed(0)).float(), None, "gmm")
    g = grids.karras(SCHED, 10)
    torch.manual_seed(0)
    student = ConsistencyDenoiser(MLP(MLPConfig(dim=2, hidden=64, depth=2)), SCHED, "x0", sigma_data=1.0)
    cfg = FitConfig(batch_size=128, steps=250, lr=3e-3, warmup_steps=20, log_every=10**6, checkpoint_every=10**6)
    st = distill_consistency(teacher, data, g, student, cfg, mu=0.9, metric="l2")
    x = SCHED.sample_prior((500, 2), generator=torch.Generator().manual_seed(1))
    end = difflab.sample(teacher, x, "heun", steps=200)  # the teacher's ODE endpoint
    one = difflab.sample(st, x, "consistency", grid=grids.consistency(SCHED, 1))
    d = teacher(x, torch.full((500,), float(SCHED.t_max)))  # the teacher's own one-call answer, E[x_0 | x_T]

    def err(a):
        return float((a - end).pow(2).mean().sqrt())

    assert err(one) < 0.3 * err(d)  # measured 0.13 against 0.84 (the modes are +-1.1 apart)


def test_cli_consistency_distill_writes_a_run_that_samples_in_one_to_k_calls(tmp_path, capsys, teacher_run):
    from difflab.cli.main import main
    from difflab.models.denoiser import ConsistencyDenoiser

    out = tmp_path / "c"
    assert main(["distill", "--run", str(teacher_run), "--method", "consistency", "--steps", "2", "--levels", "6",
                 "--round-steps", "3", "--batch-size", "32", "--out", str(out), "--quiet"]) == 0
    model = difflab.training.load_run(out).model
    assert isinstance(model, ConsistencyDenoiser) and model.prediction == "v"
    assert abs(float(model.sigma_data) - float(difflab.data.load("toy:moons").x.std())) < 1e-6
    grid = json.loads((out / "grids.json").read_text())["consistency:2:none"]["sigmas"]
    assert len(grid) == 3 and grid[-1] == 0.0
    capsys.readouterr()
    assert main(["sample", "--run", str(out), "--sampler", "consistency", "--steps", "2", "--num", "8",
                 "--out", str(tmp_path / "s.npz")]) == 0
    assert "using the tuned consistency grid" in capsys.readouterr().out
    assert main(["distill", "--run", str(teacher_run), "--method", "consistency", "--mu", "1",
                 "--out", str(tmp_path / "e")]) == 2


def test_the_default_progressive_student_reads_a_copy_of_the_teachers_network_as_v():
    from difflab.models.denoiser import Clamped
    from difflab.training.distill import as_student

    torch.manual_seed(0)
    teacher = Denoiser(MLP(MLPConfig(dim=2, hidden=16, depth=2)), SCHED, "eps")
    st = as_student(Clamped(teacher))
    assert st.prediction == "v" and st.net is not teacher.net and st.schedule is SCHED
    x, t = torch.randn(8, 2), torch.full((8,), 500.0)
    torch.testing.assert_close(st.raw(x, t), teacher.raw(x, t))  # the same weights, read as v
    assert as_student(teacher, None).prediction == "eps"


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_a_student_in_the_teachers_parametrisation_starts_as_the_teachers_denoiser(prediction):
    """D_student(x_t, t) = D_teacher(x_t, t) at every level before training; read in another parametrisation it is not."""
    from difflab.models.denoiser import Clamped
    from difflab.training.distill import as_student, starts_as_teacher

    torch.manual_seed(0)
    teacher = Denoiser(MLP(MLPConfig(dim=2, hidden=16, depth=2)), SCHED, prediction).double()
    x = torch.randn(64, 2, dtype=torch.float64)
    t = torch.linspace(0, 999, 64, dtype=torch.float64)
    other = "v" if prediction != "v" else "eps"
    for pred in (None, prediction, other):
        st = as_student(Clamped(teacher), pred)
        with torch.no_grad():
            same = torch.allclose(st(x, t), teacher(x, t), rtol=1e-12, atol=1e-12)
        assert same == starts_as_teacher(Clamped(teacher), pred) == (pred != other), pred
    with torch.no_grad():  # a copy: training the student leaves the teacher alone
        next(as_student(teacher, None).parameters()).add_(1.0)
    assert torch.equal(as_student(teacher, None)(x, t), teacher(x, t))


def test_cli_says_when_the_first_student_does_not_start_as_the_teacher(tmp_path, capsys, teacher_run):
    from difflab.cli.main import main
    from difflab.training import load_run

    args = ["distill", "--run", str(teacher_run), "--steps", "2", "--start", "4", "--round-steps", "1",
            "--batch-size", "8", "--quiet"]
    assert load_run(teacher_run).model.prediction == "eps"
    assert main([*args, "--out", str(tmp_path / "v")]) == 0
    assert "reads the eps teacher's network as v" in capsys.readouterr().out
    assert main([*args, "--prediction", "teacher", "--out", str(tmp_path / "e")]) == 0
    assert "teacher's network" not in capsys.readouterr().out
    assert load_run(tmp_path / "e").model.prediction == "eps"
