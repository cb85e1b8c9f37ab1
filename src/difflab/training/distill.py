"""Progressive distillation (Salimans & Ho 2022) as an engine family: a student whose one DDIM step matches two
of its teacher's, so each round halves the number of sampling steps.

Everything is in the scaled variable y = x / alpha with noise level s = sigma / alpha (docs/samplers.md), where a
DDIM step from s to s' with x_0 estimate D is y' = (s'/s) y + (1 - s'/s) D (Song et al. 2021a, eq. 12).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..data import Dataset
from ..models.denoiser import Denoiser
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


class ProgressiveDistillation(Family):
    """Student initialised from the teacher, trained on the truncated-SNR-weighted x_0 error
    max(1/s^2, 1) |D_student - x~_0|^2 at the student's own levels (Salimans & Ho 2022, sec. 4 and eq. 9)."""

    def __init__(self, teacher: Any, data: Dataset, rnd: Round, student: Denoiser | None = None,
                 cond_fn: Any = None):
        if (len(rnd.teacher_sigmas) - 1) % 2:
            raise ValueError(f"the teacher grid needs an even number of levels, got {len(rnd.teacher_sigmas) - 1}")
        self.teacher, self.data, self.round = teacher, data, rnd
        if isinstance(teacher, torch.nn.Module):
            teacher.eval().requires_grad_(False)
        self.student = (student if student is not None else copy.deepcopy(teacher)).train().requires_grad_(True)
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
    """One round: a student (the teacher's copy unless given; its last weights) that samples with DDIM on every other level of ``teacher_sigmas``; returns (student, its grid)."""
    rnd = Round(torch.as_tensor(teacher_sigmas, dtype=torch.float64))
    family = ProgressiveDistillation(teacher, data, rnd, student)
    fit(family, len(data), cfg, run_dir, progress=progress)
    return family.student.eval().requires_grad_(False), rnd.student_sigmas


__all__ = ["ProgressiveDistillation", "Round", "halving_target", "distill_round"]
