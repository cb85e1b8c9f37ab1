"""Conditioning and guidance options of ``difflab sample``: --label / --prompt, --guidance-scale, --classifier."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import UserError
from . import _args

CondFn = Callable[[int, torch.device], Any]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add --prompt, --guidance-scale, --classifier and --classifier-scale to the sample parser."""
    p.add_argument("--prompt", help="text to generate (runs trained with a text_encoder), e.g. 'a thick seven'")
    p.add_argument("--guidance-scale", type=_args.finite_float, default=0.0, metavar="W",
                   help="classifier-free guidance weight w: (1 + w) eps(x, c) - w eps(x) (default 0 = off)")
    p.add_argument("--guidance-interval", type=_args.finite_float, nargs=2, metavar=("LO", "HI"),
                   help="apply classifier-free guidance only where LO < sigma <= HI (VE noise level; Kynkaanniemi "
                        "et al. 2024; e.g. 0.28 5.42), the conditional model elsewhere")
    p.add_argument("--classifier", type=Path, metavar="DIR",
                   help="noisy classifier folder (difflab train-classifier) for classifier guidance of --label")
    p.add_argument("--classifier-scale", type=_args.finite_float, default=1.0, metavar="S",
                   help="classifier guidance scale s (default 1)")
    p.add_argument("--clip", type=Path, metavar="DIR",
                   help="noisy CLIP folder (difflab train-clip) for CLIP guidance towards --prompt")
    p.add_argument("--clip-scale", type=_args.finite_float, default=30.0, metavar="S", help="CLIP guidance scale (default 30)")


def guided(args: argparse.Namespace, loaded: Any) -> tuple[Any, CondFn]:
    """The (possibly guided) denoiser of a loaded run and a function (n, device) -> condition for n samples."""
    from ..guidance import ClassifierFreeGuidance, ClassifierGuidance, ClipGuidance
    from ..training.classifier import load_classifier
    from ..training.clip import load_clip

    model, conditioning = loaded.model, loaded.conditioning
    text = conditioning.kind == "captions"
    if min(args.guidance_scale, args.classifier_scale, args.clip_scale) < 0:
        raise UserError("--guidance-scale, --classifier-scale and --clip-scale must be >= 0")
    if args.clip is not None and args.prompt is None:
        raise UserError("--clip needs --prompt: the caption to guide towards")
    if args.prompt is not None and not text and args.clip is None:
        raise UserError(f"--prompt: the run in {args.run} is not text-conditional (train with text_encoder in --config)")
    if args.prompt is not None and args.label is not None and text:
        raise UserError("give --label or --prompt, not both (this run is conditioned on text)")
    cond_fn: CondFn = conditioning.null  # unconditional (None for unconditional runs)
    if args.prompt is not None and text:
        prompt = args.prompt
        cond_fn = lambda n, device: conditioning.prompts([prompt] * n, device)  # noqa: E731
    elif args.label is not None and conditioning.kind == "labels":
        label = args.label
        cond_fn = lambda n, device: conditioning.labels(torch.full((n,), label), device)  # noqa: E731
    if args.guidance_scale:
        if args.label is None and (args.prompt is None or not text):
            raise UserError("--guidance-scale needs --label (class-conditional runs) or --prompt (text runs)")
        interval = getattr(args, "guidance_interval", None)
        if interval is not None and not 0.0 <= interval[0] < interval[1]:
            raise UserError(f"--guidance-interval {interval[0]:g} {interval[1]:g}: needs 0 <= LO < HI")
        model = ClassifierFreeGuidance(model, args.guidance_scale, interval=interval)
    elif getattr(args, "guidance_interval", None) is not None:
        raise UserError("--guidance-interval needs --guidance-scale W > 0")
    if args.classifier is not None:
        if args.label is None:
            raise UserError("--classifier needs --label: the class to guide towards")
        classifier, sched = load_classifier(args.classifier, device=next(model.parameters()).device)
        k = classifier.config.num_classes
        if not 0 <= args.label < k:
            raise UserError(f"--label {args.label}: the classifier in {args.classifier} has classes 0..{k - 1}")
        if tuple(loaded.shape)[0] != classifier.config.in_channels:
            raise UserError(f"--classifier {args.classifier}: made for {classifier.config.in_channels}-channel images")
        model = ClassifierGuidance(model, classifier, args.classifier_scale, sched)
        label = args.label
        inner = cond_fn
        cond_fn = lambda n, device: {**(inner(n, device) or {}),  # noqa: E731
                                     "y": torch.full((n,), label, dtype=torch.long, device=device)}
    if args.clip is not None:
        clip, sched = load_clip(args.clip, device=next(model.parameters()).device)
        if tuple(loaded.shape)[0] != clip.image_tower.config.in_channels:
            raise UserError(f"--clip {args.clip}: made for {clip.image_tower.config.in_channels}-channel images")
        model = ClipGuidance(model, clip, args.prompt, args.clip_scale, sched)
    return model, cond_fn


__all__ = ["add_arguments", "guided"]
