"""``difflab.load(run_dir)``: one entry point for every run folder, by its config.json "format" (and "family")."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import CheckpointError
from ..training.autoencoder import AUTOENCODER_FORMAT
from ..training.cascade import is_cascade
from ..training.checkpoint import CONFIG, read_json
from ..training.classifier import CLASSIFIER_FORMAT
from ..training.clip import CLIP_FORMAT
from ..training.diffusion import DiffusionFamily
from ..training.families import FAMILIES, FAMILY_RUN_FORMAT_1, engine_families
from ..training.run import RUN_FORMAT, RUN_FORMAT_1
from .auxiliary import open_autoencoder, open_cascade, open_classifier, open_clip
from .base import Run
from .diffusion import open_diffusion_run
from .family import open_family_run

Opener = Callable[[Path, bool, Any], Run]


def open_registered(path: Path, ema: bool, device: Any) -> Run:
    """A run in the one format: its "family" picks the registered family (the denoiser family or an engine one)."""
    family = read_json(path / CONFIG).get("family")
    if family not in FAMILIES:  # e.g. a family added in a later version: one line naming the folder
        raise CheckpointError(f"{path / CONFIG}: unknown family {family!r}; this version knows {', '.join(FAMILIES)}")
    if issubclass(FAMILIES[family], DiffusionFamily):
        return open_diffusion_run(path, ema, device)
    return open_family_run(path, ema, device)


#: Every run-folder format this version reads: the one format, the formats before it, the auxiliary kinds.
FORMATS: dict[str, Opener] = {RUN_FORMAT: open_registered, RUN_FORMAT_1: open_diffusion_run,
                              FAMILY_RUN_FORMAT_1: open_family_run, CLASSIFIER_FORMAT: open_classifier,
                              CLIP_FORMAT: open_clip, AUTOENCODER_FORMAT: open_autoencoder}


def load(run_dir: str | Path, ema: bool = True, device: torch.device | str | None = None) -> Run:
    """Open any difflab run folder (EMA weights by default) as a :class:`Run` with its declared capabilities;
    a one-line CheckpointError naming the folder when it is missing, unreadable or of an unknown format."""
    path = Path(run_dir)
    if not path.is_dir():
        raise CheckpointError(f"run folder {path} does not exist")
    if is_cascade(path):
        return open_cascade(path, ema, device)
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"{path} holds no {CONFIG}: not a difflab run folder")
    fmt = read_json(path / CONFIG).get("format")
    if fmt not in FORMATS:
        raise CheckpointError(f"{path / CONFIG}: unknown run format {fmt!r}; this version reads {', '.join(FORMATS)}")
    return FORMATS[fmt](path, ema, device)


def family_names() -> list[str]:
    """The registered families, for choices and help."""
    return list(FAMILIES)


def sampler_names() -> list[str]:
    """Every sampler some registered family accepts, in registry order (for choices; each run checks its own)."""
    return list(dict.fromkeys(n for cls in FAMILIES.values() for n in cls.samplers(None)))


__all__ = ["load", "FORMATS", "family_names", "sampler_names", "engine_families"]
