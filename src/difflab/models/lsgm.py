"""LSGM networks (Vahdat, Kreis & Kautz 2021): the VAE's encoder and decoder (the KL autoencoder's, reused) and the
latent score prior with the "mixed" parameterisation (sec. 3.2): eps(z_t, t) = (1 - a) sigma_t z_t + a eps'(z_t, t),
a = sigmoid(m) with one learnable logit m per latent channel.  The Normal part (1 - a) sigma_t z_t is the eps of a
standard-normal latent under a VP SDE; the residual eps' ends in a zero-initialised layer and m starts near -5,
so the prior starts at (almost exactly) N(0, I).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..schedules import VP, append_dims
from ..utils.config import Config, require
from .autoencoder import AutoencoderConfig, Decoder, Encoder, autoencoder_for
from .denoiser import Denoiser
from .embeddings import TimeEmbedding, zero_


@dataclasses.dataclass(frozen=True)
class LSGMNetConfig(Config):
    """Image shape, latent shape (None: the autoencoder preset, MNIST 4x7x7, digits 2x4x4), VAE and prior widths."""

    shape: tuple[int, int, int] = (1, 28, 28)
    latent: tuple[int, int, int] | None = None
    channels: int = 32  # encoder / decoder base width
    prior_channels: int = 64
    prior_blocks: int = 4
    mixing_logit: float = -5.0  # initial m: sigmoid(-5) = 0.0067 of the residual at the start
    decoder_log_scale: float = -1.0  # initial log std of the discretised Gaussian decoder

    def check(self) -> None:
        require(len(self.shape) == 3, f"LSGMNetConfig.shape must be (C, H, W) (LSGM needs image data), got {self.shape!r}")
        self.require_ints(("channels", "prior_channels", "prior_blocks"), 1)
        require(self.prior_channels % 8 == 0, f"LSGMNetConfig.prior_channels must be a multiple of 8, got {self.prior_channels}")
        require(math.isfinite(self.mixing_logit), f"LSGMNetConfig.mixing_logit must be finite, got {self.mixing_logit!r}")
        self.autoencoder()  # the shapes must make an autoencoder

    def autoencoder(self) -> AutoencoderConfig:
        """The encoder / decoder config (the KL autoencoder's networks)."""
        base = autoencoder_for(tuple(self.shape), None if self.latent is None else tuple(self.latent))
        return dataclasses.replace(base, channels=self.channels)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.autoencoder().latent)


class _TimeBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with the time embedding added in between, and a residual path."""

    def __init__(self, c: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c), nn.Conv2d(c, c, 3, padding=1)
        self.proj = nn.Linear(emb, c)
        self.norm2, self.conv2 = nn.GroupNorm(8, c), zero_(nn.Conv2d(c, c, 3, padding=1))

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        r = self.conv1(F.silu(self.norm1(h))) + self.proj(e)[:, :, None, None]
        return h + self.conv2(F.silu(self.norm2(r)))


class ScoreResidual(nn.Module):
    """eps'(z_t, t): a small time-conditioned residual conv net over the latent [B, c, h, w]; output layer zero."""

    def __init__(self, c_latent: int, width: int, blocks: int):
        super().__init__()
        self.time = TimeEmbedding("sinusoidal", width, 2 * width, time_scale=1000.0)
        self.inp = nn.Conv2d(c_latent, width, 3, padding=1)
        self.blocks = nn.ModuleList(_TimeBlock(width, 2 * width) for _ in range(blocks))
        self.norm, self.out = nn.GroupNorm(8, width), zero_(nn.Conv2d(width, c_latent, 3, padding=1))

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        e = self.time(t)
        h = self.inp(z)
        for b in self.blocks:
            h = b(h, e)
        return self.out(F.silu(self.norm(h)))


class MixedEps(nn.Module):
    """The mixed eps of LSGM (sec. 3.2): (1 - sigmoid(m)) sigma_t z_t + sigmoid(m) eps'(z_t, t), m [c] learnable."""

    def __init__(self, residual: ScoreResidual, schedule: VP, c_latent: int, mixing_logit: float):
        super().__init__()
        self.residual = residual
        self.schedule = schedule
        self.mixing_logit = nn.Parameter(torch.full((c_latent,), float(mixing_logit)))

    def mixing(self) -> Tensor:
        """a = sigmoid(m), [c]."""
        return torch.sigmoid(self.mixing_logit)

    def forward(self, z: Tensor, t: Tensor) -> Tensor:
        sigma = append_dims(self.schedule.sigma(t).to(z.dtype), z.ndim)
        a = self.mixing().to(z.dtype)[None, :, None, None]
        return (1 - a) * sigma * z + a * self.residual(z, t)


def build_lsgm_nets(cfg: LSGMNetConfig, schedule: VP) -> dict[str, nn.Module]:
    """{"encoder": x -> (mean, logvar) of q(z_0 | x), "decoder": z -> the mean of p(x | z) (with its ``log_scale``
    [C] and ``latent_shape``), "prior": a Denoiser over latents (eps-prediction, the mixed parameterisation) under ``schedule``}."""
    ae = cfg.autoencoder()
    decoder = Decoder(ae)
    decoder.log_scale = nn.Parameter(torch.full((cfg.shape[0],), float(cfg.decoder_log_scale)))
    decoder.latent_shape = tuple(ae.latent)
    c = ae.latent[0]
    prior = Denoiser(MixedEps(ScoreResidual(c, cfg.prior_channels, cfg.prior_blocks), schedule, c, cfg.mixing_logit),
                     schedule, "eps")
    return {"encoder": Encoder(ae), "decoder": decoder, "prior": prior}


__all__ = ["LSGMNetConfig", "ScoreResidual", "MixedEps", "build_lsgm_nets"]
