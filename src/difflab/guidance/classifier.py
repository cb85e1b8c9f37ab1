"""Classifier guidance (Dhariwal & Nichol 2021): a noise-conditional classifier p_phi(y | x_t, t) and its gradient
added to the score of a denoiser, as a wrapper that works with every sampler."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.denoiser import Denoiser
from ..models.embeddings import TimeEmbedding, TimeEmbeddingKind, batch_time
from ..models.unet import Downsample, ResBlock
from ..schedules import Schedule, append_dims
from ..utils.config import Config, ConfigError, require
from .base import GuidedDenoiser, null_condition, num_classes_of


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


def same_schedule(a: Schedule, b: Schedule) -> bool:
    """True when two schedules have the same config (then times need no mapping)."""
    return a is b or a.config() == b.config()


def to_schedule(x: Tensor, t: Tensor, src: Schedule, dst: Schedule) -> tuple[Tensor, Tensor]:
    """Re-express x_t at time t of ``src`` as the point of equal logSNR in ``dst``: (x alpha_dst / alpha_src, t_dst) (Kingma et al. 2021)."""
    if same_schedule(src, dst):
        return x, t
    t64 = t.detach().double()
    t_dst = dst.t_from_log_snr(src.log_snr(t64)).clamp(dst.t_min, dst.t_max)
    ratio = dst.alpha(t_dst) / src.alpha(t64)
    return x * append_dims(ratio.to(x.dtype), x.ndim), t_dst.to(x.dtype)


def log_prob_grad(classifier: nn.Module, x: Tensor, t: Tensor, y: Tensor, schedule: Schedule | None = None,
                  classifier_schedule: Schedule | None = None) -> tuple[Tensor, Tensor]:
    """(grad_x log p_phi(y | x_t, t), log p_phi(y | x_t, t)) for labels y [B] (Dhariwal & Nichol 2021, Alg. 1).

    With two schedules, x_t at time t of ``schedule`` is first mapped to ``classifier_schedule`` (equal logSNR).
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        xc, tc = (xg, t) if schedule is None or classifier_schedule is None else \
            to_schedule(xg, t, schedule, classifier_schedule)
        logp = F.log_softmax(classifier(xc, tc), dim=1).gather(1, y.long().view(-1, 1)).squeeze(1)
        (grad,) = torch.autograd.grad(logp.sum(), xg)
    return grad, logp.detach()


class ClassifierGuidance(GuidedDenoiser):
    """Score + s grad_x log p_phi(y | x_t) (Dhariwal & Nichol 2021, eq. 12 / Alg. 2); in x_0 space x0 += s sigma^2 / alpha grad.

    Target labels come from ``cond["y"]``; rows holding the inner model's null label are left unguided, so an
    outer classifier-free wrapper may batch its unconditional branch through this one.  ``conditional`` says whether the inner model sees them too
    (default: when it is class-conditional); when False a class-conditional inner model gets the null label,
    i.e. its unconditional branch.  The classifier may be trained under another schedule: its input is mapped
    to the time of equal logSNR.  At s = 0 the wrapper returns the inner model's x_0 unchanged.
    """

    def __init__(self, model: Denoiser, classifier: nn.Module, scale: float,
                 classifier_schedule: Schedule | None = None, conditional: bool | None = None):
        super().__init__(model, "x0")
        self.classifier = classifier
        self.scale = float(scale)
        self.classifier_schedule = classifier_schedule if classifier_schedule is not None else model.schedule
        k = num_classes_of(model)
        if conditional and not k:
            raise ValueError("conditional=True needs a class-conditional inner model")
        self.conditional = bool(k) if conditional is None else conditional
        self._null = k

    def inner_condition(self, cond: Any) -> Any:
        """The condition the inner model sees: labels kept, replaced by the null label, or dropped."""
        if not isinstance(cond, Mapping) or cond.get("y") is None or self.conditional:
            return cond
        if self._null:
            return null_condition({"y": cond["y"]}, self._null) | {k: v for k, v in cond.items() if k != "y"}
        return {k: v for k, v in cond.items() if k != "y"} or None

    def guided(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        x0 = self.model(x, t, self.inner_condition(cond))
        if self.scale == 0.0:
            return x0
        y = cond.get("y") if isinstance(cond, Mapping) else None
        if y is None:
            raise ValueError("classifier guidance needs the target labels in cond['y']")
        y = torch.as_tensor(y, device=x.device).expand(x.shape[0])
        k = getattr(getattr(self.classifier, "config", None), "num_classes", None)
        null = (y == self._null) if self._null else torch.zeros_like(y, dtype=torch.bool)
        if k is not None and bool((((y < 0) | (y >= k)) & ~null).any()):
            raise ValueError(f"classifier guidance: labels must lie in 0..{k - 1}")
        # rows with the null label (e.g. the unconditional half of an outer CFG pass) are not guided
        grad, _ = log_prob_grad(self.classifier, x, t, torch.where(null, 0, y), self.model.schedule,
                                self.classifier_schedule)
        grad = grad * append_dims((~null).to(grad.dtype), grad.ndim)
        a, s = self.model.coefficients(t, x)
        return x0 + self.scale * s**2 / a * grad


def classifier_guided(model: Denoiser, classifier: nn.Module, scale: float,
                      classifier_schedule: Schedule | None = None, conditional: bool | None = None) -> Denoiser:
    """The classifier-guided denoiser; s = 0 gives the model itself."""
    return ClassifierGuidance(model, classifier, scale, classifier_schedule, conditional)


__all__ = ["ClassifierConfig", "NoisyClassifier", "ClassifierGuidance", "classifier_guided", "log_prob_grad",
           "to_schedule", "same_schedule"]
