"""Progressive distillation (Salimans & Ho 2022) as an engine family: a student whose one DDIM step matches two
of its teacher's, so each round halves the number of sampling steps.

Everything is in the scaled variable y = x / alpha with noise level s = sigma / alpha (docs/samplers.md), where a
DDIM step from s to s' with x_0 estimate D is y' = (s'/s) y + (1 - s'/s) D (Song et al. 2021a, eq. 12).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, get_args

import torch
from torch import Tensor

from ..data import Dataset
from ..models.denoiser import ConsistencyDenoiser, Denoiser
from ..schedules import append_dims
from .config import FitConfig
from .engine import Batch, Family, OptimizerSpec, Phase, fit


def _ddim(y: Tensor, s: Tensor, s_next: Tensor, d: Tensor) -> Tensor:
    """One DDIM step in y from level s to s_next with x_0 estimate d (s, s_next broadcastable)."""
    r = s_next / s
    return r * y + (1 - r) * d


def _call(model: Any, y: Tensor, s: Tensor, cond: Any) -> Tensor:
    """D at per-example levels s [B] for the scaled state y."""
    t = model.schedule.t_from_sigma_ve(s.double())
    a = model.schedule.alpha(t).to(y.dtype)
    return model(y * append_dims(a, y.ndim), t.to(y.dtype), cond)


def halving_target(teacher: Any, y: Tensor, s: Tensor, s_mid: Tensor, s_next: Tensor, cond: Any = None) -> Tensor:
    """The x_0 whose one DDIM step s -> s_next lands where two teacher DDIM steps s -> s_mid -> s_next do (Salimans & Ho 2022, Alg. 2)."""
    S, M, N = (append_dims(v.to(y.dtype), y.ndim) for v in (s, s_mid, s_next))
    y_mid = _ddim(y, S, M, _call(teacher, y, s, cond))
    y2 = _ddim(y_mid, M, N, _call(teacher, y_mid, s_mid, cond))
    r = N / S
    return (y2 - r * y) / (1 - r)  # = y2 when s_next = 0


@dataclass(frozen=True)
class Round:
    """One round: the teacher's grid (2N nonzero levels, then 0) and the student's (every other level)."""

    teacher_sigmas: Tensor

    @property
    def student_sigmas(self) -> Tensor:
        return torch.cat([self.teacher_sigmas[:-1:2], self.teacher_sigmas.new_zeros(1)])


def as_student(teacher: Any, prediction: str | None = "v") -> Denoiser:
    """A copy of the teacher's network read as ``prediction`` (v by default: Salimans & Ho 2022, sec. 4; None keeps the teacher's).

    Read in the teacher's own parametrisation the copy is the teacher's function (:func:`starts_as_teacher`); read
    in another one it is not (an eps network read as v gives another x_0): the first round then starts from the
    teacher's weights only. No exact rewrite helps: an eps network turned into v = (eps - sigma x) / alpha keeps
    eps's 1/alpha gain on the network output, the conditioning that v prediction is there to avoid (docs/samplers.md).
    """
    base = _base(teacher)
    return Denoiser(copy.deepcopy(base.net), base.schedule, prediction or base.prediction)


def starts_as_teacher(teacher: Any, prediction: str | None) -> bool:
    """Whether :func:`as_student` (teacher, prediction) computes the teacher's denoiser: the same parametrisation."""
    return prediction is None or prediction == _base(teacher).prediction


def _base(teacher: Any) -> Denoiser:
    """The Denoiser under wrappers such as Clamped and Thresholded; TypeError if there is none."""
    base = teacher
    while not isinstance(base, Denoiser) and hasattr(base, "model"):
        base = base.model
    if not isinstance(base, Denoiser):
        raise TypeError(f"the teacher must be a Denoiser to copy its network, got {type(teacher).__name__}")
    return base


class ProgressiveDistillation(Family):
    """Student (by default the teacher's network read as v prediction, which is the teacher's function only for a v
    teacher: :func:`as_student`) trained on the truncated-SNR-weighted x_0
    error max(SNR, 1) |D_student - x~_0|^2, SNR = 1/s^2, at the student's own levels (Salimans & Ho 2022, eq. 9).

    With v prediction the x_0 error is sigma times the v error, so the weight on the network output,
    max(SNR, 1) sigma^2 = max(alpha^2, sigma^2), stays within [1/2, 1] on a VP schedule; an eps student's x_0
    error is sigma/alpha times its eps error, which reaches 2e4 at the top of a cosine table.
    """

    def __init__(self, teacher: Any, data: Dataset, rnd: Round, student: Denoiser | None = None,
                 cond_fn: Any = None):
        if (len(rnd.teacher_sigmas) - 1) % 2:
            raise ValueError(f"the teacher grid needs an even number of levels, got {len(rnd.teacher_sigmas) - 1}")
        self.teacher, self.data, self.round = teacher, data, rnd
        if isinstance(teacher, torch.nn.Module):
            teacher.eval().requires_grad_(False)
        self.student = (student if student is not None else as_student(teacher)).train().requires_grad_(True)
        self.cond_fn = cond_fn
        self.modules = {"model": self.student}
        self.optimizers = {"model": OptimizerSpec(("model",))}
        self.ema = ()  # a round is short: an EMA started at the teacher's weights would lag behind the student
        self.phases = [Phase("model", self.loss)]

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        x0 = self.data.batch(batch.idx).to(batch.device)
        sig = self.round.teacher_sigmas.to(batch.device)
        n = (len(sig) - 1) // 2
        i = batch.rng.randint(n, batch.n).to(batch.device)
        s, s_mid, s_next = sig[2 * i], sig[2 * i + 1], sig[2 * i + 2]
        eps = batch.rng.randn(x0.shape).to(batch.device, x0.dtype)
        y = x0 + append_dims(s.to(x0.dtype), x0.ndim) * eps  # y_t = x_0 + s eps: x_t / alpha
        cond = self.cond_fn(batch) if self.cond_fn is not None else None
        with torch.no_grad():
            target = halving_target(self.teacher, y, s, s_mid, s_next, cond)
        pred = _call(self.student, y, s, cond)
        w = torch.clamp(1.0 / s.to(x0.dtype) ** 2, min=1.0)
        return {"loss": (append_dims(w, x0.ndim) * (pred - target) ** 2).mean()}


def distill_round(teacher: Any, data: Dataset, teacher_sigmas: Tensor, cfg: FitConfig, run_dir: Any = None,
                  student: Denoiser | None = None, progress: bool = False) -> tuple[Denoiser, Tensor]:
    """One round: a student (``as_student(teacher)`` unless given; its last weights) that samples with DDIM on every other level of ``teacher_sigmas``; returns (student, its grid)."""
    rnd = Round(torch.as_tensor(teacher_sigmas, dtype=torch.float64))
    family = ProgressiveDistillation(teacher, data, rnd, student)
    fit(family, len(data), cfg, run_dir, progress=progress)
    return family.student.eval().requires_grad_(False), rnd.student_sigmas


Solver = Literal["heun", "euler"]
Metric = Literal["l2", "pseudo_huber"]


def ode_step(teacher: Any, y: Tensor, s: Tensor, s_next: Tensor, solver: Solver = "heun", cond: Any = None) -> Tensor:
    """One step of the PF-ODE dy/ds = (y - D(y, s)) / s from s to s_next (> 0) in y: Euler or Heun (Karras et al. 2022, Alg. 1)."""
    S, N = append_dims(s.to(y.dtype), y.ndim), append_dims(s_next.to(y.dtype), y.ndim)
    d0 = (y - _call(teacher, y, s, cond)) / S
    y1 = y + (N - S) * d0
    if solver == "euler":
        return y1
    d1 = (y1 - _call(teacher, y1, s_next, cond)) / N
    return y + (N - S) * (d0 + d1) / 2


def consistency_metric(a: Tensor, b: Tensor, metric: Metric = "pseudo_huber") -> Tensor:
    """Per-example distance: mean squared error, or sqrt(|a - b|^2 + c^2) - c with c = 0.00054 sqrt(dim) (Song & Dhariwal 2023, sec. 3.3)."""
    d2 = (a - b).flatten(1).pow(2)
    if metric == "l2":
        return d2.mean(1)
    c = 0.00054 * d2.shape[1] ** 0.5
    return torch.sqrt(d2.sum(1) + c * c) - c


class ConsistencyDistillation(Family):
    """Consistency distillation (Song et al. 2023, Alg. 2): at adjacent levels s_{n+1} > s_n of a Karras grid,
    d(f_theta(y_{n+1}, s_{n+1}), f_target(y^_n, s_n)), y_{n+1} = x_0 + s_{n+1} z and y^_n one teacher ODE step;
    the target network is an EMA of the student, target <- mu target + (1 - mu) theta before every step.

    ``sigmas``: the grid (decreasing, ends in 0; its last nonzero level must be the student's s_min). The step
    from the top level is Euler when ``solver`` is heun, as in difflab's Heun (the teacher's D is worst there).
    """

    def __init__(self, teacher: Any, data: Dataset, sigmas: Tensor, student: ConsistencyDenoiser,
                 mu: float = 0.95, solver: Solver = "heun", metric: Metric = "pseudo_huber", cond_fn: Any = None):
        sig = torch.as_tensor(sigmas, dtype=torch.float64)
        if len(sig) < 3 or float(sig[-1]) != 0.0:
            raise ValueError("consistency distillation needs a grid of at least 2 nonzero levels ending in 0")
        if not math.isclose(float(sig[-2]), student.sigma_min, rel_tol=1e-6):
            raise ValueError(f"the grid's last level {float(sig[-2]):.4g} is not the student's s_min {student.sigma_min:.4g}")
        if not 0.0 <= mu < 1.0 or solver not in get_args(Solver) or metric not in get_args(Metric):
            raise ValueError(f"mu must lie in [0, 1) (got {mu}), solver in {get_args(Solver)}, metric in {get_args(Metric)}")
        self.teacher, self.data, self.sigmas = teacher, data, sig[:-1]
        if isinstance(teacher, torch.nn.Module):
            teacher.eval().requires_grad_(False)
        self.student = student.train().requires_grad_(True)
        self.target = copy.deepcopy(student).requires_grad_(False)
        self.mu, self.solver, self.metric, self.cond_fn = mu, solver, metric, cond_fn
        self._updated_at = -1
        self.modules = {"model": self.student, "target": self.target}  # the target is saved and resumed, not optimised
        self.optimizers = {"model": OptimizerSpec(("model",))}
        self.ema = ()
        self.phases = [Phase("model", self.loss)]

    @torch.no_grad()
    def _update_target(self) -> None:
        for pt, p in zip(self.target.parameters(), self.student.parameters()):
            pt.lerp_(p.detach(), 1.0 - self.mu)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        if batch.step != self._updated_at:  # once per optimisation step, also with accumulation micro-batches
            self._update_target()
            self._updated_at = batch.step
        self.target.eval()
        x0 = self.data.batch(batch.idx).to(batch.device)
        sig = self.sigmas.to(batch.device)
        i = batch.rng.randint(len(sig) - 1, batch.n).to(batch.device)
        s, s_next = sig[i], sig[i + 1]
        z = batch.rng.randn(x0.shape).to(batch.device, x0.dtype)
        y = x0 + append_dims(s.to(x0.dtype), x0.ndim) * z
        cond = self.cond_fn(batch) if self.cond_fn is not None else None
        with torch.no_grad():
            y_hat = ode_step(self.teacher, y, s, s_next, self.solver, cond)
            if self.solver == "heun":  # Euler from the top level
                top = i == 0
                if bool(top.any()):
                    y_hat[top] = ode_step(self.teacher, y[top], s[top], s_next[top], "euler",
                                          None if cond is None else cond[top])
            target = _call(self.target, y_hat, s_next, cond)
        pred = _call(self.student, y, s, cond)
        return {"loss": consistency_metric(pred, target, self.metric).mean()}


def distill_consistency(teacher: Any, data: Dataset, sigmas: Tensor, student: ConsistencyDenoiser, cfg: FitConfig,
                        run_dir: Any = None, progress: bool = False, **options: Any) -> ConsistencyDenoiser:
    """Train a consistency student on the engine (options: mu, solver, metric); returns it in eval mode."""
    family = ConsistencyDistillation(teacher, data, sigmas, student, **options)
    fit(family, len(data), cfg, run_dir, progress=progress)
    return family.student.eval().requires_grad_(False)


def progressive_rounds(start: int, steps: int) -> int:
    """Rounds that halve ``start`` DDIM steps down to ``steps`` (ValueError unless start / steps is a power of 2 > 1)."""
    if steps < 1 or start <= steps:
        raise ValueError(f"start ({start}) must exceed steps ({steps}) >= 1")
    rounds = math.log2(start / steps)
    if rounds != int(rounds):
        raise ValueError(f"start / steps must be a power of 2, got {start} / {steps}")
    return int(rounds)


def _targets(teacher: Any, data: Dataset) -> Any:
    """The teacher as sampling uses it: clamped x_0 on images (D at sigma_max is far off), as is on points."""
    from ..data.domain import domain_of

    return domain_of(data).denoiser(teacher)


def distill_progressive(teacher: Denoiser, data: Dataset, out: Path, run_config: dict[str, Any], cfg: FitConfig,
                        start: int = 64, steps: int = 4, prediction: str | None = "v", source: str | Path = "",
                        progress: bool = False, log: Callable[[str], None] | None = None) -> tuple[Denoiser, Tensor]:
    """All rounds from DDIM on ``start`` Karras levels to ``steps`` (Salimans & Ho 2022, Alg. 2), each with ``cfg``.

    The last round's student becomes the run folder ``out``: ``run_config`` (the teacher's run config) with the
    student's prediction and a ``distillation`` record naming the teacher folder ``source``, its checkpoint, and grids.json holding its DDIM grid.
    Returns (student, its grid).
    """
    from ..samplers import grids
    from ..samplers.tuned import GRIDS_FILE, entry, key
    from .checkpoint import CONFIG, write_json

    rounds = progressive_rounds(start, steps)
    pred = prediction or teacher.prediction
    model, sigmas = teacher, grids.karras(teacher.schedule, start)
    out.mkdir(parents=True, exist_ok=True)
    config = {**run_config, "prediction": pred, "distillation": {
        "method": "progressive", "teacher": str(source), "start": start, "steps": steps,
        "round": cfg.to_dict()}}
    for r in range(rounds):
        last = r == rounds - 1
        if last:
            write_json(out / CONFIG, config)
        student = as_student(model, pred) if r == 0 else copy.deepcopy(model)
        model, sigmas = distill_round(_targets(model, data), data, sigmas, cfg, out if last else None,
                                      student=student, progress=progress)
        if log is not None:
            log(f"round {r + 1}/{rounds}: student samples with DDIM in {len(sigmas) - 1} steps")
    e = entry("ddim", steps, sigmas, distilled=True)
    write_json(out / GRIDS_FILE, {key("ddim", steps, m): {**e, "denoised": m} for m in ("clip", "none")})
    return model, sigmas


def distill_consistency_run(teacher: Denoiser, data: Dataset, out: Path, run_config: dict[str, Any], cfg: FitConfig,
                            levels: int = 18, steps: int = 1, prediction: str | None = "v", source: str | Path = "",
                            progress: bool = False, **options: Any) -> ConsistencyDenoiser:
    """Consistency distillation (Song et al. 2023, Alg. 2) into the run folder ``out``, with grids.json holding the
    1..``steps``-call consistency grids; options: mu, solver, metric (see :class:`ConsistencyDistillation`)."""
    from ..samplers import grids
    from ..samplers.tuned import GRIDS_FILE, entry, key
    from .checkpoint import CONFIG, write_json

    pred = prediction or teacher.prediction
    sigma_data = data.std()  # streamed: a packed set is not loaded whole
    base = as_student(teacher, pred)
    student = ConsistencyDenoiser(base.net, base.schedule, pred, sigma_data=sigma_data)
    out.mkdir(parents=True, exist_ok=True)
    record = {"method": "consistency", "teacher": str(source), "levels": levels,
              "mu": options.get("mu", 0.95), "solver": options.get("solver", "heun"),
              "metric": options.get("metric", "pseudo_huber"), "sigma_data": sigma_data, "fit": cfg.to_dict()}
    write_json(out / CONFIG, {**run_config, "prediction": pred, "denoiser": "consistency", "distillation": record})
    distill_consistency(_targets(teacher, data), data, grids.karras(teacher.schedule, levels), student, cfg, out,
                        progress=progress, **options)
    entries = {key("consistency", k, m): {**entry("consistency", k, grids.consistency(teacher.schedule, k),
                                                  distilled=True), "denoised": m}
               for k in range(1, steps + 1) for m in ("clip", "none")}
    write_json(out / GRIDS_FILE, entries)
    return student


__all__ = ["ProgressiveDistillation", "as_student", "ConsistencyDistillation", "distill_consistency", "ode_step",
           "consistency_metric", "Round", "halving_target", "distill_round", "starts_as_teacher",
           "progressive_rounds", "distill_progressive", "distill_consistency_run"]
