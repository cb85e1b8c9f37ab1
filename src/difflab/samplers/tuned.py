"""A run's stored step grids (RUN/grids.json): tuned by ``difflab tune-steps`` or written for a distilled student.

Entries are keyed ``sampler:nfe:denoised`` where ``denoised`` is how sampling treats the x_0 prediction ('clip',
'none' or 'threshold:P'); each holds at least ``sigmas``, a decreasing list of noise levels.  :func:`run_grid` is
what every consumer (sample, evaluate, report, the page, library code) asks for "the run's grid for (sampler, nfe)".
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from ..errors import UserError

GRIDS_FILE = "grids.json"


def key(sampler: str, nfe: int, denoised: str) -> str:
    """Entry name in grids.json: sampler, budget and the x_0 treatment (clip, none, threshold:P)."""
    return f"{sampler}:{nfe}:{denoised}"


def denoised_mode(image: bool, no_clip: bool = False, threshold: float | None = None) -> str:
    """How sampling treats the x_0 prediction: 'clip', 'none' or 'threshold:P' (points are never clipped)."""
    if not image:
        return "none"
    if threshold is not None:
        return f"threshold:{threshold:g}"
    return "none" if no_clip else "clip"


def wrap(model: Any, mode: str) -> Any:
    """The denoiser wrapper of a mode from :func:`denoised_mode` (Clamped, Thresholded or the model itself)."""
    from ..models.denoiser import Clamped, Thresholded

    if mode == "clip":
        return Clamped(model)
    if mode.startswith("threshold:"):
        return Thresholded(model, float(mode.split(":", 1)[1]))
    return model


def read_grids(run_dir: str | Path) -> dict[str, Any]:
    """The stored grids of a run folder ({} if it has none; a broken file is a UserError naming it)."""
    path = Path(run_dir) / GRIDS_FILE
    if not path.exists():
        return {}
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"grids file {path} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"grids file {path} must hold a JSON object")
    return d


def run_grid(run_dir: str | Path | None, sampler: str, nfe: int, mode: str = "clip") -> Tensor | None:
    """The run's stored grid for (sampler, nfe, mode) as a float64 tensor, or None (no run folder, file or entry)."""
    if run_dir is None:
        return None
    entry = read_grids(run_dir).get(key(sampler, nfe, mode))
    if entry is None:
        return None
    try:
        sigmas = torch.tensor([float(v) for v in entry["sigmas"]], dtype=torch.float64)
    except (KeyError, TypeError, ValueError):
        sigmas = torch.empty(0)
    if sigmas.numel() < 2 or not bool((sigmas[1:] < sigmas[:-1]).all()) or float(sigmas[-1]) < 0:
        raise UserError(f"{Path(run_dir) / GRIDS_FILE}: entry {key(sampler, nfe, mode)} has no valid 'sigmas' "
                        "(a decreasing list of at least 2 levels >= 0)")
    return sigmas


def entry(sampler: str, nfe: int, sigmas: Tensor | list[float], **extra: Any) -> dict[str, Any]:
    """A grids.json entry: the sampler, its budget, the levels as plain floats, and any extra fields."""
    return {"sampler": sampler, "nfe": int(nfe), "sigmas": [float(v) for v in sigmas], **extra}


def merged(run_dir: str | Path, entries: Mapping[str, Any]) -> dict[str, Any]:
    """The run's grids with ``entries`` (key -> entry) added: the object to write back to RUN/grids.json."""
    return {**read_grids(run_dir), **entries}


__all__ = ["GRIDS_FILE", "key", "denoised_mode", "wrap", "read_grids", "run_grid", "entry", "merged"]
