"""Training objectives for learned reverse variances: L_hybrid = L_simple + lambda L_vlb and L_vlb alone
(Nichol & Dhariwal 2021, sec. 3.1 and 3.3).

The training table (:data:`difflab.training.objectives.OBJECTIVES`) names them ``hybrid`` (uniform t, as the
paper trains L_hybrid), ``hybrid_is`` (the same with importance-sampled t) and ``vlb`` (importance-sampled t, the
paper's recipe for L_vlb).  The network must output 2C channels (prediction, then v); a
:class:`LearnedVarianceDenoiser` also carries the L_t history that importance sampling needs (without it, t is
uniform).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..models.denoiser import Denoiser, target_for, x0_from
from ..schedules import DiscreteSchedule
from .bound import step_terms_from
from ..utils.random import BatchRandom, batch_random
from .variance import reverse_log_variance, split_output

#: Weight of L_vlb in L_hybrid (Nichol & Dhariwal 2021, sec. 3.1).
HYBRID_LAMBDA = 0.001
#: Probability mass spread uniformly over t when importance sampling (keeps every step visited).
UNIFORM_MIX = 0.001


def importance_t(model: Denoiser, n: int, generator: torch.Generator | BatchRandom | None = None) -> tuple[Tensor, Tensor]:
    """Steps t [n] with p_t proportional to sqrt(E[L_t^2]) over the recent history, and weights 1 / (T p_t) (Nichol & Dhariwal 2021, eq. 18).

    Uniform (weights 1) until every step holds a full history, or when the model keeps none.
    """
    T = model.schedule.T
    rng = batch_random(generator, n)
    hist = getattr(model, "loss_history", None)
    if hist is None or bool((model.loss_count < hist.shape[1]).any()):
        return rng.randint(T, n), torch.ones(n, dtype=torch.float64)
    p = torch.sqrt((hist**2).mean(1))
    p = p / p.sum() * (1.0 - UNIFORM_MIX) + UNIFORM_MIX / T
    t = rng.multinomial(p, n)
    return t, 1.0 / (T * p[t])


@torch.no_grad()
def record_losses(model: Denoiser, t: Tensor, losses: Tensor) -> None:
    """Push per-example L_t values into the model's history buffers (a ring of the most recent values per step)."""
    hist = getattr(model, "loss_history", None)
    if hist is None:
        return
    for ti, li in zip(t.tolist(), losses.detach().double().cpu().tolist()):
        k = int(model.loss_count[ti]) % hist.shape[1]
        hist[ti, k] = li
        model.loss_count[ti] += 1


def hybrid_loss(model: Denoiser, x0: Tensor, cond: Any = None, *, generator: torch.Generator | BatchRandom | None = None,
                lam: float = HYBRID_LAMBDA, bins: int | None = None, simple: bool = True,
                importance: bool = False) -> Tensor:
    """Per-example L_simple + lam T L_t / d with the stop-gradient on the mean inside L_t (Nichol & Dhariwal 2021, eq. 16); [B].

    ``simple=False`` gives L_vlb alone (T L_t / d, mean and variance both trained); ``importance`` draws t from the
    L_t history and weights by 1 / (T p_t) (their eq. 18), otherwise t is uniform.  The history is recorded either way.
    """
    sched = model.schedule
    if not isinstance(sched, DiscreteSchedule):
        raise ValueError("learned variances need a discrete (DDPM) schedule")
    B, d, T = x0.shape[0], x0[0].numel(), sched.T
    rng = batch_random(generator, B)
    if importance:
        t, w = importance_t(model, B, rng)
    else:
        t, w = rng.randint(T, B), torch.ones(B, dtype=torch.float64)
    eps = rng.randn(x0.shape, x0.dtype).to(x0.device)
    tf = t.to(x0.dtype).to(x0.device)
    a, s = model.coefficients(tf, x0)
    x_t = a * x0 + s * eps
    pred, v = split_output(model, x_t, tf, cond)
    x0_hat = x0_from(model.prediction, pred, x_t, a, s)
    log_var = reverse_log_variance(sched, "learned", t, x_t, v)
    vlb = step_terms_from(sched, x0, x_t, t, x0_hat.detach() if simple else x0_hat, log_var, bins) / d
    record_losses(model, t, vlb)
    loss = T * vlb * (lam if simple else 1.0)
    if simple:
        loss = loss + ((pred - target_for(model.prediction, x0, eps, a, s)) ** 2).flatten(1).mean(1)
    return loss * w.to(loss)


#: Objectives that train a LearnedVarianceDenoiser (a network with 2C output channels).
LEARNED_VARIANCE_OBJECTIVES = ("hybrid", "hybrid_is", "vlb")

__all__ = ["LEARNED_VARIANCE_OBJECTIVES", "HYBRID_LAMBDA", "importance_t", "record_losses", "hybrid_loss"]
