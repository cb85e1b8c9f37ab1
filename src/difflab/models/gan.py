"""Generators and discriminators: DCGAN-style convolutional nets for small images (Radford et al. 2016) and MLPs
for 2-D points, optionally conditioned on a diffusion step and x_t (Denoising Diffusion GANs, Xiao et al. 2022).

Contract: ``G(z, x_t=None, t=None, y=None) -> x`` and ``D(x, x_t=None, t=None, y=None) -> logits [B]``, with
``t`` an integer step index in 0..steps-1 and ``y`` class labels; ``steps = 0`` is a plain (unconditional in
time) GAN that takes no x_t.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.config import Config, require


@dataclasses.dataclass(frozen=True)
class GANNetConfig(Config):
    """Shape of the data, the kind of nets, their width, the latent z and the conditioning (steps, classes)."""

    shape: tuple[int, ...] = (2,)  # (dim,) for points, (C, H, W) for images
    kind: Literal["auto", "conv", "mlp"] = "auto"
    width: int = 64  # conv: base channels; mlp: hidden units
    depth: int = 3  # mlp hidden layers; conv generator residual blocks (x_t-conditional nets)
    z_dim: int = 32
    steps: int = 0  # > 0: the nets see x_t and the step index t in 0..steps-1 (DDGAN)
    num_classes: int = 0  # > 0: class-conditional
    emb_dim: int = 64
    fourier: int = 0  # mlp: > 0 adds sin / cos of the point coordinates at frequencies 2^0 .. 2^(fourier-1)

    def check(self) -> None:
        self.require_ints(("width", "depth", "z_dim", "emb_dim"), 1)
        self.require_ints(("steps", "num_classes", "fourier"), 0)
        require(len(self.shape) in (1, 3) and all(isinstance(s, int) and s > 0 for s in self.shape),
                f"GANNetConfig.shape must be (dim,) or (C, H, W), got {self.shape!r}")
        if self.net_kind == "conv":
            require(len(self.shape) == 3, f"a conv GAN needs images (C, H, W), got shape {self.shape!r}")
            require(self.shape[1] == self.shape[2] and self.shape[1] % 4 == 0,
                    f"a conv GAN needs square images with a side divisible by 4 (8, 28, 32, 64), got {self.shape!r}")

    @property
    def net_kind(self) -> str:
        return self.kind if self.kind != "auto" else ("conv" if len(self.shape) == 3 else "mlp")

    @property
    def dim(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class _Embed(nn.Module):
    """Learned embeddings of the step index t and the label y, summed: [B, emb_dim] (zeros if neither is used)."""

    def __init__(self, cfg: GANNetConfig):
        super().__init__()
        self.dim = cfg.emb_dim
        self.t = nn.Embedding(cfg.steps, cfg.emb_dim) if cfg.steps else None
        self.y = nn.Embedding(cfg.num_classes, cfg.emb_dim) if cfg.num_classes else None

    def forward(self, n: int, t: Tensor | None, y: Tensor | None, like: Tensor) -> Tensor:
        e = like.new_zeros(n, self.dim)
        if self.t is not None:
            if t is None:
                raise ValueError("this net is conditioned on the step t; pass t")
            e = e + self.t(t.long())
        if self.y is not None:
            if y is None:
                raise ValueError("this net is class-conditional; pass y")
            e = e + self.y(y.long())
        return e


def fourier_features(v: Tensor, octaves: int) -> Tensor:
    """[v, sin(2^j v), cos(2^j v)] for j < octaves: inputs an MLP can resolve at fine scales (Tancik et al. 2020)."""
    if not octaves:
        return v
    f = v.new_tensor([2.0 ** j for j in range(octaves)])
    a = (v[..., None] * f).flatten(1)
    return torch.cat([v, a.sin(), a.cos()], 1)


class MLPGenerator(nn.Module):
    """[z, x_t, emb(t, y)] -> x through ``depth`` LeakyReLU layers; [B, z_dim] (+ [B, dim]) -> [B, dim]."""

    def __init__(self, cfg: GANNetConfig):
        super().__init__()
        self.config = cfg
        self.embed = _Embed(cfg)
        d_in = cfg.z_dim + (cfg.dim * (1 + 2 * cfg.fourier) if cfg.steps else 0) + cfg.emb_dim
        layers: list[nn.Module] = []
        for i in range(cfg.depth):
            layers += [nn.Linear(d_in if i == 0 else cfg.width, cfg.width), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers, nn.Linear(cfg.width, cfg.dim))

    def forward(self, z: Tensor, x_t: Tensor | None = None, t: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        f = self.config.fourier
        parts = [z] + ([fourier_features(x_t.flatten(1), f)] if self.config.steps else []) + [self.embed(len(z), t, y, z)]
        return self.body(torch.cat(parts, 1)).view(len(z), *self.config.shape)


class MLPDiscriminator(nn.Module):
    """[x, x_t, emb(t, y)] -> logit through ``depth`` LeakyReLU layers; [B, dim] -> [B]."""

    def __init__(self, cfg: GANNetConfig):
        super().__init__()
        self.config = cfg
        self.embed = _Embed(cfg)
        d_in = cfg.dim * (1 + 2 * cfg.fourier) * (2 if cfg.steps else 1) + cfg.emb_dim
        layers: list[nn.Module] = []
        for i in range(cfg.depth):
            layers += [nn.Linear(d_in if i == 0 else cfg.width, cfg.width), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers, nn.Linear(cfg.width, 1))

    def forward(self, x: Tensor, x_t: Tensor | None = None, t: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        f = self.config.fourier
        parts = ([fourier_features(x.flatten(1), f)] + ([fourier_features(x_t.flatten(1), f)] if self.config.steps else [])
                 + [self.embed(len(x), t, y, x)])
        return self.body(torch.cat(parts, 1)).squeeze(1)


class _FiLMBlock(nn.Module):
    """h + conv(LReLU(GN(h) (1 + s) + b)), with (s, b) from the embedding; the residual block of the x_t generator."""

    def __init__(self, ch: int, emb: int):
        super().__init__()
        self.norm = nn.GroupNorm(min(8, ch), ch)
        self.film = nn.Linear(emb, 2 * ch)
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        s, b = self.film(e)[:, :, None, None].chunk(2, 1)
        return h + self.conv2(F.leaky_relu(self.conv1(F.leaky_relu(self.norm(h) * (1 + s) + b, 0.2)), 0.2))


class ConvGenerator(nn.Module):
    """DCGAN generator: z -> (2w, s/4, s/4) -> two stride-2 transposed convs -> tanh image [B, C, s, s].

    With ``steps`` (DDGAN) it maps x_t instead: a conv encoder at s and s/2 with FiLM blocks carrying (z, t, y),
    decoded back to s, predicting x_0 in [-1, 1].
    """

    def __init__(self, cfg: GANNetConfig):
        super().__init__()
        self.config = cfg
        c, s, w = cfg.shape[0], cfg.shape[1], cfg.width
        self.embed = _Embed(cfg)
        if cfg.steps:
            e = cfg.emb_dim
            self.z_map = nn.Sequential(nn.Linear(cfg.z_dim, e), nn.LeakyReLU(0.2), nn.Linear(e, e))
            self.inp = nn.Conv2d(c, w, 3, padding=1)
            self.down = nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)
            self.blocks = nn.ModuleList(_FiLMBlock(2 * w, e) for _ in range(cfg.depth))
            self.up = nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1)
            self.out = nn.Sequential(nn.GroupNorm(min(8, w), w), nn.LeakyReLU(0.2), nn.Conv2d(2 * w, c, 3, padding=1))
        else:
            self.s0 = s // 4
            self.fc = nn.Linear(cfg.z_dim + cfg.emb_dim, 2 * w * self.s0 ** 2)
            self.body = nn.Sequential(
                nn.GroupNorm(min(8, 2 * w), 2 * w), nn.LeakyReLU(0.2),
                nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1), nn.GroupNorm(min(8, w), w), nn.LeakyReLU(0.2),
                nn.ConvTranspose2d(w, w, 4, stride=2, padding=1), nn.GroupNorm(min(8, w), w), nn.LeakyReLU(0.2),
                nn.Conv2d(w, c, 3, padding=1))

    def forward(self, z: Tensor, x_t: Tensor | None = None, t: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        cfg = self.config
        e = self.embed(len(z), t, y, z)
        if not cfg.steps:
            h = self.fc(torch.cat([z, e], 1)).view(len(z), 2 * cfg.width, self.s0, self.s0)
            return torch.tanh(self.body(h))
        e = F.leaky_relu(e + self.z_map(z), 0.2)
        h0 = self.inp(x_t)
        h = self.down(F.leaky_relu(h0, 0.2))
        for block in self.blocks:
            h = block(h, e)
        h = self.up(h)
        norm, act, conv = self.out
        return torch.tanh(conv(torch.cat([act(norm(h)), h0], 1)))


class ConvDiscriminator(nn.Module):
    """DCGAN discriminator: stride-2 convs with LeakyReLU, then a linear logit with a projection of emb(t, y);
    with ``steps`` the input is the pair (x, x_t) stacked as channels; [B, C, s, s] -> [B]."""

    def __init__(self, cfg: GANNetConfig):
        super().__init__()
        self.config = cfg
        c, s, w = cfg.shape[0], cfg.shape[1], cfg.width
        self.embed = _Embed(cfg)
        c_in = 2 * c if cfg.steps else c
        self.body = nn.Sequential(
            nn.Conv2d(c_in, w, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, w, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1), nn.LeakyReLU(0.2))
        feat = 2 * w * (s // 4) ** 2
        self.fc = nn.Linear(feat, 1)
        self.proj = nn.Linear(cfg.emb_dim, feat, bias=False) if (cfg.steps or cfg.num_classes) else None

    def forward(self, x: Tensor, x_t: Tensor | None = None, t: Tensor | None = None, y: Tensor | None = None) -> Tensor:
        h = self.body(torch.cat([x, x_t], 1) if self.config.steps else x).flatten(1)
        out = self.fc(h).squeeze(1)
        if self.proj is not None:  # projection discriminator (Miyato & Koyama 2018): + <phi(h), e(t, y)>
            out = out + (self.proj(self.embed(len(x), t, y, x)) * h).sum(1) / h.shape[1] ** 0.5
        return out


def build_gan_nets(cfg: GANNetConfig) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) of the config's kind."""
    if cfg.net_kind == "conv":
        return ConvGenerator(cfg), ConvDiscriminator(cfg)
    return MLPGenerator(cfg), MLPDiscriminator(cfg)


__all__ = ["GANNetConfig", "MLPGenerator", "MLPDiscriminator", "ConvGenerator", "ConvDiscriminator", "build_gan_nets"]
