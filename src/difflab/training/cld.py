"""The CLD family (Dockhorn, Vahdat & Kreis 2022): a v-score network on (x, v) trained by hybrid score matching.

Hybrid score matching (HSM, sec. 3.2) draws u_t from q(u_t | x_0) with v_0 marginalised, u_t = mu_t(x_0) + L_t eps,
so the target v-score is -l_t eps_v (eq. 9).  The network is the U-Net with doubled input channels (images) or the
MLP on 2D inputs (points), read through the mixed score of sec. 3.3, s(u, t) = -v / Sigma_vv - l_t net_v(u, t):
the first term is the score of Gaussian data, the network learns the rest.  Loss weightings (app. B.3):
``reweighted`` lambda(t) = l_t^-2, i.e. E ||eps_v - eps_theta||^2, and ``likelihood`` lambda(t) = 2 Gamma beta(t).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..errors import UserError
from ..models.mlp import MLPConfig, mlp_toy
from ..models.networks import build_network
from ..models.unet import UNetConfig, unet_for_image
from ..samplers.cld import CLD_SAMPLERS, CLDSampler, sample_cld
from ..schedules import append_dims
from ..schedules.cld import CLD
from ..utils.config import require
from .config import FitConfig
from .engine import Batch, Family, OptimizerSpec, Phase
from .gan import save_samples


@dataclasses.dataclass(frozen=True)
class CLDConfig(FitConfig):
    """Recipe of a CLD run: the process (the paper's M, Gamma, beta, gamma, eps), HSM's weighting, network overrides."""

    network: dict[str, Any] = dataclasses.field(default_factory=dict)
    M: float = 0.25
    Gamma: float = 1.0
    beta0: float = 4.0
    beta1: float = 0.0
    gamma: float = 0.04
    eps: float = 1e-5
    weighting: Literal["reweighted", "likelihood"] = "reweighted"
    mixed_score: bool = True
    ema_decay: float = 0.999
    sampler: CLDSampler = "sscs"  # previews and the default of `difflab sample` (em / ode: euler_maruyama / dopri5)
    sample_steps: int = 50
    steps: int = 5000

    def check(self) -> None:
        super().check()
        n = "CLDConfig"
        known = {f.name for c in (UNetConfig, MLPConfig) for f in dataclasses.fields(c)}
        unknown = sorted(set(self.network) - known)
        require(not unknown, f"{n}.network: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        require(0 <= self.ema_decay < 1, f"{n}.ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        require(self.weighting in ("reweighted", "likelihood"),
                f"{n}.weighting must be 'reweighted' or 'likelihood', got {self.weighting!r}")
        require(self.sampler in CLD_SAMPLERS, f"{n}.sampler must be one of {', '.join(CLD_SAMPLERS)}, got {self.sampler!r}")
        self.require_ints(("sample_steps",), 2)
        self.process()  # the parameters must make a critically-damped process

    def process(self) -> CLD:
        return CLD(M=self.M, Gamma=self.Gamma, beta0=self.beta0, beta1=self.beta1, gamma=self.gamma, eps=self.eps)


class CLDScore(nn.Module):
    """s_theta(u, t) = -l_t eps_theta(u, t) with eps_theta = v / (l_t Sigma_vv) + net_v(u, t) (sec. 3.3); u [B, 2C, ...]."""

    def __init__(self, net: nn.Module, process: CLD, shape: tuple[int, ...], mixed: bool = True):
        super().__init__()
        self.net, self.process, self.shape, self.mixed = net, process, tuple(shape), mixed

    @property
    def schedule(self) -> CLD:
        """The forward process (what the scalar samplers look at, and refuse)."""
        return self.process

    def coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """(l_t, 1 / (l_t Sigma_vv)) broadcast against ``like``, computed in float64."""
        ell = self.process.ell(t)
        vv = self.process.kernel_cov(t)[2]
        return append_dims(ell, like.ndim).to(like), append_dims(1.0 / (ell * vv), like.ndim).to(like)

    def eps_v(self, u: Tensor, t: Tensor) -> Tensor:
        """The network's estimate of eps_v [B, C, ...] (what HSM regresses on)."""
        out = self.net(u, t)
        c = u.shape[1] // 2
        out = out[:, c:] if out.shape[1] == u.shape[1] else out  # the MLP maps 2D -> 2D: its v half
        if not self.mixed:
            return out
        _, k = self.coefficients(t, out)
        return k * self.process.split(u)[1] + out

    def forward(self, u: Tensor, t: Tensor) -> Tensor:
        """grad_v log p_t(u) [B, C, ...]."""
        e = self.eps_v(u, t)
        return -self.coefficients(t, e)[0] * e


def hsm_loss(model: CLDScore, x0: Tensor, t: Tensor, eps: Tensor, weighting: str = "reweighted") -> Tensor:
    """Hybrid score matching (eq. 9): lambda(t) ||s_theta(u_t, t) + l_t eps_v||^2, averaged over dimensions and
    examples; ``reweighted`` lambda = l_t^-2 (the eps_v regression), ``likelihood`` lambda = 2 Gamma beta(t)."""
    p = model.process
    u = p.perturb(x0, t, eps)
    err = (model.eps_v(u, t) - p.split(eps)[1]).pow(2).flatten(1).mean(1)
    if weighting == "likelihood":
        err = err * (p.g2(t) * p.ell(t) ** 2).to(err)
    return err.mean()


def build_score(cfg: CLDConfig, shape: tuple[int, ...]) -> CLDScore:
    """The difflab network sized for the data, with doubled inputs (x, v) and the v-score as output."""
    shape = tuple(shape)
    time = {"time_scale": 1000.0}  # t in [0, 1] as the diffusion runs feed it (time_scale_for)
    if len(shape) == 3:
        c, h, w = shape
        base = unet_for_image(max(h, w), c).to_dict() | {"in_channels": 2 * c, "out_channels": c}
        net = build_network("unet", {**base, **time, **cfg.network})
    elif len(shape) == 1:
        net = build_network("mlp", {**mlp_toy(dim=2 * shape[0]).to_dict(), **time, **cfg.network})
    else:
        raise UserError(f"CLD needs images [C, H, W] or points [D], got data of shape {shape}")
    return CLDScore(net, cfg.process(), shape, cfg.mixed_score)


class CLDFamily(Family):
    """One v-score network with an EMA; one phase minimising the HSM loss."""

    name = "cld"
    recipe = CLDConfig
    sampling_modules = ("model",)
    likelihood = ("ode",)
    marker = "P"

    @classmethod
    def samplers(cls, recipe: CLDConfig) -> tuple[str, ...]:
        return CLD_SAMPLERS

    @classmethod
    def with_sampler(cls, recipe: CLDConfig, sampler: str | None, steps: int | None) -> CLDConfig:
        if steps is not None and steps < 2:
            raise UserError(f"--steps {steps}: a cld sampler needs at least 2 score calls")
        changes = {k: v for k, v in (("sampler", sampler), ("sample_steps", steps)) if v is not None}
        return dataclasses.replace(recipe, **changes)

    def __init__(self, cfg: CLDConfig, data: Dataset):
        self.cfg, self.data = cfg, data
        self.modules = self.build(cfg, data.shape, 0)
        self.model: CLDScore = self.modules["model"]
        self.optimizers = {"model": OptimizerSpec(("model",))}
        self.ema = ("model",)
        self.phases = [Phase("model", self.loss)]

    @classmethod
    def build(cls, cfg: CLDConfig, shape: tuple[int, ...], num_classes: int) -> dict[str, nn.Module]:
        if num_classes:
            raise UserError("the cld family is unconditional")
        return {"model": build_score(cfg, shape)}

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        x0 = self.data.batch(batch.idx).to(batch.device)
        p = self.cfg.process()
        t = (p.eps + (p.t_max - p.eps) * batch.rng.rand(batch.n, dtype=torch.float64)).to(batch.device)
        eps = batch.rng.randn((batch.n, 2 * x0.shape[1], *x0.shape[2:])).to(x0)
        return {"loss": hsm_loss(self.model, x0, t, eps, self.cfg.weighting)}

    @classmethod
    def nfe(cls, cfg: CLDConfig) -> int:
        return cfg.sample_steps

    @classmethod
    @torch.no_grad()
    def draw(cls, modules: dict[str, nn.Module], cfg: CLDConfig, n: int, generator: torch.Generator,
             y: Tensor | None = None) -> Tensor:
        """u_T ~ N(0, diag(1, M)), then the recipe's CLD sampler and steps down to x_0; images clamped to [-1, 1]."""
        model: CLDScore = modules["model"]
        dev = next(model.parameters()).device
        u = model.process.sample_prior((n, *model.shape), generator=generator).to(dev)
        g = generator if dev.type == "cpu" else None
        x = sample_cld(model, model.process, u, cfg.sampler, cfg.sample_steps, generator=g)
        return (x.clamp(-1, 1) if x.ndim == 4 else x).cpu()

    @classmethod
    def nll(cls, modules: dict[str, nn.Module], cfg: CLDConfig, x: Tensor, seed: int = 0,
            method: str | None = None) -> dict[str, Any]:
        """The probability-flow ODE bound on -log p(x) of test data (likelihood/cld.py)."""
        from ..likelihood.cld import evaluate_cld_nll

        model: CLDScore = modules["model"]
        return evaluate_cld_nll(model, model.process, x.to(next(model.parameters()).device), seed=seed)

    def preview(self, ema: dict[str, nn.Module], path: Path) -> None:
        n = 64 if self.data.kind == "image" else 2000
        x = self.draw(ema, self.cfg, n, torch.Generator().manual_seed(self.cfg.seed))
        ref = self.data.batch(torch.arange(min(2000, len(self.data)))) if self.data.kind == "points" else None
        save_samples(x, path, ref, f"{self.data.spec}, cld {self.cfg.sampler} {self.cfg.sample_steps} steps")

    def finish(self, run_dir: Path, ema: dict[str, nn.Module]) -> None:
        self.preview(ema, run_dir / "samples.png")


__all__ = ["CLDConfig", "CLDFamily", "CLDScore", "hsm_loss", "build_score"]
