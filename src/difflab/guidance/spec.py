"""Guidance from a spec: the condition to sample towards and the guidance wrappers around a run's denoiser.

One :class:`GuidanceSpec` (a typed config with a dict/JSON round trip) says what ``difflab sample``'s --label,
--prompt, --guidance-scale, --guidance-interval, --classifier(-scale) and --clip(-scale) say; :func:`wrap` turns
it into the guided denoiser and a condition maker for any consumer (the command line, the page, library code).
Messages name the command-line spelling of each option, which the page's fields share.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import UserError
from ..utils.config import Config, require

CondFn = Callable[[int, torch.device], Any]


@dataclasses.dataclass(frozen=True)
class GuidanceSpec(Config):
    """What to guide towards and how: classifier-free (Ho & Salimans 2022), classifier (Dhariwal & Nichol 2021), CLIP (Nichol et al. 2022)."""

    label: int | None = None
    prompt: str | None = None
    guidance_scale: float = 0.0
    guidance_interval: tuple[float, float] | None = None
    classifier: str | None = None
    classifier_scale: float = 1.0
    clip: str | None = None
    clip_scale: float = 30.0

    def __post_init__(self) -> None:
        iv = self.guidance_interval
        if iv is not None:  # a JSON list -> the (lo, hi) pair
            require(isinstance(iv, (list, tuple)) and len(iv) == 2, f"--guidance-interval {iv!r}: needs LO HI")
            object.__setattr__(self, "guidance_interval", (float(iv[0]), float(iv[1])))
        super().__post_init__()

    def check(self) -> None:
        scales = (self.guidance_scale, self.classifier_scale, self.clip_scale)
        require(all(math.isfinite(w) and w >= 0 for w in scales),
                f"--guidance-scale, --classifier-scale and --clip-scale must be finite and >= 0, got {scales}")
        require(self.clip is None or self.prompt is not None, "--clip needs --prompt: the caption to guide towards")
        require(self.classifier is None or self.label is not None,
                "--classifier needs --label: the class to guide towards")
        iv = self.guidance_interval
        if iv is not None:
            require(bool(self.guidance_scale), "--guidance-interval needs --guidance-scale W > 0")
            require(0.0 <= iv[0] < iv[1], f"--guidance-interval {iv[0]:g} {iv[1]:g}: needs 0 <= LO < HI")

    @classmethod
    def from_options(cls, options: Any) -> "GuidanceSpec":
        """The spec of an object with the option attributes (an argparse Namespace); absent ones keep their defaults."""
        fields = {f.name: f.default for f in dataclasses.fields(cls)}
        values = {k: getattr(options, k, d) for k, d in fields.items()}
        for k in ("classifier", "clip"):
            values[k] = None if values[k] is None else str(values[k])
        return cls(**values)


def wrap(spec: GuidanceSpec, run: Any, model: Any = None, where: str | Path | None = None) -> tuple[Any, CondFn]:
    """(guided denoiser, (n, device) -> condition) of a loaded run (``run.model``, ``run.conditioning``, ``run.shape``).

    ``model`` replaces ``run.model`` as the inner denoiser; ``where`` names the run in messages.
    """
    model = run.model if model is None else model
    where = where if where is not None else getattr(run, "run_dir", "this run")
    conditioning = run.conditioning
    cond_fn = _condition(spec, conditioning, model, where)
    if spec.guidance_scale:
        from .cfg import ClassifierFreeGuidance

        model = ClassifierFreeGuidance(model, spec.guidance_scale, interval=spec.guidance_interval)
    if spec.classifier is not None:
        model, cond_fn = _with_classifier(spec, run, model, cond_fn)
    if spec.clip is not None:
        model = _with_clip(spec, run, model)
    return model, cond_fn


def _condition(spec: GuidanceSpec, conditioning: Any, model: Any, where: Any) -> CondFn:
    """The condition maker of the spec's label or prompt (the null condition when neither applies)."""
    from .base import num_classes_of

    text = conditioning.kind == "captions"
    k = num_classes_of(model)
    if spec.label is not None and spec.classifier is None and not 0 <= spec.label < max(k, 1):
        raise UserError(f"--label {spec.label}: the run in {where} "
                        + (f"has classes 0..{k - 1}" if k else "is not class-conditional"))
    if spec.prompt is not None and not text and spec.clip is None:
        raise UserError(f"--prompt: the run in {where} is not text-conditional (train with text_encoder in --config)")
    if spec.prompt is not None and spec.label is not None and text:
        raise UserError("give --label or --prompt, not both (this run is conditioned on text)")
    if spec.guidance_scale and spec.label is None and (spec.prompt is None or not text):
        raise UserError("--guidance-scale needs --label (class-conditional runs) or --prompt (text runs)")
    if spec.prompt is not None and text:
        prompt = spec.prompt
        return lambda n, device: conditioning.prompts([prompt] * n, device)
    if spec.label is not None and conditioning.kind == "labels":
        label = spec.label
        return lambda n, device: conditioning.labels(torch.full((n,), label), device)
    return conditioning.null  # unconditional (None for unconditional runs)


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _with_classifier(spec: GuidanceSpec, run: Any, model: Any, cond_fn: CondFn) -> tuple[Any, CondFn]:
    """Classifier guidance of spec.label with the noisy classifier folder spec.classifier."""
    from ..training.classifier import load_classifier
    from .classifier import ClassifierGuidance

    classifier, sched = load_classifier(spec.classifier, device=_device(model))
    k = classifier.config.num_classes
    if not 0 <= spec.label < k:
        raise UserError(f"--label {spec.label}: the classifier in {spec.classifier} has classes 0..{k - 1}")
    if tuple(run.shape)[0] != classifier.config.in_channels:
        raise UserError(f"--classifier {spec.classifier}: made for {classifier.config.in_channels}-channel images")
    label = spec.label
    guided = ClassifierGuidance(model, classifier, spec.classifier_scale, sched)
    return guided, lambda n, device: {**(cond_fn(n, device) or {}),
                                      "y": torch.full((n,), label, dtype=torch.long, device=device)}


def _with_clip(spec: GuidanceSpec, run: Any, model: Any) -> Any:
    """CLIP guidance towards spec.prompt with the noisy CLIP folder spec.clip."""
    from ..training.clip import load_clip
    from .clip import ClipGuidance

    clip, sched = load_clip(spec.clip, device=_device(model))
    channels = clip.image_tower.config.in_channels
    if tuple(run.shape)[0] != channels:
        raise UserError(f"--clip {spec.clip}: made for {channels}-channel images")
    return ClipGuidance(model, clip, spec.prompt, spec.clip_scale, sched)


def guided(options: Any, run: Any, where: str | Path | None = None) -> tuple[Any, CondFn]:
    """:func:`wrap` of the spec read from option attributes (an argparse Namespace or the page's request)."""
    return wrap(GuidanceSpec.from_options(options), run, where=where)


__all__ = ["GuidanceSpec", "wrap", "guided", "CondFn"]
