"""Gaussian VAE networks (Kingma & Welling 2014): an encoder q(z | x) = N(mu, diag e^logvar) and a decoder mean;
convolutional for small images, MLP for 2-D points. The decoder's log-scale is a learned per-channel parameter."""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor, nn

from ..utils.config import Config, require


@dataclasses.dataclass(frozen=True)
class VAENetConfig(Config):
    """Data shape, net kind, width and latent size."""

    shape: tuple[int, ...] = (2,)
    kind: Literal["auto", "conv", "mlp"] = "auto"
    width: int = 32
    depth: int = 3  # mlp hidden layers
    z_dim: int = 16

    def check(self) -> None:
        self.require_ints(("width", "depth", "z_dim"), 1)
        require(len(self.shape) in (1, 3), f"VAENetConfig.shape must be (dim,) or (C, H, W), got {self.shape!r}")
        if self.net_kind == "conv":
            require(len(self.shape) == 3 and self.shape[1] == self.shape[2] and self.shape[1] % 4 == 0,
                    f"a conv VAE needs square images with a side divisible by 4, got shape {self.shape!r}")

    @property
    def net_kind(self) -> str:
        return self.kind if self.kind != "auto" else ("conv" if len(self.shape) == 3 else "mlp")


def _mlp(d_in: int, width: int, depth: int, d_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(d_in if i == 0 else width, width), nn.SiLU()]
    return nn.Sequential(*layers, nn.Linear(width, d_out))


class VAE(nn.Module):
    """encode(x) -> (mu, logvar) [B, z_dim]; decode(z) -> mean [B, *shape]; ``log_scale`` [C] of the decoder."""

    def __init__(self, cfg: VAENetConfig):
        super().__init__()
        self.config = cfg
        w, z = cfg.width, cfg.z_dim
        if cfg.net_kind == "conv":
            c, s = cfg.shape[0], cfg.shape[1]
            self.s0 = s // 4
            self.enc = nn.Sequential(
                nn.Conv2d(c, w, 3, padding=1), nn.SiLU(),
                nn.Conv2d(w, w, 4, stride=2, padding=1), nn.SiLU(),
                nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.SiLU(), nn.Flatten(),
                nn.Linear(2 * w * self.s0 ** 2, 2 * z))
            self.dec_fc = nn.Linear(z, 2 * w * self.s0 ** 2)
            self.dec = nn.Sequential(
                nn.SiLU(), nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.SiLU(),
                nn.ConvTranspose2d(w, w, 4, stride=2, padding=1), nn.SiLU(), nn.Conv2d(w, c, 3, padding=1))
            self.log_scale = nn.Parameter(torch.full((c,), -1.0))
        else:
            d = cfg.shape[0]
            self.enc = _mlp(d, w, cfg.depth, 2 * z)
            self.dec = _mlp(z, w, cfg.depth, d)
            self.log_scale = nn.Parameter(torch.full((d,), -1.0))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.enc(x).chunk(2, 1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: Tensor) -> Tensor:
        if self.config.net_kind == "conv":
            h = self.dec_fc(z).view(len(z), 2 * self.config.width, self.s0, self.s0)
            return self.dec(h)
        return self.dec(z)

    def decoder_log_scale(self, like: Tensor) -> Tensor:
        """The log std of p(x | z), broadcast to ``like`` (images: per channel; points: per coordinate)."""
        ls = self.log_scale.clamp(-7.0, 2.0)
        return (ls[None, :, None, None] if like.ndim == 4 else ls[None, :]).expand_as(like)

    def forward(self, z: Tensor) -> Tensor:
        return self.decode(z)


__all__ = ["VAE", "VAENetConfig"]
