"""A small convolutional KL-regularised autoencoder (Rombach et al. 2022, sec. 3 and appendix G; Esser et al. 2021):
an encoder to the mean and log-variance of a latent [c, h, w], and a decoder back to the image.

The image side must be the latent side times a power of two: each factor of two is one stride-2 level.  Presets:
MNIST 1x28x28 -> 4x7x7 (two levels, 4x fewer dimensions), digits 1x8x8 -> 2x4x4 (one level, 2x fewer).
``Encoder`` and ``Decoder`` are separate modules so other models (LSGM's VAE) can reuse them.
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.config import Config, require


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig(Config):
    """Image shape (C, H, W), latent shape (c, h, w), base width and its multiplier per stride-2 level."""

    shape: tuple[int, int, int] = (1, 28, 28)
    latent: tuple[int, int, int] = (4, 7, 7)
    channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4)  # one entry per resolution level; len - 1 must equal the stride-2 levels
    num_res_blocks: int = 1
    groups: int = 8

    def check(self) -> None:
        n = "AutoencoderConfig"
        require(len(self.shape) == 3 and all(isinstance(v, int) and v >= 1 for v in self.shape),
                f"{n}.shape must be (C, H, W), got {self.shape!r}")
        require(len(self.latent) == 3 and all(isinstance(v, int) and v >= 1 for v in self.latent),
                f"{n}.latent must be (c, h, w), got {self.latent!r}")
        self.require_ints(("channels", "num_res_blocks", "groups"), 1)
        (_, H, W), (_, h, w) = self.shape, self.latent
        f = H // h
        require(H % h == 0 and W % w == 0 and H // h == W // w and f & (f - 1) == 0,
                f"{n}: image {H}x{W} must be the latent {h}x{w} times a power of two")
        require(len(self.channel_mult) == self.levels + 1,
                f"{n}.channel_mult needs {self.levels + 1} entries for {H}x{W} -> {h}x{w}, got {self.channel_mult!r}")
        for m in self.channel_mult:
            require(isinstance(m, int) and m >= 1 and (self.channels * m) % self.groups == 0,
                    f"{n}.groups={self.groups} must divide every level width {self.channels}*{m}")

    @property
    def levels(self) -> int:
        """Stride-2 levels: log2(H / h)."""
        return int(round(math.log2(self.shape[1] // self.latent[1])))


def autoencoder_for(shape: tuple[int, ...], latent: tuple[int, ...] | None = None) -> AutoencoderConfig:
    """The preset for an image shape: MNIST-sized images to c x H/4 x W/4 (c = 4), 8x8 digits to 2x4x4."""
    c, H, W = shape
    if latent is None:
        latent = (2, H // 2, W // 2) if max(H, W) <= 16 else (4, H // 4, W // 4)
    levels = int(round(math.log2(max(1, H // latent[1])))) if latent[1] and H % latent[1] == 0 else 0
    mult = (1, 2, 4, 4, 4, 4)[: levels + 1]
    return AutoencoderConfig(shape=tuple(shape), latent=tuple(latent), channel_mult=mult)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a residual path (a 1x1 conv when the width changes)."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(groups, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    """x [B, C, H, W] -> (mean, logvar) of q(z | x), each [B, c, h, w]."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch, g = cfg.channels, cfg.groups
        widths = [ch * m for m in cfg.channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(cfg.shape[0], widths[0], 3, padding=1)]
        c = widths[0]
        for level, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(c, w, g))
                c = w
            if level < len(widths) - 1:
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        layers += [ResBlock(c, c, g), nn.GroupNorm(g, c), nn.SiLU(), nn.Conv2d(c, 2 * cfg.latent[0], 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.net(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # as LDM's DiagonalGaussianDistribution


class Decoder(nn.Module):
    """z [B, c, h, w] -> the reconstruction [B, C, H, W] (unbounded; images live in [-1, 1])."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        ch, g = cfg.channels, cfg.groups
        widths = [ch * m for m in cfg.channel_mult][::-1]
        c = widths[0]
        layers: list[nn.Module] = [nn.Conv2d(cfg.latent[0], c, 3, padding=1), ResBlock(c, c, g)]
        for level, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResBlock(c, w, g))
                c = w
            if level < len(widths) - 1:  # the next level's (smaller) width before the convolution at 2x the side
                layers += [nn.Conv2d(c, widths[level + 1], 1), nn.Upsample(scale_factor=2.0, mode="nearest"),
                           nn.Conv2d(widths[level + 1], widths[level + 1], 3, padding=1)]
                c = widths[level + 1]
        layers += [nn.GroupNorm(g, c), nn.SiLU(), nn.Conv2d(c, cfg.shape[0], 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class KLAutoencoder(nn.Module):
    """encode(x) -> (mean, logvar); decode(z) -> x_hat; the KL of q(z | x) to N(0, I) in closed form."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z)

    def forward(self, x: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(x_hat, mean, logvar) with z = mean + exp(logvar / 2) eps (the mean when eps is None)."""
        mean, logvar = self.encode(x)
        z = mean if eps is None else mean + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mean, logvar


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, e^logvar) || N(0, I)) per example [B] in nats: 1/2 sum(mean^2 + e^logvar - 1 - logvar)
    (Kingma & Welling 2014, appendix B)."""
    return 0.5 * (mean ** 2 + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


__all__ = ["AutoencoderConfig", "autoencoder_for", "Encoder", "Decoder", "KLAutoencoder", "gaussian_kl", "ResBlock"]
