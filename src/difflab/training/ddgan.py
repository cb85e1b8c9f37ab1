"""Denoising Diffusion GANs (Xiao, Kreis & Vahdat 2022): each of T large denoising steps is a conditional GAN.

The generator G(x_t, z, t) predicts x_0; x_{t-1} is then drawn from the true posterior q(x_{t-1} | x_t, x_0')
(eq. 9); the discriminator D(x_{t-1}, x_t, t) tells real pairs (x_{t-1} ~ q(x_{t-1} | x_0), x_t ~ q(x_t | x_{t-1}))
from generated ones (eq. 4), with the non-saturating loss and R1 on the real x_{t-1}. The T steps discretise
the VP SDE with beta(s) = beta_min + s (beta_max - beta_min), s in [0, 1] (the paper's 0.1 -> 20).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..models.gan import build_gan_nets
from ..utils.config import require
from .engine import Batch
from .gan import GANConfig, GANFamily, d_loss_nonsaturating, g_loss_nonsaturating, net_config, r1_penalty


@dataclasses.dataclass(frozen=True)
class DDGANConfig(GANConfig):
    """A GAN recipe plus the number of denoising steps T and the VP SDE's beta range."""

    timesteps: int = 4
    beta_min: float = 0.1
    beta_max: float = 20.0
    lr: float = 1.6e-4
    lr_d: float = 1.25e-4

    def check(self) -> None:
        super().check()
        self.require_ints(("timesteps",), 1)
        require(0 < self.beta_min <= self.beta_max, f"DDGANConfig needs 0 < beta_min <= beta_max, got "
                                                    f"{self.beta_min!r}, {self.beta_max!r}")


class VPSteps:
    """The T-step discretisation of the VP SDE: alpha-bar_k = exp(-beta_min s_k - (beta_max - beta_min) s_k^2 / 2),
    s_k = k / T, k = 0..T (alpha-bar_0 = 1), and beta_k = 1 - alpha-bar_k / alpha-bar_{k-1} (Xiao et al. 2022, app. B)."""

    def __init__(self, T: int, beta_min: float = 0.1, beta_max: float = 20.0):
        s = torch.arange(T + 1, dtype=torch.float64) / T
        self.T = T
        self.alphas_cumprod = torch.exp(-beta_min * s - 0.5 * (beta_max - beta_min) * s ** 2)  # [T + 1]
        self.betas = torch.cat([torch.zeros(1, dtype=torch.float64),
                                1 - self.alphas_cumprod[1:] / self.alphas_cumprod[:-1]])  # [T + 1], beta_0 unused

    def _at(self, v: Tensor, k: Tensor, x: Tensor) -> Tensor:
        return v.to(x.device)[k.to(x.device)].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))

    def q_sample(self, x0: Tensor, k: Tensor, eps: Tensor) -> Tensor:
        """x_k ~ q(x_k | x_0) = N(sqrt(abar_k) x_0, (1 - abar_k) I) (Ho et al. 2020, eq. 4)."""
        a = self._at(self.alphas_cumprod, k, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * eps

    def q_step(self, x_prev: Tensor, k: Tensor, eps: Tensor) -> Tensor:
        """x_k ~ q(x_k | x_{k-1}) = N(sqrt(1 - beta_k) x_{k-1}, beta_k I) (Ho et al. 2020, eq. 2)."""
        b = self._at(self.betas, k, x_prev)
        return (1 - b).sqrt() * x_prev + b.sqrt() * eps

    def posterior(self, x0: Tensor, x_k: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{k-1} | x_k, x_0) (Ho et al. 2020, eq. 7), k = 1..T."""
        a, a_prev, b = (self._at(v, kk, x0) for v, kk in
                        ((self.alphas_cumprod, k), (self.alphas_cumprod, k - 1), (self.betas, k)))
        mean = a_prev.sqrt() * b / (1 - a) * x0 + (1 - b).sqrt() * (1 - a_prev) / (1 - a) * x_k
        return mean, (1 - a_prev) / (1 - a) * b

    def posterior_sample(self, x0: Tensor, x_k: Tensor, k: Tensor, eps: Tensor) -> Tensor:
        """x_{k-1} = mean + sqrt(var) eps under q(x_{k-1} | x_k, x_0) (variance 0 at k = 1)."""
        mean, var = self.posterior(x0, x_k, k)
        return mean + var.sqrt() * eps


class DDGANFamily(GANFamily):
    """G(z, x_k, k-1) -> x_0' and D(x_{k-1}, x_k, k-1) on pairs; the GAN's two phases and optimizers."""

    name = "ddgan"
    recipe = DDGANConfig
    marker = "D"

    @classmethod
    def label(cls, recipe: DDGANConfig, nfe: int) -> str:
        return f"ddgan T={nfe}"

    def __init__(self, cfg: DDGANConfig, data: Dataset):
        super().__init__(cfg, data)
        self.steps = VPSteps(cfg.timesteps, cfg.beta_min, cfg.beta_max)

    @classmethod
    def build(cls, cfg: DDGANConfig, shape: tuple[int, ...], num_classes: int) -> dict[str, nn.Module]:
        g, d = build_gan_nets(net_config(cfg, shape, num_classes, steps=cfg.timesteps))
        return {"generator": g, "discriminator": d}

    def _pairs(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor, Tensor]:
        """(x_{k-1}, x_k, k, y, z, eps of the posterior draw) of a batch, k uniform on 1..T."""
        x0, y, z = self._inputs(batch)
        n, dev = batch.n, batch.device
        k = batch.rng.randint(self.cfg.timesteps, n).to(dev) + 1
        x_prev = self.steps.q_sample(x0, k - 1, batch.rng.randn(x0.shape).to(dev))
        x_k = self.steps.q_step(x_prev, k, batch.rng.randn(x0.shape).to(dev))
        return x_prev, x_k, k, y, z, batch.rng.randn(x0.shape).to(dev)

    def d_step(self, batch: Batch) -> dict[str, Tensor]:
        x_prev, x_k, k, y, z, eps = self._pairs(batch)
        r1, real = r1_penalty(lambda v: self.D(v, x_k, k - 1, y), x_prev, self.r1_gamma_at(batch))
        with torch.no_grad():
            fake_prev = self.steps.posterior_sample(self.G(z, x_k, k - 1, y), x_k, k, eps)
        d = d_loss_nonsaturating(real, self.D(fake_prev, x_k, k - 1, y))
        return {"d_loss": d + r1, "d_adv": d, "r1": r1.detach(), "d_real": torch.sigmoid(real).mean().detach()}

    def g_step(self, batch: Batch) -> dict[str, Tensor]:
        _, x_k, k, y, z, eps = self._pairs(batch)
        fake_prev = self.steps.posterior_sample(self.G(z, x_k, k - 1, y), x_k, k, eps)
        return {"g_loss": g_loss_nonsaturating(self.D(fake_prev, x_k, k - 1, y))}

    @classmethod
    def nfe(cls, cfg: DDGANConfig) -> int:
        return cfg.timesteps

    @classmethod
    @torch.no_grad()
    def draw(cls, modules: dict[str, nn.Module], cfg: DDGANConfig, n: int, generator: torch.Generator,
             y: Tensor | None = None) -> Tensor:
        """x_T ~ N(0, I); for k = T..1: x_0' = G(z, x_k, k-1), x_{k-1} ~ q(x_{k-1} | x_k, x_0') (Xiao et al. 2022, eq. 9)."""
        g = modules["generator"]
        dev = next(g.parameters()).device
        steps = VPSteps(cfg.timesteps, cfg.beta_min, cfg.beta_max)
        shape = tuple(g.config.shape)
        y = None if y is None else y.to(dev)
        x = torch.randn((n, *shape), generator=generator).to(dev)
        for k_ in range(cfg.timesteps, 0, -1):
            k = torch.full((n,), k_, dtype=torch.long, device=dev)
            z = torch.randn((n, g.config.z_dim), generator=generator).to(dev)
            eps = torch.randn((n, *shape), generator=generator).to(dev)
            x = steps.posterior_sample(g(z, x, k - 1, y), x, k, eps)
        return x.cpu()


def prior_gap(cfg: DDGANConfig) -> float:
    """sqrt(alpha-bar_T): how much of x_0 is left in x_T (the prior N(0, I) ignores it)."""
    return math.sqrt(float(VPSteps(cfg.timesteps, cfg.beta_min, cfg.beta_max).alphas_cumprod[-1]))


__all__ = ["DDGANConfig", "DDGANFamily", "VPSteps", "prior_gap"]
