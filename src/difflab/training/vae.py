"""The VAE family (Kingma & Welling 2014): a Gaussian encoder, a standard-normal prior and a Gaussian decoder,
trained on the negative ELBO. For 8-bit images the decoder is the discretised Gaussian of difflab.likelihood
(Ho et al. 2020, eq. 13) and the bound is in bits/dim, comparable with the diffusion bounds; for points it is a
density and the bound is in nats."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..likelihood import bits_per_dim, discretized_gaussian_log_likelihood, gaussian_log_likelihood, sum_except_batch
from ..models.vae import VAE, VAENetConfig
from ..utils.config import require
from .config import FitConfig
from .engine import Batch, Family, OptimizerSpec, Phase
from .gan import save_samples


@dataclasses.dataclass(frozen=True)
class VAEConfig(FitConfig):
    """Recipe of a VAE: network overrides (VAENetConfig fields) and the EMA; the KL enters with weight 1 (the ELBO)."""

    network: dict[str, Any] = dataclasses.field(default_factory=dict)
    ema_decay: float = 0.999
    warmup_steps: int = 100
    steps: int = 5000

    def check(self) -> None:
        super().check()
        known = {f.name for f in dataclasses.fields(VAENetConfig)} - {"shape"}
        unknown = sorted(set(self.network) - known)
        require(not unknown, f"VAEConfig.network: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        require(0 <= self.ema_decay < 1, f"VAEConfig.ema_decay must lie in [0, 1), got {self.ema_decay!r}")


def negative_elbo(vae: VAE, x: Tensor, eps: Tensor, bins: int | None) -> dict[str, Tensor]:
    """-ELBO = E_q[-log p(x | z)] + KL(q(z | x) || N(0, I)) per example, with one z = mu + sigma eps
    (Kingma & Welling 2014, eq. 10); rec and kl [B] in nats, and nll [B] in bits/dim for images (bins set)."""
    mu, logvar = vae.encode(x)
    z = mu + torch.exp(0.5 * logvar) * eps
    mean = vae.decode(z)
    log_scale = vae.decoder_log_scale(mean)
    if bins:
        rec = -sum_except_batch(discretized_gaussian_log_likelihood(x, mean, log_scale, bins))
    else:
        rec = -sum_except_batch(gaussian_log_likelihood(x, mean, log_scale))
    kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)
    nats = rec + kl
    return {"rec": rec, "kl": kl, "nll": bits_per_dim(nats, x[0].numel()) if bins else nats}


class VAEFamily(Family):
    """One VAE (encoder and decoder) with an EMA; one phase minimising the negative ELBO ("loss")."""

    name = "vae"
    recipe = VAEConfig
    sampling_modules = ("model",)
    likelihood = ("elbo",)
    marker = "^"

    @classmethod
    def nll(cls, modules: dict[str, nn.Module], cfg: VAEConfig, x: Tensor, seed: int = 0,
            method: str | None = None) -> dict[str, Any]:
        """The negative ELBO of test data x (Kingma & Welling 2014, eq. 3) with a 95% interval over examples."""
        per = vae_nll_per_example(modules["model"], x, seed)
        ci = 1.96 * float(per.std()) / len(per) ** 0.5 if len(per) > 1 else float("nan")
        return {"method": "elbo", "nll": float(per.mean()), "ci95": ci,
                "unit": "bits/dim" if x.ndim == 4 else "nats", "terms": {}}

    def __init__(self, cfg: VAEConfig, data: Dataset):
        self.cfg, self.data = cfg, data
        self.modules = self.build(cfg, data.shape, 0)
        self.vae = self.modules["model"]
        self.bins = 256 if data.kind == "image" else None
        self.optimizers = {"model": OptimizerSpec(("model",))}
        self.ema = ("model",)
        self.phases = [Phase("model", self.loss)]

    @classmethod
    def build(cls, cfg: VAEConfig, shape: tuple[int, ...], num_classes: int) -> dict[str, nn.Module]:
        base: dict[str, Any] = {"shape": tuple(shape)}
        if len(shape) == 1:
            base.update(width=128, z_dim=2)
        return {"model": VAE(VAENetConfig.from_dict({**base, **cfg.network}))}

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        x = self.data.batch(batch.idx).to(batch.device)
        eps = batch.rng.randn((batch.n, self.vae.config.z_dim)).to(batch.device)
        out = negative_elbo(self.vae, x, eps, self.bins)
        return {"loss": out["nll"].mean(), "rec_nats": out["rec"].mean().detach(), "kl_nats": out["kl"].mean().detach()}

    @classmethod
    def nfe(cls, cfg: VAEConfig) -> int:
        return 1

    @classmethod
    @torch.no_grad()
    def draw(cls, modules: dict[str, nn.Module], cfg: VAEConfig, n: int, generator: torch.Generator,
             y: Tensor | None = None) -> Tensor:
        """z ~ N(0, I), then the decoder: its mean for images (clamped to [-1, 1]), a draw x ~ p(x | z) for points."""
        vae = modules["model"]
        dev = next(vae.parameters()).device
        z = torch.randn((n, vae.config.z_dim), generator=generator).to(dev)
        mean = vae.decode(z)
        if mean.ndim == 4:
            return mean.clamp(-1, 1).cpu()
        eps = torch.randn(mean.shape, generator=generator).to(dev)
        return (mean + vae.decoder_log_scale(mean).exp() * eps).cpu()

    def preview(self, ema: dict[str, nn.Module], path: Path) -> None:
        n = 64 if self.data.kind == "image" else 2000
        x = self.draw(ema, self.cfg, n, torch.Generator().manual_seed(self.cfg.seed))
        ref = self.data.batch(torch.arange(min(2000, len(self.data)))) if self.data.kind == "points" else None
        save_samples(x, path, ref, f"{self.data.spec}, vae")

    def finish(self, run_dir: Path, ema: dict[str, nn.Module]) -> None:
        self.preview(ema, run_dir / "samples.png")


def vae_nll(vae: VAE, x: Tensor, seed: int = 0, batch_size: int = 500) -> float:
    """The mean negative ELBO of data x (bits/dim for images, nats for points), one z per example."""
    return float(vae_nll_per_example(vae, x, seed, batch_size).mean())


@torch.no_grad()
def vae_nll_per_example(vae: VAE, x: Tensor, seed: int = 0, batch_size: int = 500) -> Tensor:
    """The negative ELBO of each example of x [N] (bits/dim for images, nats for points), one z per example."""
    g = torch.Generator().manual_seed(seed)
    dev = next(vae.parameters()).device
    bins = 256 if x.ndim == 4 else None
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        eps = torch.randn((len(xb), vae.config.z_dim), generator=g).to(dev)
        out.append(negative_elbo(vae, xb, eps, bins)["nll"].cpu())
    return torch.cat(out)


__all__ = ["VAEConfig", "VAEFamily", "negative_elbo", "vae_nll"]
