"""A run of an engine-only family (gan, vae, ddgan, lsgm, cld, ...): its own sampler, its family's capabilities."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..training.families import FAMILIES, LoadedGenerator, load_generator
from .base import Callback, Cond, Run, labels_of


class FamilyRun(Run):
    """A loaded family run; what it accepts (samplers, likelihood, labels) comes from its Family class."""

    def __init__(self, path: Path, loaded: LoadedGenerator):
        self.path, self.loaded, self.base_recipe = path, loaded, loaded.recipe
        self.cls = FAMILIES[loaded.family]
        self.family, self.config, self.step = loaded.family, loaded.config, loaded.step
        self.domain = "images" if len(loaded.shape) == 3 else "points"
        self.num_classes = loaded.num_classes
        self.conditioning_kind = "labels" if self.num_classes else "none"
        self.tasks = ("generate",)
        self.samplers = tuple(self.cls.samplers(loaded.recipe))
        self.default_sampler = getattr(loaded.recipe, "sampler", None) if self.samplers else None
        self.default_steps = getattr(loaded.recipe, "sample_steps", None) if self.samplers else None
        self.likelihood = tuple(self.cls.likelihood)
        self.marker = self.cls.marker

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return self.loaded.modules

    @property
    def recipe(self) -> Any:
        return self.loaded.recipe

    @property
    def nfe(self) -> int:
        return self.loaded.nfe

    @property
    def num_params(self) -> int:
        return self.loaded.num_params

    @property
    def label(self) -> str:
        return self.cls.label(self.loaded.recipe, self.nfe)

    def _draw(self, n: int, seed: int, cond: Cond, sampler: str | None, steps: int | None,
              callback: Callback | None, batch_size: int, **options: Any) -> Tensor:
        """The family's own sampler (``callback`` is not called: the families expose no per-step state)."""
        if options:
            raise TypeError(f"a {self.family} run takes no sampling options {', '.join(options)}")
        self.loaded.recipe = self.cls.with_sampler(self.base_recipe, sampler, steps)
        x = self.loaded.sample(n, seed, labels_of(cond, n, self.num_classes), batch_size)
        return x.clamp(-1, 1) if self.domain == "images" else x

    def _nll(self, x: Tensor, seed: int, method: str, **options: Any) -> dict[str, Any]:
        return self.cls.nll(self.loaded.modules, self.loaded.recipe, x, seed=seed, method=method)


def open_family_run(path: Path, ema: bool = True, device: torch.device | str | None = None) -> FamilyRun:
    return FamilyRun(path, load_generator(path, ema=ema, device=device))


__all__ = ["FamilyRun", "open_family_run"]
