"""Folders that serve other runs (a noisy classifier or CLIP for guidance, an autoencoder for latent runs), and
cascades of diffusion runs: opened by the same :func:`difflab.load`, each declaring what it does."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .base import Callback, Cond, Run


class AuxiliaryRun(Run):
    """A trained helper model: it loads and declares ``can_sample = False`` (sampling it is a one-line error)."""

    can_sample = False

    def __init__(self, path: Path, kind: str, config: dict[str, Any], step: int, model: nn.Module, **extra: Any):
        self.path, self.kind, self.family, self.config, self.step, self.model = path, kind, kind, config, step, model
        self.extra = extra  # the classifier's / CLIP's schedule, the autoencoder's record
        self.domain = "images" if len(config.get("shape", ())) == 3 else "points"

    def describe(self) -> str:
        return f"{self.path} is a {self.kind} folder"

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def open_classifier(path: Path, ema: bool, device: Any) -> AuxiliaryRun:
    from ..training.checkpoint import CONFIG, load_checkpoint, read_json
    from ..training.classifier import load_classifier

    net, sched = load_classifier(path, device=device or "cpu")
    return AuxiliaryRun(path, "noisy classifier", read_json(path / CONFIG), load_checkpoint(path).step, net,
                        schedule=sched)


def open_clip(path: Path, ema: bool, device: Any) -> AuxiliaryRun:
    from ..training.checkpoint import CONFIG, load_checkpoint, read_json
    from ..training.clip import load_clip

    model, sched = load_clip(path, device=device or "cpu")
    return AuxiliaryRun(path, "noisy CLIP", read_json(path / CONFIG), load_checkpoint(path).step, model, schedule=sched)


def open_autoencoder(path: Path, ema: bool, device: Any) -> AuxiliaryRun:
    from ..training.autoencoder import load_autoencoder

    ae = load_autoencoder(path, ema=ema, device=device)
    return AuxiliaryRun(path, "autoencoder", ae.config, ae.step, ae.model, loaded=ae)


class CascadeRun(Run):
    """A cascade folder: the base run, then its super-resolution stages (Ho et al. 2022); images of the last size."""

    def __init__(self, path: Path, cascade: Any):
        from .diffusion import CONDITIONING_KINDS, DEFAULT_SAMPLER, DEFAULT_STEPS, DiffusionRun

        self.path, self.cascade = path, cascade
        base = DiffusionRun(path / "base", cascade.base)
        self.family, self.kind, self.step = base.family, "cascade", base.step
        self.config = {**cascade.base.config, "shape": list(cascade.shape)}
        self.num_classes, self.conditioning_kind = base.num_classes, CONDITIONING_KINDS[cascade.base.conditioning.kind]
        self.samplers, self.tasks = base.samplers, ("generate",)
        self.default_sampler, self.default_steps = DEFAULT_SAMPLER, DEFAULT_STEPS

    def describe(self) -> str:
        return f"{self.path} is a cascade of {self.family} runs"

    @property
    def nfe(self) -> int:
        return int(self.last_nfe or self.default_steps * (1 + len(self.cascade.stages)))

    def _draw(self, n: int, seed: int, cond: Cond, sampler: str | None, steps: int | None,
              callback: Callback | None, batch_size: int, *, clip: bool = True, **options: Any) -> Tensor:
        """Each batch: the base's samples, then every stage conditioned on the previous output (training/cascade.py)."""
        if cond is not None and not isinstance(cond, int):
            raise TypeError("cond: a cascade takes one class label (or None)")
        self.check_label(cond)
        g = torch.Generator().manual_seed(seed)
        sampler, steps = sampler or self.default_sampler, steps or self.default_steps
        if callback is not None:
            options["callback"] = callback
        chunks = [self.cascade.sample(min(batch_size, n - i), sampler=sampler, steps=steps, generator=g, label=cond,
                                      clip=clip, **options).cpu() for i in range(0, n, batch_size)]
        return torch.cat(chunks)


def open_cascade(path: Path, ema: bool, device: Any) -> CascadeRun:
    from ..training.cascade import load_cascade

    return CascadeRun(path, load_cascade(path, ema=ema, device=device))


__all__ = ["AuxiliaryRun", "CascadeRun", "open_classifier", "open_clip", "open_autoencoder", "open_cascade"]
