"""The training recipe: one small frozen config, loadable from JSON with validation."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

from ..models.denoiser import Prediction
from ..utils.config import Config, read_config_file, require


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """Everything that defines a training run besides the data and the output folder."""

    schedule: dict[str, Any] = dataclasses.field(default_factory=lambda: {"kind": "cosine", "T": 1000})
    network: dict[str, Any] = dataclasses.field(default_factory=dict)  # overrides of the data-sized preset
    prediction: Prediction = "eps"
    objective: str = "simple"  # a name in difflab.losses.OBJECTIVES
    weighting: Literal["uniform", "min_snr"] = "uniform"
    min_snr_gamma: float = 5.0
    batch_size: int = 128
    steps: int = 100_000  # upper bound; a --minutes budget usually stops earlier
    minutes: float = 0.0  # wall-clock budget of one invocation (0 = none)
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    conditional: bool = False  # train on class labels (classifier-free: labels dropped with p_uncond)
    p_uncond: float = 0.1
    text_encoder: Literal["none", "small", "minilm"] = "none"  # with conditional: caption cross-attention, not labels
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 500
    sample_every: int = 0  # preview grid every N steps (0 = only at the end)
    sampler: str = "ddim"  # for previews and the final grid
    sample_steps: int = 50

    def check(self) -> None:
        n = "TrainConfig"
        self.require_ints(("batch_size", "steps", "log_every", "checkpoint_every", "sample_steps"), 1)
        self.require_ints(("warmup_steps", "sample_every", "seed"), 0)
        require(math.isfinite(self.lr) and self.lr > 0, f"{n}.lr must be > 0, got {self.lr!r}")
        require(self.minutes >= 0 and math.isfinite(self.minutes), f"{n}.minutes must be >= 0, got {self.minutes!r}")
        require(0 <= self.weight_decay < 1, f"{n}.weight_decay must lie in [0, 1), got {self.weight_decay!r}")
        require(self.grad_clip >= 0, f"{n}.grad_clip must be >= 0 (0 = off), got {self.grad_clip!r}")
        require(0 <= self.ema_decay < 1, f"{n}.ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        require(0 <= self.p_uncond < 1, f"{n}.p_uncond must lie in [0, 1), got {self.p_uncond!r}")
        require(self.text_encoder == "none" or self.conditional,
                f"{n}.text_encoder={self.text_encoder!r} needs conditional=true (captions of the labelled data)")
        require(self.min_snr_gamma > 0, f"{n}.min_snr_gamma must be > 0, got {self.min_snr_gamma!r}")
        require(isinstance(self.schedule, dict) and "kind" in self.schedule,
                f"{n}.schedule must be a mapping with a 'kind', got {self.schedule!r}")
        require(isinstance(self.network, dict), f"{n}.network must be a mapping, got {self.network!r}")
        from ..losses import OBJECTIVES

        require(self.objective in OBJECTIVES,
                f"{n}.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Read a JSON config file; ``overrides`` (not None) take precedence."""
        d = read_config_file(path)
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(d, where=str(path))
