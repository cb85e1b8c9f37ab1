"""A noisy CLIP model (Nichol et al. 2022, sec. 2.4): a time-conditioned image tower and a small text tower whose unit
embeddings are compared by a learned-temperature dot product (Radford et al. 2021)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..text.encoders import SmallTextConfig, SmallTextEncoder, tokenize_words
from ..utils.config import Config, require
from .classifier import ClassifierConfig, NoisyClassifier


@dataclasses.dataclass(frozen=True)
class ClipConfig(Config):
    """A noisy CLIP: a time-conditioned image tower (NoisyClassifier with ``embed_dim`` outputs) and a small text tower."""

    embed_dim: int = 64
    image: dict[str, Any] = dataclasses.field(default_factory=dict)  # ClassifierConfig fields (num_classes is set)
    text: dict[str, Any] = dataclasses.field(default_factory=dict)  # SmallTextConfig fields
    temperature: float = 0.07  # initial softmax temperature (learned; Radford et al. 2021)

    def check(self) -> None:
        require(isinstance(self.embed_dim, int) and self.embed_dim >= 1, "ClipConfig.embed_dim must be >= 1")
        require(0 < self.temperature < 1, f"ClipConfig.temperature must lie in (0, 1), got {self.temperature!r}")


class NoisyClip(nn.Module):
    """Unit image embeddings f(x_t, t) [B, E] and text embeddings g(c) [B, E]; logits = exp(tau) f g^T (Radford et al. 2021)."""

    def __init__(self, config: ClipConfig | None = None):
        super().__init__()
        cfg = config if config is not None else ClipConfig()
        self.config = cfg
        self.image_tower = NoisyClassifier(ClassifierConfig.from_dict({**cfg.image, "num_classes": cfg.embed_dim}))
        self.text_tower = SmallTextEncoder(SmallTextConfig.from_dict(cfg.text))
        self.text_proj = nn.Linear(self.text_tower.dim, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))

    def image_features(self, x: Tensor, t: Tensor) -> Tensor:
        """f(x_t, t): [B, C, H, W], [B] -> unit vectors [B, E]."""
        return F.normalize(self.image_tower(x, t), dim=1)

    def text_features(self, prompts: Sequence[str]) -> Tensor:
        """g(c): prompts -> unit vectors [B, E] (masked mean of the token states, then a linear map)."""
        ids, mask = tokenize_words(prompts, self.text_tower.config.max_len)
        dev = self.logit_scale.device
        ids, mask = ids.to(dev), mask.to(dev)
        h = self.text_tower(ids, mask)
        pooled = h.sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
        return F.normalize(self.text_proj(pooled), dim=1)

    def forward(self, x: Tensor, t: Tensor, prompts: Sequence[str]) -> Tensor:
        """Image-to-text logits [B, B] of a batch of noised images and their captions."""
        return self.logit_scale.exp().clamp(max=100.0) * self.image_features(x, t) @ self.text_features(prompts).T


__all__ = ["ClipConfig", "NoisyClip"]
