"""The GAN family: the non-saturating GAN (Goodfellow et al. 2014, Alg. 1 with the -log D generator loss) in its
softplus form, the R1 penalty on real data (Mescheder et al. 2018, eq. 9), an EMA of the generator and
Adam(0.5, 0.9); a discriminator phase, then a generator phase, each with its own optimizer."""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Dataset
from ..errors import UserError
from ..models.gan import GANNetConfig, build_gan_nets
from ..utils.config import require
from ..utils.images import save_image_grid, save_scatter
from .config import FitConfig
from .engine import Batch, Family, OptimizerSpec, Phase


@dataclasses.dataclass(frozen=True)
class GANConfig(FitConfig):
    """Recipe of a GAN: network overrides (GANNetConfig fields), the two learning rates, Adam betas, R1 and EMA."""

    network: dict[str, Any] = dataclasses.field(default_factory=dict)
    lr: float = 2e-4  # generator
    lr_d: float = 2e-4  # discriminator
    betas: tuple[float, float] = (0.5, 0.9)
    r1_gamma: float = 0.05  # gamma of gamma/2 E||grad D(x)||^2 on real data (0 = off)
    r1_every: int = 1  # lazy R1: the penalty every N steps, weighted N (Karras et al. 2020; DDGAN's lazy_reg 15)
    d_steps: int = 1  # discriminator updates per generator update
    ema_decay: float = 0.999
    conditional: bool = False  # class-conditional G and D (labels of the data)
    warmup_steps: int = 0
    grad_clip: float = 0.0
    steps: int = 5000

    def check(self) -> None:
        super().check()
        n = type(self).__name__
        known = {f.name for f in dataclasses.fields(GANNetConfig)} - {"shape", "steps", "num_classes"}
        unknown = sorted(set(self.network) - known)
        require(not unknown, f"{n}.network: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        require(self.lr_d > 0, f"{n}.lr_d must be > 0, got {self.lr_d!r}")
        require(self.r1_gamma >= 0, f"{n}.r1_gamma must be >= 0, got {self.r1_gamma!r}")
        self.require_ints(("r1_every", "d_steps"), 1)
        require(0 <= self.ema_decay < 1, f"{n}.ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"{n}.betas must be two numbers in [0, 1)")


def d_loss_nonsaturating(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """-E log D(x) - E log(1 - D(G(z))) with D = sigmoid(logit): E softplus(-l_real) + E softplus(l_fake) (Goodfellow et al. 2014, eq. 1)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def g_loss_nonsaturating(fake_logits: Tensor) -> Tensor:
    """-E log D(G(z)) = E softplus(-l_fake): the non-saturating generator loss (Goodfellow et al. 2014, sec. 3)."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(d: Callable[[Tensor], Tensor], x: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    """R1 = gamma/2 E ||grad_x D(x)||^2 on real x (Mescheder et al. 2018, eq. 9); returns (penalty, logits D(x))."""
    x = x.detach().requires_grad_(True)
    logits = d(x)
    if gamma == 0:
        return logits.new_zeros(()), logits
    (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
    return 0.5 * gamma * grad.flatten(1).pow(2).sum(1).mean(), logits


def net_config(cfg: GANConfig, shape: tuple[int, ...], num_classes: int, steps: int = 0) -> GANNetConfig:
    """The networks' config for data of this shape: a conv net for images of side 8 and more, an MLP with Fourier
    input features otherwise."""
    base: dict[str, Any] = {"shape": tuple(shape), "steps": steps, "num_classes": num_classes if cfg.conditional else 0}
    if len(shape) == 3 and shape[1] >= 16:
        base.update(width=32)
    elif len(shape) == 3:
        base.update(width=32, z_dim=16)
    else:  # points: Fourier features let the MLPs resolve modes far finer than the data's extent
        base.update(width=128, z_dim=8, emb_dim=16, fourier=6)
    return GANNetConfig.from_dict({**base, **cfg.network})


def class_labels(data: Dataset, cfg: GANConfig) -> int:
    """The number of classes a conditional recipe trains on (0 if unconditional); UserError without labels."""
    if not cfg.conditional:
        return 0
    if data.y is None or data.num_classes < 2:
        raise UserError(f"conditional=true needs labelled data; {data.spec} has no class labels")
    return data.num_classes


def save_samples(x: Tensor, path: Path, reference: Tensor | None, title: str) -> None:
    """A grid of images or a scatter of points (over the data, for reference)."""
    if x.ndim == 4:
        save_image_grid(x.clamp(-1, 1), path)
    else:
        save_scatter(x, path, reference=reference, title=title)


class GANFamily(Family):
    """Generator and discriminator; phase "disc" minimises d_loss (+ R1), phase "gen" minimises g_loss."""

    name = "gan"
    recipe = GANConfig
    sampling_modules = ("generator",)
    marker = "s"

    def __init__(self, cfg: GANConfig, data: Dataset):
        self.cfg, self.data = cfg, data
        self.num_classes = class_labels(data, cfg)
        self.modules = self.build(cfg, data.shape, self.num_classes)
        self.G, self.D = self.modules["generator"], self.modules["discriminator"]
        self.optimizers = {"disc": OptimizerSpec(("discriminator",), cfg.lr_d, tuple(cfg.betas)),
                           "gen": OptimizerSpec(("generator",), cfg.lr, tuple(cfg.betas))}
        self.ema = ("generator",)
        self.phases = [Phase("disc", self.d_step, "d_loss")] + [
            Phase("disc", functools.partial(self._again, i), f"d_loss_{i}") for i in range(2, cfg.d_steps + 1)] + [
            Phase("gen", self.g_step, "g_loss")]

    def _again(self, i: int, batch: Batch) -> dict[str, Tensor]:
        """The i-th discriminator update of a step (its own draws of noise and z), logged as d_loss_i."""
        return {f"{k}_{i}": v for k, v in self.d_step(batch).items()}

    def r1_gamma_at(self, batch: Batch) -> float:
        """gamma on the steps that carry the lazy penalty (weighted r1_every), 0 between them."""
        every = self.cfg.r1_every
        return self.cfg.r1_gamma * every if batch.step % every == 0 else 0.0

    @classmethod
    def build(cls, cfg: GANConfig, shape: tuple[int, ...], num_classes: int) -> dict[str, nn.Module]:
        g, d = build_gan_nets(net_config(cfg, shape, num_classes))
        return {"generator": g, "discriminator": d}

    def _inputs(self, batch: Batch) -> tuple[Tensor, Tensor | None, Tensor]:
        x = self.data.batch(batch.idx).to(batch.device)
        y = self.data.y[batch.idx].long().to(batch.device) if self.num_classes else None
        z = batch.rng.randn((batch.n, self.G.config.z_dim)).to(batch.device)
        return x, y, z

    def d_step(self, batch: Batch) -> dict[str, Tensor]:
        x, y, z = self._inputs(batch)
        r1, real = r1_penalty(lambda v: self.D(v, y=y), x, self.r1_gamma_at(batch))
        with torch.no_grad():
            fake_x = self.G(z, y=y)
        fake = self.D(fake_x, y=y)
        d = d_loss_nonsaturating(real, fake)
        return {"d_loss": d + r1, "d_adv": d, "r1": r1.detach(), "d_real": torch.sigmoid(real).mean().detach()}

    def g_step(self, batch: Batch) -> dict[str, Tensor]:
        _, y, z = self._inputs(batch)
        return {"g_loss": g_loss_nonsaturating(self.D(self.G(z, y=y), y=y))}

    @classmethod
    def nfe(cls, cfg: GANConfig) -> int:
        return 1

    @classmethod
    @torch.no_grad()
    def draw(cls, modules: dict[str, nn.Module], cfg: GANConfig, n: int, generator: torch.Generator,
             y: Tensor | None = None) -> Tensor:
        """n samples G(z), z ~ N(0, I) (labels y for a conditional run)."""
        g = modules["generator"]
        dev = next(g.parameters()).device
        z = torch.randn((n, g.config.z_dim), generator=generator).to(dev)
        return g(z, y=None if y is None else y.to(dev)).cpu()

    def preview(self, ema: dict[str, nn.Module], path: Path) -> None:
        n = 64 if self.data.kind == "image" else 2000
        y = torch.arange(n) % self.num_classes if self.num_classes else None
        x = self.draw(ema, self.cfg, n, torch.Generator().manual_seed(self.cfg.seed), y)
        ref = self.data.batch(torch.arange(min(2000, len(self.data)))) if self.data.kind == "points" else None
        save_samples(x, path, ref, f"{self.data.spec}, {self.name}")

    def finish(self, run_dir: Path, ema: dict[str, nn.Module]) -> None:
        self.preview(ema, run_dir / "samples.png")


__all__ = ["GANConfig", "GANFamily", "d_loss_nonsaturating", "g_loss_nonsaturating", "r1_penalty", "net_config"]
