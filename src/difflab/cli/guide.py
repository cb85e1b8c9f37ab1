"""Conditioning and guidance options of ``difflab sample``: --label / --prompt, --guidance-scale, --classifier
(read into a :class:`difflab.guidance.spec.GuidanceSpec`)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

import torch

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
    from ..guidance.spec import guided as guided_from_options

    return guided_from_options(args, loaded, where=getattr(args, "run", None))


__all__ = ["add_arguments", "guided"]
