"""The forward-process protocol: a Gaussian marginal, a linear SDE and a prior on a state built from the data.

A process acts on a state u of K components per data dimension, stacked along axis 1 (``components``): the scalar
schedules have K = 1 (u = x_t); CLD has K = 2 (u = (x_t, v_t) with the channels of x first, then those of v).
Its marginal given x_0 is Gaussian with mean ``mean_coeff(t) @ [x_0, 0, ...]`` and the same K x K covariance
``cov(t)`` for every data dimension; its SDE is du = F(t) u dt + G(t) dW per dimension (F, G G^T: K x K).
Samplers built on alpha(t) / sigma(t) call :func:`require_scalar` once, at their entry.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor

from ..errors import UserError
from .base import Schedule, as_tensor


@runtime_checkable
class ForwardProcess(Protocol):
    """q(u_t | x_0) = N(m(t) x_0, Sigma(t)) per data dimension, du = F(t) u dt + G(t) dW, prior at t_max."""

    t_min: float
    t_max: float
    components: tuple[str, ...]  # names of the K state components along axis 1, the data's first

    def mean_coeff(self, t: Tensor) -> Tensor:
        """[B, K]: the mean of component k at time t is mean_coeff[:, k] * x_0."""

    def cov(self, t: Tensor) -> Tensor:
        """[B, K, K]: the per-dimension covariance of q(u_t | x_0)."""

    def sde_matrices(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(F [B, K, K], G G^T [B, K, K]) of the linear SDE du = F u dt + G dW."""

    def sample_prior(self, shape: Sequence[int], generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """u_T ~ the prior, for data of ``shape`` [B, C, ...]: a state of shape [B, K C, ...]."""


class ScalarProcess:
    """A scalar schedule seen as a ForwardProcess (K = 1): mean alpha(t) x_0, covariance sigma(t)^2, f(t) and g(t)^2."""

    components = ("x",)

    def __init__(self, schedule: Schedule):
        self.schedule = schedule
        self.t_min, self.t_max = float(schedule.t_min), float(schedule.t_max)

    def mean_coeff(self, t: Tensor) -> Tensor:
        return self.schedule.alpha(as_tensor(t)).reshape(-1, 1)

    def cov(self, t: Tensor) -> Tensor:
        return (self.schedule.sigma(as_tensor(t)) ** 2).reshape(-1, 1, 1)

    def sde_matrices(self, t: Tensor) -> tuple[Tensor, Tensor]:
        f, g2 = self.schedule.sde(as_tensor(t))
        return f.reshape(-1, 1, 1), g2.reshape(-1, 1, 1)

    def sample_prior(self, shape: Sequence[int], generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.schedule.sample_prior(shape, generator=generator, device=device, dtype=dtype)


def as_process(obj: Schedule | ForwardProcess) -> ForwardProcess:
    """The ForwardProcess of a schedule (its scalar adapter) or of a process (itself)."""
    if isinstance(obj, Schedule):
        return ScalarProcess(obj)
    if isinstance(obj, ForwardProcess):
        return obj
    raise TypeError(f"{type(obj).__name__} is neither a Schedule nor a ForwardProcess")


def is_scalar(obj: object) -> bool:
    """True unless ``obj`` is a process of several state components (CLD's (x, v)): schedules, their adapter and
    duck-typed schedules are scalar."""
    return tuple(getattr(obj, "components", ("x",))) == ("x",)


def require_scalar(obj: object, what: str) -> None:
    """Raise a UserError unless ``obj`` is a scalar schedule: ``what`` (e.g. "sampler 'ddim'") needs alpha and sigma."""
    if not is_scalar(obj):
        name = type(obj).__name__
        raise UserError(f"{what} works on scalar alpha(t)/sigma(t) schedules only, not on the {name} process "
                        f"(state {'/'.join(getattr(obj, 'components', ('?',)))}); for CLD use the samplers of "
                        f"difflab.samplers.cld (euler_maruyama, sscs, dopri5)")


__all__ = ["ForwardProcess", "ScalarProcess", "as_process", "is_scalar", "require_scalar"]
