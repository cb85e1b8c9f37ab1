"""Variational Diffusion Models (Kingma et al. 2021): the VLB as a training objective with antithetic time sampling,
the variance-minimising update of a learned schedule, and Fourier features of the input.

The training table (:data:`difflab.training.objectives.OBJECTIVES`) names :func:`vdm_loss` ``vdm`` (continuous-time
L_inf) and ``vdm_T`` (discrete-time L_T, T = 1000); both train the negative VLB in nats per dimension.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..models.denoiser import Denoiser
from ..models.unet import fourier_features
from ..schedules import LearnedSchedule, Schedule
from ..utils.random import BatchRandom, batch_random
from .bound import prior_kl, reconstruction_nll, vdm_diffusion_loss

#: Steps of the discrete-time objective ``vdm_T``.
VDM_T = 1000


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the per-example gradient [B] by ``box["scale"]`` (filled in once the loss is known)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, box: dict[str, Tensor]) -> Tensor:
        ctx.box = box
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.box["scale"].to(grad).reshape(grad.shape), None


class _VarianceGradientView(Schedule):
    """The same learned schedule, whose shape parameters receive d/d eta of the batch mean of L^2 instead of L.

    Since d E[L^2]/d eta = E[2 L dL/d eta], scaling example i's gradient through gamma by 2 L_i turns the
    loss gradient into the gradient of the second moment, hence of the variance of the loss estimate (Kingma et
    al. 2021, sec. 5.2 and appendix I.2); the endpoints gamma_0, gamma_1 keep the plain VLB gradient.
    """

    def __init__(self, base: LearnedSchedule, box: dict[str, Tensor]):
        self.base, self.box = base, box
        self.t_min, self.t_max = base.t_min, base.t_max

    def log_snr_and_derivative(self, t: Tensor) -> tuple[Tensor, Tensor]:
        g, dg = self.base.gamma_and_derivative(t, grad_scale=lambda z: _ScaleGrad.apply(z, self.box))
        return -g, -dg

    def log_snr(self, t: Tensor) -> Tensor:
        return self.log_snr_and_derivative(t)[0]

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return self.base.t_from_log_snr(lam)

    def config(self) -> dict[str, Any]:
        return self.base.config()


def vdm_loss(model: Denoiser, x0: Tensor, cond: Any = None, *, T: int | None = None,
             generator: torch.Generator | BatchRandom | None = None, bins: int | None = None,
             variance_gradient: bool = True) -> Tensor:
    """Per-example negative VLB in nats per dimension [B]: (prior + L_inf or L_T + reconstruction) / d (Kingma et al. 2021, eq. 11-17).

    Antithetic t over the batch.  With a :class:`LearnedSchedule` and ``variance_gradient`` the schedule's shape
    gets the variance-minimising gradient (call ``.mean().backward()``); other parameters get the VLB gradient.
    """
    sched = model.schedule
    box: dict[str, Tensor] = {}
    m = model
    if variance_gradient and isinstance(sched, LearnedSchedule):
        m = Denoiser(model.net, _VarianceGradientView(sched, box), model.prediction)
    d = x0[0].numel()
    rng = batch_random(generator, x0.shape[0])
    eps0 = rng.randn(x0.shape, x0.dtype).to(x0.device)
    prior = prior_kl(sched, x0)
    recon = reconstruction_nll(sched, x0, eps0, bins)
    diff = vdm_diffusion_loss(m, x0, cond, T=T, antithetic=True, generator=rng)
    loss = (prior + diff + recon) / d
    box["scale"] = 2.0 * loss.detach()
    return loss


# ---- Fourier features -----------------------------------------------------------------------------------
class FourierInput(nn.Module):
    """net(cat[x, fourier_features(x)], t, ...): Fourier features appended to any network's input (VDM, appendix C).

    ``net`` must accept C (1 + 2 len(exponents)) input channels.  For the U-Net prefer its config option
    ``input_fourier``, which checkpoints and rebuilds with the run.
    """

    def __init__(self, net: nn.Module, exponents: Sequence[int] = (7, 8)):
        super().__init__()
        self.net = net
        self.exponents = tuple(int(n) for n in exponents)

    def forward(self, x: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        h = torch.cat([x, fourier_features(x, self.exponents)], dim=1)
        return self.net(h, t) if cond is None else self.net(h, t, cond)


__all__ = ["VDM_T", "vdm_loss", "fourier_features", "FourierInput"]
