"""The noisy-classifier family (Dhariwal & Nichol 2021, sec. 4): -log p_phi(y | x_t, t) on noised labelled images,
trained by the engine; its folder is config.json + checkpoint.safetensors (no pickle)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import Dataset
from ..errors import UserError
from ..losses import sample_t
from ..models.classifier import ClassifierConfig, NoisyClassifier
from ..models.networks import time_scale_for
from ..schedules import Schedule
from ..utils.config import require
from ..utils.random import BatchRandom, batch_random
from .checkpoint import load_folder
from .config import NoisyModelConfig
from .engine import Batch, Family, OptimizerSpec, Phase, fit_into

CLASSIFIER_FORMAT = "difflab-classifier-1"


@dataclasses.dataclass(frozen=True)
class ClassifierTrainConfig(NoisyModelConfig):
    """Recipe of a noisy classifier: network overrides, the schedule of the noise, and the engine's fields."""

    network: dict[str, Any] = dataclasses.field(default_factory=dict)  # ClassifierConfig fields
    lr: float = 2e-3
    weight_decay: float = 0.05

    def check(self) -> None:
        super().check()
        known = {f.name for f in dataclasses.fields(ClassifierConfig)}
        unknown = sorted(set(self.network) - known)
        require(not unknown, f"ClassifierTrainConfig.network: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def build_classifier(cfg: ClassifierTrainConfig, data: Dataset) -> tuple[NoisyClassifier, Schedule]:
    """A fresh classifier sized for the data's channels and classes, and the schedule it is trained under."""
    if data.kind != "image" or data.y is None or data.num_classes < 2:
        raise UserError(f"a noisy classifier needs labelled images; {data.spec} has none")
    sched = cfg.schedule.build()
    base = {"in_channels": data.shape[0], "num_classes": data.num_classes, "time_scale": time_scale_for(sched)}
    return NoisyClassifier(ClassifierConfig.from_dict({**base, **cfg.network})), sched


def noisy_batch(sched: Schedule, x0: Tensor, rng: torch.Generator | BatchRandom | None) -> tuple[Tensor, Tensor]:
    """(x_t, t) with t from the training-noise distribution and x_t = alpha x_0 + sigma eps (Ho et al. 2020, eq. 4)."""
    rng = batch_random(rng, x0.shape[0])
    t = sample_t(sched, x0.shape[0], rng)
    eps = rng.randn(x0.shape)
    return sched.q_sample(x0, t.to(x0.device), eps.to(x0.device)).float(), t.float().to(x0.device)


class ClassifierFamily(Family):
    """One classifier, no EMA, one phase: cross-entropy of the label given the noised image."""

    def __init__(self, cfg: ClassifierTrainConfig, data: Dataset):
        self.data = data
        self.net, self.schedule = build_classifier(cfg, data)
        self.modules = {"model": self.net}
        self.optimizers = {"model": OptimizerSpec(("model",))}
        self.phases = [Phase("model", self.loss)]

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        xt, t = noisy_batch(self.schedule, self.data.batch(batch.idx).to(batch.device), batch.rng)
        return {"loss": F.cross_entropy(self.net(xt, t), self.data.y[batch.idx].long().to(batch.device))}


def train_classifier(cfg: ClassifierTrainConfig, data: Dataset, out: str | Path | None = None,
                     progress: bool = False) -> tuple[NoisyClassifier, Schedule]:
    """Cross-entropy on noised data, -log p_phi(y | x_t, t) with t ~ U (Dhariwal & Nichol 2021, sec. 4); saved to ``out``."""
    torch.manual_seed(cfg.seed)
    family = ClassifierFamily(cfg, data)
    fit_into(family, len(data), cfg, out, {
        "format": CLASSIFIER_FORMAT, "data": data.spec, "shape": list(data.shape), "class_names": data.class_names,
        "train": cfg.to_dict(), "network": family.net.config.to_dict(), "schedule": family.schedule.config()},
        progress)
    return family.net.eval().requires_grad_(False), family.schedule


@torch.no_grad()
def noisy_accuracy(net: NoisyClassifier, sched: Schedule, data: Dataset, t: float, seed: int = 0) -> float:
    """Top-1 accuracy of the classifier on ``data`` noised to time t (a fixed seed), 1000 examples at a time."""
    g = torch.Generator().manual_seed(seed)
    correct, start = 0, 0
    for x0 in data.batches(batch_size=1000):
        x0 = x0.double()
        tt = torch.full((len(x0),), float(t), dtype=torch.float64)
        xt = sched.q_sample(x0, tt, torch.randn(x0.shape, generator=g, dtype=torch.float64)).float()
        correct += int((net(xt, tt.float()).argmax(1) == data.y[start:start + len(x0)]).sum())
        start += len(x0)
    return correct / len(data)


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> tuple[NoisyClassifier, Schedule]:
    """Rebuild a classifier folder written by :func:`train_classifier` (eval mode, frozen)."""
    from .. import schedules

    net, rc, _ = load_folder(path, CLASSIFIER_FORMAT, "classifier",
                             lambda rc: NoisyClassifier(ClassifierConfig.from_dict(rc["network"])),
                             hint=" (train one with difflab train-classifier)")
    return net.to(device), schedules.from_config(rc["schedule"])


__all__ = ["ClassifierTrainConfig", "ClassifierFamily", "build_classifier", "train_classifier", "noisy_batch",
           "noisy_accuracy", "load_classifier", "CLASSIFIER_FORMAT"]
