"""Training a noise-conditional classifier on noised data (Dhariwal & Nichol 2021, sec. 4), seeded and deterministic,
and its folder format: config.json + checkpoint.safetensors (no pickle)."""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import schedules
from ..data import Dataset
from ..errors import UserError
from ..losses import sample_t
from ..models.networks import time_scale_for
from ..schedules import Schedule
from ..training.checkpoint import CONFIG, load_folder, save_checkpoint, write_json
from ..training.engine import batch_indices, step_generator
from ..utils.config import Config, ConfigError, require
from .classifier import ClassifierConfig, NoisyClassifier

CLASSIFIER_FORMAT = "difflab-classifier-1"


@dataclasses.dataclass(frozen=True)
class ClassifierTrainConfig(Config):
    """Recipe of a noisy classifier: network overrides, schedule of the noise, AdamW, budget and seed."""

    schedule: dict[str, Any] = dataclasses.field(default_factory=lambda: {"kind": "cosine", "T": 1000})
    network: dict[str, Any] = dataclasses.field(default_factory=dict)
    batch_size: int = 128
    steps: int = 2000
    minutes: float = 0.0
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    seed: int = 0

    def check(self) -> None:
        n = "ClassifierTrainConfig"
        self.require_ints(("batch_size", "steps"), 1)
        require(isinstance(self.seed, int) and self.seed >= 0, f"{n}.seed must be an integer >= 0")
        require(isinstance(self.warmup_steps, int) and self.warmup_steps >= 0, f"{n}.warmup_steps must be >= 0")
        require(math.isfinite(self.lr) and self.lr > 0, f"{n}.lr must be > 0, got {self.lr!r}")
        require(0 <= self.weight_decay < 1, f"{n}.weight_decay must lie in [0, 1), got {self.weight_decay!r}")
        require(math.isfinite(self.minutes) and self.minutes >= 0, f"{n}.minutes must be >= 0")
        require(isinstance(self.schedule, dict) and "kind" in self.schedule, f"{n}.schedule needs a 'kind'")


def build_classifier(cfg: ClassifierTrainConfig, data: Dataset) -> tuple[NoisyClassifier, Schedule]:
    """A fresh classifier sized for the data's channels and classes, and the schedule it is trained under."""
    if data.kind != "image" or data.y is None or data.num_classes < 2:
        raise UserError(f"a noisy classifier needs labelled images; {data.spec} has none")
    try:
        sched = schedules.from_config(cfg.schedule)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"ClassifierTrainConfig.schedule {cfg.schedule!r}: {e}") from None
    base = {"in_channels": data.shape[0], "num_classes": data.num_classes, "time_scale": time_scale_for(sched)}
    return NoisyClassifier(ClassifierConfig.from_dict({**base, **cfg.network})), sched


def noisy_batch(sched: Schedule, x0: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, t) with t from the training-noise distribution and x_t = alpha x_0 + sigma eps (Ho et al. 2020, eq. 4)."""
    t = sample_t(sched, x0.shape[0], g)
    eps = torch.randn(x0.shape, generator=g)
    return sched.q_sample(x0, t, eps).float(), t.float()


def train_classifier(cfg: ClassifierTrainConfig, data: Dataset, out: str | Path | None = None,
                     progress: bool = False) -> tuple[NoisyClassifier, Schedule]:
    """Cross-entropy on noised data, -log p_phi(y | x_t, t) with t ~ U (Dhariwal & Nichol 2021, sec. 4); saved to ``out``."""
    torch.manual_seed(cfg.seed)
    net, sched = build_classifier(cfg, data)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    t0, step = time.monotonic(), 0
    net.train()
    for step in tqdm(range(cfg.steps), disable=not progress, desc="train classifier", unit="step"):
        if cfg.minutes and time.monotonic() - t0 > 60 * cfg.minutes:
            break
        g = step_generator(cfg.seed, step)
        idx = batch_indices(len(data), cfg.batch_size, cfg.seed, step)
        xt, t = noisy_batch(sched, data.x[idx], g)
        for group in opt.param_groups:
            group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        loss = F.cross_entropy(net(xt, t), data.y[idx].long())
        if not math.isfinite(loss.item()):
            raise UserError(f"classifier loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    else:
        step = cfg.steps
    net.eval().requires_grad_(False)
    if out is not None:
        save_classifier(out, net, sched, cfg, data, step)
    return net, sched


@torch.no_grad()
def noisy_accuracy(net: NoisyClassifier, sched: Schedule, data: Dataset, t: float, seed: int = 0) -> float:
    """Top-1 accuracy of the classifier on ``data`` noised to time t (a fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    x0 = data.x
    tt = torch.full((len(x0),), float(t), dtype=torch.float64)
    xt = sched.q_sample(x0.double(), tt, torch.randn(x0.shape, generator=g, dtype=torch.float64)).float()
    return float((net(xt, tt.float()).argmax(1) == data.y).float().mean())


def save_classifier(out: str | Path, net: NoisyClassifier, sched: Schedule, cfg: ClassifierTrainConfig,
                    data: Dataset, step: int, extra: dict[str, Any] | None = None) -> None:
    """Write out/config.json and out/checkpoint.safetensors atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, {"model": net}, step=step)
    write_json(out / CONFIG, {"format": CLASSIFIER_FORMAT, "data": data.spec, "shape": list(data.shape),
                              "class_names": data.class_names, "train": cfg.to_dict(),
                              "network": net.config.to_dict(), "schedule": sched.config(), **(extra or {})})


def load_classifier(path: str | Path, device: torch.device | str = "cpu") -> tuple[NoisyClassifier, Schedule]:
    """Rebuild a classifier folder written by :func:`train_classifier` (eval mode, frozen)."""
    net, rc, _ = load_folder(path, CLASSIFIER_FORMAT, "classifier",
                             lambda rc: NoisyClassifier(ClassifierConfig.from_dict(rc["network"])),
                             hint=" (train one with difflab train-classifier)")
    return net.to(device), schedules.from_config(rc["schedule"])


__all__ = ["ClassifierTrainConfig", "build_classifier", "train_classifier", "noisy_batch", "noisy_accuracy",
           "save_classifier", "load_classifier", "CLASSIFIER_FORMAT"]
