"""The training objectives of a denoiser, in one static table: name -> f(model, x0, cond, rng, cfg) -> scalar loss.

``rng`` is a :class:`difflab.utils.random.BatchRandom` (or a plain generator): every draw is made for the global
batch and sliced, so a batch split over processes or micro-batches trains exactly like the whole batch.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, get_args

from torch import Tensor

from ..likelihood.objectives import LEARNED_VARIANCE_OBJECTIVES, hybrid_loss
from ..likelihood.vdm import VDM_T, vdm_loss
from ..losses import denoising_loss
from ..models.denoiser import Denoiser

Objective = Literal["simple", "hybrid", "hybrid_is", "vlb", "vdm", "vdm_T"]
OBJECTIVE_NAMES: tuple[str, ...] = get_args(Objective)


def _bins(x0: Tensor) -> int | None:
    """The 8-bit discretised decoder for images, a continuous one for points."""
    return 256 if x0.ndim == 4 else None


def simple(model: Denoiser, x0: Tensor, cond: Any, rng: Any, cfg: Any, uncertainty: Any = None) -> Tensor:
    """L_simple (Ho et al. 2020, Alg. 1) / denoising score matching (Song et al. 2021, eq. 7) with the configured
    training-noise distribution and weighting (EDM: lognormal + edm, Karras et al. 2022, sec. 5; ``uncertainty``:
    EDM2's learned u(sigma), Karras et al. 2024)."""
    return denoising_loss(model, x0, cond, generator=rng, weighting=cfg.weighting, min_snr_gamma=cfg.min_snr_gamma,
                          noise=getattr(cfg, "noise", "uniform"), noise_mean=getattr(cfg, "noise_mean", None),
                          noise_std=getattr(cfg, "noise_std", None), sigma_data=getattr(cfg, "sigma_data", None),
                          uncertainty=uncertainty).mean()


def hybrid(model: Denoiser, x0: Tensor, cond: Any, rng: Any, cfg: Any) -> Tensor:
    """L_hybrid = L_simple + 0.001 L_vlb with learned variances, uniform t (Nichol & Dhariwal 2021, sec. 3.1)."""
    return hybrid_loss(model, x0, cond, generator=rng, bins=_bins(x0)).mean()


def hybrid_is(model: Denoiser, x0: Tensor, cond: Any, rng: Any, cfg: Any) -> Tensor:
    """L_hybrid with importance-sampled t (Nichol & Dhariwal 2021, eq. 18)."""
    return hybrid_loss(model, x0, cond, generator=rng, bins=_bins(x0), importance=True).mean()


def vlb(model: Denoiser, x0: Tensor, cond: Any, rng: Any, cfg: Any) -> Tensor:
    """L_vlb with learned variances and importance-sampled t (Nichol & Dhariwal 2021, sec. 3.3)."""
    return hybrid_loss(model, x0, cond, generator=rng, bins=_bins(x0), simple=False, importance=True).mean()


def vdm(model: Denoiser, x0: Tensor, cond: Any, rng: Any, cfg: Any) -> Tensor:
    """VDM negative VLB per dimension with the continuous-time L_inf (Kingma et al. 2021, eq. 17)."""
    return vdm_loss(model, x0, cond, generator=rng, bins=_bins(x0)).mean()


def vdm_T(model: Denoiser, x0: Tensor, cond: Any, rng: Any, cfg: Any) -> Tensor:
    """VDM negative VLB per dimension with the discrete-time L_T, T = 1000 (Kingma et al. 2021, eq. 13)."""
    return vdm_loss(model, x0, cond, T=VDM_T, generator=rng, bins=_bins(x0)).mean()


OBJECTIVES: dict[str, Callable[..., Tensor]] = {
    "simple": simple, "hybrid": hybrid, "hybrid_is": hybrid_is, "vlb": vlb, "vdm": vdm, "vdm_T": vdm_T}
assert tuple(OBJECTIVES) == OBJECTIVE_NAMES


def denoiser_kind(objective: str) -> Literal["plain", "learned_variance"]:
    """How the network output is read: the plain prediction, or prediction + variance (2C channels)."""
    return "learned_variance" if objective in LEARNED_VARIANCE_OBJECTIVES else "plain"


__all__ = ["Objective", "OBJECTIVE_NAMES", "OBJECTIVES", "denoiser_kind"]
