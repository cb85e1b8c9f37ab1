"""The noisy-CLIP family (GLIDE, Nichol et al. 2022, sec. 2.4): a symmetric contrastive loss on (x_t, caption) pairs
with t ~ U, trained by the engine; its folder is config.json + checkpoint.safetensors (no pickle).

The contrastive loss takes its negatives within a batch part: with several processes or accumulation
micro-batches each part contrasts its own examples (no feature all-gather), unlike one process with the batch.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import Dataset
from ..errors import UserError
from ..models.clip import ClipConfig, NoisyClip
from ..models.networks import time_scale_for
from ..schedules import Schedule
from ..utils.config import require
from .checkpoint import load_folder
from .classifier import noisy_batch
from .config import NoisyModelConfig
from .engine import Batch, Family, OptimizerSpec, Phase, fit_into

CLIP_FORMAT = "difflab-clip-1"


def clip_loss(logits: Tensor) -> Tensor:
    """Symmetric InfoNCE: mean of the image->text and text->image cross-entropies (Radford et al. 2021, fig. 3)."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@dataclasses.dataclass(frozen=True)
class ClipTrainConfig(NoisyModelConfig):
    """Recipe of a noisy CLIP: model config, noise schedule, and the engine's fields."""

    clip: dict[str, Any] = dataclasses.field(default_factory=dict)  # ClipConfig fields
    lr: float = 1e-3
    weight_decay: float = 0.01

    def check(self) -> None:
        super().check()
        require(self.batch_size // self.accumulate >= 2,
                f"ClipTrainConfig: a contrastive batch part needs at least 2 pairs, got batch_size {self.batch_size} "
                f"/ accumulate {self.accumulate}")


class ClipFamily(Family):
    """One CLIP model (image and text towers), no EMA, one phase: the contrastive loss of noised images and captions.

    The captions are the data's own (a captioned image folder; an image with several takes one at random per step)
    or those made from the labels of grey digits (:func:`difflab.text.dataset_captions`)."""

    def __init__(self, cfg: ClipTrainConfig, data: Dataset):
        from ..text import dataset_captions

        if data.kind != "image":
            raise UserError(f"a noisy CLIP needs captioned images; {data.spec} holds points")
        self.data, self.schedule = data, cfg.schedule.build()
        self.captions, self.digit_captions = dataset_captions(data)
        self.several = any(len(c) > 1 for c in self.captions)
        image = {"in_channels": data.shape[0], "time_scale": time_scale_for(self.schedule), **cfg.clip.get("image", {})}
        self.model = NoisyClip(ClipConfig.from_dict({**cfg.clip, "image": image}))
        self.modules = {"model": self.model}
        self.optimizers = {"model": OptimizerSpec(("model",))}
        self.phases = [Phase("model", self.loss)]

    def texts(self, idx: list[int], u: Tensor | None) -> list[str]:
        """One caption of each example idx: the one the uniform draw u [B] picks (the first when u is None)."""
        caps = [self.captions[i] for i in idx]
        return [c[0] if u is None else c[min(int(float(v) * len(c)), len(c) - 1)] for c, v in
                zip(caps, u if u is not None else [0.0] * len(caps))]

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        xt, t = noisy_batch(self.schedule, self.data.batch(batch.idx).to(batch.device), batch.rng)
        u = batch.rng.rand(len(batch.idx), torch.float32) if self.several else None
        return {"loss": clip_loss(self.model(xt, t, self.texts(batch.idx.tolist(), u)))}


def train_clip(cfg: ClipTrainConfig, data: Dataset, out: str | Path | None = None,
               progress: bool = False) -> tuple[NoisyClip, Schedule]:
    """Contrastive training on (x_t, caption) pairs with t ~ U (Nichol et al. 2022, sec. 2.4), seeded; saved to ``out``."""
    torch.manual_seed(cfg.seed)
    family = ClipFamily(cfg, data)
    fit_into(family, len(data), cfg, out, {
        "format": CLIP_FORMAT, "data": data.spec, "shape": list(data.shape), "train": cfg.to_dict(),
        "digit_captions": family.digit_captions,
        "clip": family.model.config.to_dict(), "schedule": family.schedule.config()}, progress)
    return family.model.eval().requires_grad_(False), family.schedule


def load_clip(path: str | Path, device: torch.device | str = "cpu") -> tuple[NoisyClip, Schedule]:
    """Rebuild a CLIP folder written by :func:`train_clip` (eval mode, frozen)."""
    from .. import schedules

    model, rc, _ = load_folder(path, CLIP_FORMAT, "CLIP model", lambda rc: NoisyClip(ClipConfig.from_dict(rc["clip"])),
                               hint=" (train one with difflab train-clip)")
    return model.to(device), schedules.from_config(rc["schedule"])


@torch.no_grad()
def zero_shot_accuracy(clip: NoisyClip, sched: Schedule, data: Dataset, t: float, seed: int = 0) -> float:
    """Accuracy of classifying data noised to time t by the most similar prompt "a <digit>" (Radford et al. 2021, sec. 3.1)."""
    from ..text.conditioning import class_prompts

    g = torch.Generator().manual_seed(seed)
    text = clip.text_features(class_prompts(data.num_classes)).T
    correct, start = 0, 0
    for x in data.batches(batch_size=1000):
        x = x.double()
        tt = torch.full((len(x),), float(t), dtype=torch.float64)
        xt = sched.q_sample(x, tt, torch.randn(x.shape, generator=g, dtype=torch.float64)).float()
        sims = clip.image_features(xt, tt.float()) @ text
        correct += int((sims.argmax(1) == data.y[start:start + len(x)]).sum())
        start += len(x)
    return correct / len(data)


__all__ = ["ClipTrainConfig", "ClipFamily", "clip_loss", "train_clip", "load_clip", "zero_shot_accuracy", "CLIP_FORMAT"]
