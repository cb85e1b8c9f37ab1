"""A noise-conditional classifier p_phi(y | x_t, t) (Dhariwal & Nichol 2021, sec. 4): the U-Net's down half with a
pooled linear head; also the image tower of the noisy CLIP model."""
from __future__ import annotations

import dataclasses
import math
from typing import get_args

import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.config import Config, ConfigError, require
from .embeddings import TimeEmbedding, TimeEmbeddingKind, batch_time
from .unet import Downsample, ResBlock


@dataclasses.dataclass(frozen=True)
class ClassifierConfig(Config):
    """Time-conditioned CNN encoder (the U-Net's down half, Dhariwal & Nichol 2021 sec. 4) with a pooled linear head."""

    in_channels: int = 1
    num_classes: int = 10  # number of outputs (logits, or embedding width when used as a CLIP image tower)
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    groups: int = 8
    dropout: float = 0.0
    time_embedding: TimeEmbeddingKind = "sinusoidal"
    time_scale: float = 1.0  # the embedding sees time_scale * t (1000 / schedule.t_max)

    def check(self) -> None:
        n = "ClassifierConfig"
        self.require_ints(("in_channels", "num_classes", "channels", "num_res_blocks", "groups"), 1)
        require(len(self.channel_mult) >= 1 and all(isinstance(m, int) and m >= 1 for m in self.channel_mult),
                f"{n}.channel_mult must be a non-empty list of integers >= 1, got {self.channel_mult!r}")
        for m in self.channel_mult:
            require((self.channels * m) % self.groups == 0,
                    f"{n}.groups={self.groups} must divide every level width, not {self.channels * m}")
        require(0.0 <= self.dropout < 1.0, f"{n}.dropout must lie in [0, 1), got {self.dropout!r}")
        require(math.isfinite(self.time_scale) and self.time_scale > 0, f"{n}.time_scale must be > 0")
        require(self.time_embedding in get_args(TimeEmbeddingKind),
                f"{n}.time_embedding must be one of {get_args(TimeEmbeddingKind)}, got {self.time_embedding!r}")


class NoisyClassifier(nn.Module):
    """logits = f_phi(x_t, t): [B, C, H, W], [B] -> [B, num_classes]; ResNet blocks with AdaGN time conditioning, mean-pooled."""

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        cfg = config if config is not None else ClassifierConfig()
        if not isinstance(cfg, ClassifierConfig):
            raise ConfigError(f"NoisyClassifier needs a ClassifierConfig, got {type(cfg).__name__}")
        self.config = cfg
        ch, emb_dim = cfg.channels, 4 * cfg.channels
        self.time_embed = TimeEmbedding(cfg.time_embedding, ch, emb_dim, cfg.time_scale)
        self.input_conv = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)
        self.blocks = nn.ModuleList()
        c = ch
        for level, m in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.blocks.append(ResBlock(c, ch * m, emb_dim, cfg.groups, cfg.dropout, adagn=True))
                c = ch * m
            if level < len(cfg.channel_mult) - 1:
                self.blocks.append(Downsample(c))
        self.out_norm = nn.GroupNorm(cfg.groups, c)
        self.head = nn.Linear(c, cfg.num_classes)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """x [B, in_channels, H, W], t [B] (or scalar) in the classifier's schedule time -> [B, num_classes]."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"NoisyClassifier expects x of shape [B, {self.config.in_channels}, H, W], got {tuple(x.shape)}")
        te = self.time_embed  # features are float32; cast them so the classifier also runs in float64
        emb = F.silu(te.mlp(te.features(batch_time(t, x) * te.time_scale).to(x.dtype)))
        h = self.input_conv(x)
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return self.head(F.silu(self.out_norm(h)).mean(dim=(2, 3)))


__all__ = ["ClassifierConfig", "NoisyClassifier"]
