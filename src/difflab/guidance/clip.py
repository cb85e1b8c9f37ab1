"""CLIP-style guidance (GLIDE, Nichol et al. 2022, sec. 2.4): an image-text contrastive model trained on noised
images, and the gradient of its image-caption similarity added to the score, as a denoiser wrapper."""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import schedules
from ..data import Dataset
from ..errors import UserError
from ..models.denoiser import Denoiser
from ..models.networks import time_scale_for
from ..schedules import Schedule
from ..text.captions import CaptionThresholds, captions
from ..text.encoders import SmallTextConfig, SmallTextEncoder, tokenize_words
from ..training.checkpoint import CONFIG, load_folder, save_checkpoint, write_json
from ..training.engine import batch_indices, step_generator
from ..utils.config import Config, ConfigError, require
from .base import GuidedDenoiser
from .classifier import ClassifierConfig, NoisyClassifier, to_schedule
from .training import noisy_batch

CLIP_FORMAT = "difflab-clip-1"


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


def clip_loss(logits: Tensor) -> Tensor:
    """Symmetric InfoNCE: mean of the image->text and text->image cross-entropies (Radford et al. 2021, fig. 3)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@dataclasses.dataclass(frozen=True)
class ClipTrainConfig(Config):
    """Recipe of a noisy CLIP: model config, noise schedule, AdamW, budget and seed."""

    clip: dict[str, Any] = dataclasses.field(default_factory=dict)
    schedule: dict[str, Any] = dataclasses.field(default_factory=lambda: {"kind": "cosine", "T": 1000})
    batch_size: int = 128
    steps: int = 2000
    minutes: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    seed: int = 0

    def check(self) -> None:
        n = "ClipTrainConfig"
        self.require_ints(("batch_size", "steps"), 2)
        require(math.isfinite(self.lr) and self.lr > 0, f"{n}.lr must be > 0")
        require(0 <= self.weight_decay < 1 and self.minutes >= 0 and self.warmup_steps >= 0 and self.seed >= 0,
                f"{n}: weight_decay in [0, 1), minutes, warmup_steps and seed >= 0")
        require(isinstance(self.schedule, dict) and "kind" in self.schedule, f"{n}.schedule needs a 'kind'")


def train_clip(cfg: ClipTrainConfig, data: Dataset, out: str | Path | None = None,
               progress: bool = False) -> tuple[NoisyClip, Schedule]:
    """Contrastive training on (x_t, caption) pairs with t ~ U (Nichol et al. 2022, sec. 2.4), seeded; saved to ``out``."""
    if data.kind != "image" or data.y is None:
        raise UserError(f"a noisy CLIP needs labelled digit images for captions; {data.spec} has none")
    try:
        sched = schedules.from_config(cfg.schedule)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"ClipTrainConfig.schedule {cfg.schedule!r}: {e}") from None
    texts = captions(data.x, data.y, CaptionThresholds.fit(data.x))
    torch.manual_seed(cfg.seed)
    image = {"in_channels": data.shape[0], "time_scale": time_scale_for(sched), **cfg.clip.get("image", {})}
    model = NoisyClip(ClipConfig.from_dict({**cfg.clip, "image": image}))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    t0, step = time.monotonic(), 0
    model.train()
    for step in tqdm(range(cfg.steps), disable=not progress, desc="train clip", unit="step"):
        if cfg.minutes and time.monotonic() - t0 > 60 * cfg.minutes:
            break
        g = step_generator(cfg.seed, step)
        idx = batch_indices(len(data), cfg.batch_size, cfg.seed, step)
        xt, t = noisy_batch(sched, data.x[idx], g)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        loss = clip_loss(model(xt, t, [texts[i] for i in idx.tolist()]))
        if not math.isfinite(loss.item()):
            raise UserError(f"CLIP loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    else:
        step = cfg.steps
    model.eval().requires_grad_(False)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        save_checkpoint(out, {"model": model}, step=step)
        write_json(out / CONFIG, {"format": CLIP_FORMAT, "data": data.spec, "shape": list(data.shape),
                                  "train": cfg.to_dict(), "clip": model.config.to_dict(), "schedule": sched.config()})
    return model, sched


def load_clip(path: str | Path, device: torch.device | str = "cpu") -> tuple[NoisyClip, Schedule]:
    """Rebuild a CLIP folder written by :func:`train_clip` (eval mode, frozen)."""
    model, rc, _ = load_folder(path, CLIP_FORMAT, "CLIP model", lambda rc: NoisyClip(ClipConfig.from_dict(rc["clip"])),
                               hint=" (train one with difflab train-clip)")
    return model.to(device), schedules.from_config(rc["schedule"])


def similarity_grad(clip: NoisyClip, x: Tensor, t: Tensor, text: Tensor, schedule: Schedule | None = None,
                    clip_schedule: Schedule | None = None) -> tuple[Tensor, Tensor]:
    """(grad_x f(x_t, t) . g(c), f(x_t, t) . g(c)) for unit text features text [B or 1, E] (Nichol et al. 2022, eq. 5)."""
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        xc, tc = (xg, t) if schedule is None or clip_schedule is None else to_schedule(xg, t, schedule, clip_schedule)
        sim = (clip.image_features(xc, tc) * text.to(x.dtype)).sum(1)
        (grad,) = torch.autograd.grad(sim.sum(), xg)
    return grad, sim.detach()


class ClipGuidance(GuidedDenoiser):
    """Score + s grad_x (f(x_t, t) . g(c)) (GLIDE, Nichol et al. 2022, eq. 5); in x_0 space x0 += s sigma^2 / alpha grad.

    ``prompts`` (one, or one per sample) fix the caption c; ``cond`` is passed unchanged to the inner model.
    At s = 0 the wrapper returns the inner model's x_0 unchanged.
    """

    def __init__(self, model: Denoiser, clip: NoisyClip, prompts: Sequence[str] | str, scale: float,
                 clip_schedule: Schedule | None = None):
        super().__init__(model, "x0")
        self.clip = clip
        self.scale = float(scale)
        self.clip_schedule = clip_schedule if clip_schedule is not None else model.schedule
        with torch.no_grad():
            self.register_buffer("text", clip.text_features([prompts] if isinstance(prompts, str) else list(prompts)),
                                 persistent=False)

    def guided(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        x0 = self.model(x, t, cond)
        if self.scale == 0.0:
            return x0
        if self.text.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"CLIP guidance has {self.text.shape[0]} prompts for a batch of {x.shape[0]}")
        grad, _ = similarity_grad(self.clip, x, t, self.text, self.model.schedule, self.clip_schedule)
        a, s = self.model.coefficients(t, x)
        return x0 + self.scale * s**2 / a * grad


@torch.no_grad()
def zero_shot_accuracy(clip: NoisyClip, sched: Schedule, data: Dataset, t: float, seed: int = 0) -> float:
    """Accuracy of classifying data noised to time t by the most similar prompt "a <digit>" (Radford et al. 2021, sec. 3.1)."""
    from ..text.conditioning import class_prompts

    g = torch.Generator().manual_seed(seed)
    tt = torch.full((len(data),), float(t), dtype=torch.float64)
    xt = sched.q_sample(data.x.double(), tt, torch.randn(data.x.shape, generator=g, dtype=torch.float64)).float()
    sims = clip.image_features(xt, tt.float()) @ clip.text_features(class_prompts(data.num_classes)).T
    return float((sims.argmax(1) == data.y).float().mean())


__all__ = ["ClipConfig", "NoisyClip", "clip_loss", "ClipTrainConfig", "train_clip", "load_clip", "similarity_grad",
           "ClipGuidance", "zero_shot_accuracy", "CLIP_FORMAT"]
