"""A residual MLP denoiser for low-dimensional data (2-D toy distributions)."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.config import Config, ConfigError, require
from .embeddings import check_time_fields, Dropout, LabelEmbedding, TimeEmbedding, TimeEmbeddingKind, batch_time, check_cond, zero_


@dataclasses.dataclass(frozen=True)
class MLPConfig(Config):
    """Residual MLP: ``depth`` pre-norm blocks of width ``hidden``, time (and label) embedding added in each block."""

    dim: int = 2
    hidden: int = 256
    depth: int = 4
    dropout: float = 0.0
    time_embedding: TimeEmbeddingKind = "sinusoidal"
    time_scale: float = 1.0  # the embedding sees time_scale * t; set to 1000 / schedule.t_max
    fourier_scale: float = 16.0
    num_classes: int = 0  # > 0: class-conditional; label num_classes is the null label

    def check(self) -> None:
        n = "MLPConfig"
        self.require_ints(("dim", "hidden", "depth"), 1)
        require(isinstance(self.num_classes, int) and self.num_classes >= 0,
                f"{n}.num_classes must be an integer >= 0, got {self.num_classes!r}")
        check_time_fields(self)


class MLPBlock(nn.Module):
    """h + W2 dropout(SiLU(W1 LN(h) + E emb)), W2 zero-initialised; [B, hidden] -> [B, hidden]."""

    def __init__(self, hidden: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_dim, hidden)
        self.dropout = Dropout(dropout)
        self.fc2 = zero_(nn.Linear(hidden, hidden))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        return h + self.fc2(self.dropout(F.silu(self.fc1(self.norm(h)) + self.emb(emb))))


class MLP(nn.Module):
    """net(x_t, t, cond) -> [B, dim] for x_t [B, dim], t [B] in schedule time; cond None or {"y": LongTensor [B]}."""

    def __init__(self, config: MLPConfig | None = None):
        super().__init__()
        cfg = config if config is not None else MLPConfig()
        if not isinstance(cfg, MLPConfig):
            raise ConfigError(f"MLP needs an MLPConfig, got {type(cfg).__name__}")
        self.config = cfg
        self.time_embed = TimeEmbedding(cfg.time_embedding, cfg.hidden, cfg.hidden, cfg.time_scale, cfg.fourier_scale)
        self.label_embed = LabelEmbedding(cfg.num_classes, cfg.hidden) if cfg.num_classes > 0 else None
        self.inp = nn.Linear(cfg.dim, cfg.hidden)
        self.blocks = nn.ModuleList(MLPBlock(cfg.hidden, cfg.hidden, cfg.dropout) for _ in range(cfg.depth))
        self.out_norm = nn.LayerNorm(cfg.hidden)
        self.out = zero_(nn.Linear(cfg.hidden, cfg.dim))

    @classmethod
    def from_config(cls, config: MLPConfig | Mapping[str, Any]) -> "MLP":
        """Build from an MLPConfig or its dict form."""
        return cls(config if isinstance(config, MLPConfig) else MLPConfig.from_dict(dict(config)))

    def forward(self, x: Tensor, t: Tensor | float, cond: Mapping[str, Any] | None = None) -> Tensor:
        """x [B, dim], t [B] (or scalar) -> [B, dim]."""
        if x.ndim != 2 or x.shape[1] != self.config.dim:
            raise ValueError(f"MLP expects x of shape [B, {self.config.dim}], got {tuple(x.shape)}")
        c = check_cond(cond, {"y"} if self.label_embed is not None else set(), "MLP")
        emb = self.time_embed(batch_time(t, x))
        if self.label_embed is not None:
            emb = emb + self.label_embed(c.get("y"), x.shape[0])
        emb = F.silu(emb)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))


def mlp_toy(**changes: Any) -> MLPConfig:
    """2-D toy data: width 256, 4 residual blocks."""
    return MLPConfig(dim=2, hidden=256, depth=4).replace(**changes)


__all__ = ["MLP", "MLPConfig", "MLPBlock", "mlp_toy"]
