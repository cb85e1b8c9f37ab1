"""A run folder opened by :func:`difflab.load`: what it is (family, config, step) and what it can do."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import Tensor

from ..errors import UserError

#: Where a run's samples live: images in [-1, 1], points, or latents that the run decodes to images.
Domain = Literal["images", "points", "latents"]
#: What a run is conditioned on: nothing, class labels, text, or an image (low-res, masked or grayscale).
ConditioningKind = Literal["none", "labels", "text", "image"]
#: ``sample``'s ``cond``: None (the classes in turn for a class-conditional run), one label, labels [n], or a
#: function (n, device) -> the condition of n samples (diffusion runs).
Cond = Any
Callback = Callable[[dict[str, Any]], None]


class Run:
    """A loaded run folder with its declared capabilities; subclasses fill them in and implement ``_draw``."""

    path: Path
    family: str
    config: dict[str, Any]
    step: int
    kind: str = "run"  # "run" for a generative model; auxiliary folders name themselves (classifier, clip, ...)
    can_sample: bool = True
    domain: Domain = "images"
    conditioning_kind: ConditioningKind = "none"
    num_classes: int = 0
    tasks: tuple[str, ...] = ()
    samplers: tuple[str, ...] = ()  # empty: the run has its own sampler only
    default_sampler: str | None = None
    default_steps: int | None = None
    likelihood: tuple[str, ...] = ()  # methods of ``nll``; empty: the family has no likelihood here
    marker: str = "o"
    last_nfe: int | None = None
    last_tuned: bool = False  # whether the last draw used a stored (tuned or distilled) grid

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample as the model draws it (the latent's for a latent run)."""
        return tuple(self.config["shape"])

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape of one sample in data space (the decoded image for a latent run)."""
        return self.shape

    @property
    def has_nll(self) -> bool:
        return bool(self.likelihood)

    @property
    def nfe(self) -> int:
        """Network calls per sample of the last ``sample`` (or of the default sampler before any)."""
        return int(self.last_nfe or 0)

    @property
    def num_params(self) -> int:
        """Parameters of the networks a sample uses."""
        return 0

    @property
    def label(self) -> str:
        """The run's name in a report table."""
        return self.family

    def describe(self) -> str:
        return f"{self.path} is a {self.family} {self.kind}" if self.kind != "run" else f"{self.path} is a {self.family} run"

    # ---- validation, shared by every consumer (one-line UserErrors naming the option) ----
    def check_can_sample(self) -> None:
        if not self.can_sample:
            raise UserError(f"{self.describe()}; it does not sample (sample from a model run)")

    def check_sampler(self, sampler: str | None, steps: int | None = None) -> None:
        """Refuse a sampler this run does not accept (one of another forward process, or any for its own sampler)."""
        self.check_can_sample()
        if not self.samplers:
            for opt, value in (("sampler", sampler), ("steps", steps)):
                if value is not None:
                    raise UserError(f"--{opt} {value}: a {self.family} run has its own sampler ({self.nfe} network "
                                    f"call(s) per sample); drop --{opt}")
            return
        if sampler is not None and sampler not in self.samplers:
            raise UserError(f"--sampler {sampler}: a {self.family} run samples with {', '.join(self.samplers)}")
        if steps is not None and steps < 1:
            raise UserError(f"--steps must be at least 1, got {steps}")

    def check_grid(self, grid: str | None) -> None:
        """Refuse a named step grid (``--grid``) on a run whose sampler does not step through noise levels."""
        if grid is not None:
            raise UserError(f"--grid {grid}: {self.describe()}; only diffusion runs on an alpha/sigma schedule "
                            "sample on a chosen grid")

    def check_label(self, label: int | None) -> None:
        """Refuse a class label on a run that is not class-conditional, or outside its classes."""
        if label is None:
            return
        if not 0 <= label < max(self.num_classes, 1):
            raise UserError(f"--label {label}: the run in {self.path} "
                            + (f"has classes 0..{self.num_classes - 1}" if self.num_classes
                               else "is not class-conditional"))

    def check_nll(self, method: str | None = None) -> None:
        """Refuse ``nll`` on a family without a likelihood, or a method it does not have."""
        if not self.likelihood:
            raise UserError(f"--nll: a {self.family} run has no likelihood (its family declares none)")
        if method is not None and method not in self.likelihood:
            raise UserError(f"--nll-method {method}: a {self.family} run has {' and '.join(self.likelihood)} only")

    # ---- what it does ----
    def sample(self, n: int, seed: int = 0, cond: Cond = None, sampler: str | None = None, steps: int | None = None,
               callback: Callback | None = None, batch_size: int = 500, **options: Any) -> Tensor:
        """n samples in data space on the CPU (images in [-1, 1], points, decoded latents), seeded."""
        if n < 1 or batch_size < 1:
            raise UserError(f"n and batch_size must be at least 1, got {n} and {batch_size}")
        self.check_sampler(sampler, steps)
        return self._draw(n, seed, cond, sampler, steps, callback, batch_size, **options)

    def timed_sample(self, n: int, seed: int = 0, **kwargs: Any) -> tuple[Tensor, float]:
        """(``sample(n, seed, **kwargs)``, wall seconds)."""
        t0 = time.perf_counter()
        x = self.sample(n, seed, **kwargs)
        return x, time.perf_counter() - t0

    def nll(self, x: Tensor, seed: int = 0, method: str | None = None, **options: Any) -> dict[str, Any]:
        """-log p(x) of data x: {"method", "nll", "ci95", "unit", "terms"}; a UserError where the family has none."""
        self.check_nll(method)
        return self._nll(x, seed, method or self.likelihood[0], **options)

    def _draw(self, n: int, seed: int, cond: Cond, sampler: str | None, steps: int | None,
              callback: Callback | None, batch_size: int, **options: Any) -> Tensor:
        raise NotImplementedError

    def _nll(self, x: Tensor, seed: int, method: str, **options: Any) -> dict[str, Any]:
        raise NotImplementedError


def labels_of(cond: Cond, n: int, num_classes: int) -> Tensor | None:
    """Class labels [n] of ``cond`` (None, one label or labels [n]); the classes in turn when None and conditional."""
    if cond is None:
        return torch.arange(n) % num_classes if num_classes else None
    if isinstance(cond, int):
        return torch.full((n,), cond, dtype=torch.long)
    if isinstance(cond, Tensor) and cond.shape == (n,):
        return cond.long()
    raise UserError(f"cond: expected None, a class label or labels of shape ({n},), got {type(cond).__name__}")


__all__ = ["Run", "Domain", "ConditioningKind", "Cond", "labels_of"]
