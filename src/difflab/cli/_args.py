"""Argument validators shared by the commands (argparse ``type=`` functions) and the output-overwrite policy.

A value that fails here is refused by argparse as one line naming the option, before any work starts.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ..errors import UserError

#: Seeds are the non-negative range of a 64-bit signed integer (what torch.Generator.manual_seed accepts).
MAX_SEED = 2**63 - 1


def seed(text: str) -> int:
    """A seed in [0, 2**63 - 1]."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text[:40]!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed must lie in [0, 2**63 - 1], got {text[:40]}")
    return value


def finite_float(text: str) -> float:
    """A finite float (no nan, no inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text[:40]}")
    return value


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text[:40]}")
    return value


def text_encoder(text: str) -> str:
    """A text encoder name: small, minilm, or clip:PATH with PATH made absolute (the run stores where it was)."""
    from ..text.encoders import CLIP_PREFIX, TextEncoderError, check_encoder_name

    try:
        check_encoder_name(text)
    except TextEncoderError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if text.startswith(CLIP_PREFIX):
        return CLIP_PREFIX + str(Path(text[len(CLIP_PREFIX):]).expanduser().resolve())
    return text


def device(text: str) -> str:
    """A torch device string that exists here: cpu, cuda[:i] with CUDA available and i in range, mps if available."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text[:40]!r} (cpu, cuda, cuda:1, mps ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: this torch build or machine has no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: there are {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"device {text!r} is not supported (cpu, cuda, mps)")
    return text


def add_grid(p: argparse.ArgumentParser) -> None:
    """``--grid NAME``: the noise levels a diffusion sampler steps through (docs/samplers.md, "Step grids")."""
    from ..samplers.grids import GRIDS

    p.add_argument("--grid", choices=list(GRIDS),
                   help="step grid of a diffusion run's sampler instead of the sampler's own (and of a grid stored "
                        "by 'difflab tune-steps'); docs/samplers.md")


def add_overwrite(p: argparse.ArgumentParser) -> None:
    """The ``--overwrite`` flag of commands that write a file or folder given by ``--out``."""
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (refused otherwise)")


def refuse_existing(path: Path, overwrite: bool, option: str = "--out") -> None:
    """UserError if ``path`` exists and ``overwrite`` is not set (the policy of every command that writes outputs)."""
    if path.exists() and not overwrite:
        kind = "folder" if path.is_dir() else "file"
        raise UserError(f"{option} {path}: the {kind} exists; pass --overwrite to replace it or choose another path")


__all__ = ["MAX_SEED", "seed", "finite_float", "positive_float", "device", "add_overwrite", "refuse_existing"]


def add_weights_options(p: argparse.ArgumentParser) -> None:
    """--inception-weights and --dinov2-weights: local files of the pretrained feature networks (never downloaded)."""
    p.add_argument("--inception-weights", type=Path, metavar="PATH",
                   help="local file of the 2015-12-05 Inception weights (default $DIFFLAB_INCEPTION_WEIGHTS)")
    p.add_argument("--dinov2-weights", type=Path, metavar="PATH",
                   help="local file of DINOv2 ViT weights, official .pth or Dinov2Model .safetensors "
                        "(default $DIFFLAB_DINOV2_WEIGHTS)")


def weights_for(features: str | None, args: Any) -> Path | None:
    """The weights option that belongs to --features (None: the network's environment variable decides)."""
    return getattr(args, f"{features}_weights", None) if features in ("inception", "dinov2") else None
