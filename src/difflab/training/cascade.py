"""Cascaded diffusion: a base model followed by super-resolution stages, each conditioned on the previous stage's
samples (Ho et al. 2022, sec. 3), stored as one folder.

A cascade folder holds ``cascade.json`` and one sub-folder per stage, each a normal run folder::

    runs/cascade/cascade.json   {"format": "difflab-cascade-1", "stages": ["base", "sr1", ...], "aug_levels": [0.2, ...]}
    runs/cascade/base/          an unconditional, class- or text-conditional run (the smallest images)
    runs/cascade/sr1/           a --task superres run whose low-res input is the base's size, ...

``aug_levels`` holds one noise-conditioning augmentation level per SR stage (0 for stages trained without it).
:func:`assemble` makes such a folder from existing runs (``difflab cascade``), :func:`load_cascade` reads it and
:meth:`Cascade.sample` draws from it (``difflab sample --run runs/cascade``).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from .. import samplers
from ..errors import CheckpointError, UserError
from ..tasks.superres import superres

CASCADE_FILE = "cascade.json"
CASCADE_FORMAT = "difflab-cascade-1"
DEFAULT_LEVEL = 0.2  # Ho et al. 2022's low fixed level at sampling (their 0.1-0.3 range)


def is_cascade(path: str | Path) -> bool:
    """True if ``path`` is a folder holding a cascade.json."""
    return (Path(path) / CASCADE_FILE).is_file()


def _stage_config(folder: Path, where: str) -> dict[str, Any]:
    """A stage's config.json (a diffusion run), or a one-line CheckpointError naming ``where``."""
    from .checkpoint import read_folder_config
    from .run import RUN_FORMATS as RUN_FORMAT

    if not folder.is_dir():
        raise CheckpointError(f"{where}: run folder {folder} does not exist")
    try:
        return read_folder_config(folder, RUN_FORMAT, "diffusion run")
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from None


def check_chain(configs: Sequence[dict[str, Any]], names: Sequence[str], levels: Sequence[float]) -> None:
    """A base image run, then SR runs each taking the previous stage's size and channels; one level in [0, 1] per SR
    stage, nonzero only for stages trained with noise-conditioning augmentation.  CheckpointError otherwise."""
    from .conditioning import conditioning_of_run

    if len(configs) < 2:
        raise CheckpointError("a cascade needs a base run and at least one super-resolution stage")
    if len(levels) != len(configs) - 1:
        raise CheckpointError(f"a cascade of {len(configs) - 1} super-resolution stage(s) needs as many augmentation "
                              f"levels, got {len(levels)}")
    base = configs[0]
    shape = list(base.get("shape", []))
    if len(shape) != 3:
        raise CheckpointError(f"base {names[0]}: models points of shape {shape}, not images")
    kind = conditioning_of_run(base).kind
    if kind not in ("none", "labels", "captions"):
        raise CheckpointError(f"base {names[0]}: a cascade's base must be unconditional, class- or text-conditional, "
                              f"not a {kind} run")
    for rc, name, level in zip(configs[1:], names[1:], levels):
        cond = conditioning_of_run(rc)
        if cond.kind != "superres":
            raise CheckpointError(f"stage {name}: not a super-resolution run (train it with --task superres)")
        c, h, w = (int(v) for v in rc["shape"])
        if [c, h // cond.scale, w // cond.scale] != shape:
            raise CheckpointError(f"stage {name}: takes {c}x{h // cond.scale}x{w // cond.scale} (CxHxW) inputs but the "
                                  f"stage before it makes {'x'.join(map(str, shape))}")
        if not 0.0 <= float(level) <= 1.0:
            raise CheckpointError(f"stage {name}: augmentation level {level} is outside [0, 1]")
        if float(level) and not cond.augment:
            raise CheckpointError(f"stage {name}: augmentation level {level} but the run was trained without "
                                  f"--noise-aug (use 0)")
        shape = [c, h, w]


@dataclass
class Cascade:
    """A loaded cascade: the base run, the SR stage runs in order and their augmentation levels."""

    root: Path
    base: Any  # LoadedRun
    stages: list[Any] = field(default_factory=list)  # LoadedRun of each SR stage
    levels: list[float] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        """(C, H, W) of the final stage's samples."""
        return self.stages[-1].shape

    def sizes(self) -> list[tuple[int, ...]]:
        """(C, H, W) after each stage, base first."""
        return [self.base.shape, *(s.shape for s in self.stages)]

    def sample(self, n: int, *, sampler: str = "ddim", steps: int = 50, generator: torch.Generator | None = None,
               levels: Sequence[float] | None = None, label: int | None = None, clip: bool = True,
               intermediates: bool = False, prompt: str | None = None, guidance_scale: float = 0.0,
               threshold: float | None = None, **options: Any) -> Tensor | list[Tensor]:
        """n samples of the final size: the base's samples, then each SR stage conditioned on the previous output
        augmented to its level (Ho et al. 2022, Alg. 1-2).  ``levels`` overrides the folder's; ``label`` is the
        class of a class-conditional base, ``prompt`` the caption of a text-conditional base and SR stages, with
        classifier-free guidance at ``guidance_scale``; ``threshold`` P wraps every stage's (guided) denoiser in dynamic
        thresholding at percentile P instead of clamping (Imagen, Saharia et al. 2022, sec. 2.3); ``intermediates``
        returns every stage's output, base first."""
        from ..guidance import ClassifierFreeGuidance
        from ..models.denoiser import Clamped, Thresholded

        levels = list(self.levels if levels is None else levels)
        if len(levels) != len(self.stages):
            raise ValueError(f"levels: one per super-resolution stage ({len(self.stages)}), got {len(levels)}")
        if threshold is not None:
            if not 0.0 < float(threshold) <= 1.0:
                raise ValueError(f"threshold percentile must lie in (0, 1], got {threshold}")
            wrap = lambda m: Thresholded(m, float(threshold))  # noqa: E731
        else:
            wrap = Clamped if clip else (lambda m: m)
        base = self.base
        device = next(base.model.parameters()).device
        cond_b = base.conditioning
        if label is not None:
            cond = cond_b.labels(torch.full((n,), int(label)), device)
        elif prompt is not None:
            cond = cond_b.prompts([prompt] * n, device)
        else:
            cond = cond_b.preview(n, device) if cond_b.kind == "labels" else cond_b.null(n, device)
        model = ClassifierFreeGuidance(base.model, guidance_scale) if guidance_scale else base.model
        x_T = base.model.schedule.sample_prior((n, *base.shape), generator=generator, device=device)
        with torch.no_grad():
            x = samplers.sample(wrap(model), x_T, sampler=sampler, steps=steps, cond=cond, generator=generator,
                                **options)
        outs = [x]
        for stage, level in zip(self.stages, levels):
            x = x.clamp(-1, 1).to(next(stage.model.parameters()).device)
            text = hasattr(stage.conditioning, "text")  # Imagen's text-conditional SR: the prompt and CFG again
            sr = ClassifierFreeGuidance(stage.model, guidance_scale) if text and guidance_scale else stage.model
            words = {"prompts": [prompt] * n} if text and prompt is not None else {}
            with torch.no_grad():
                x = superres(wrap(sr), x, stage.conditioning, sampler=sampler, steps=steps,
                             generator=generator, level=float(level), **words, **options)
            outs.append(x)
        return outs if intermediates else x


def _read_manifest(root: Path) -> dict[str, Any]:
    from .checkpoint import read_json

    m = read_json(root / CASCADE_FILE)
    if m.get("format") != CASCADE_FORMAT:
        raise CheckpointError(f"{root / CASCADE_FILE} is not a difflab cascade (format {m.get('format')!r}, "
                              f"expected {CASCADE_FORMAT!r})")
    stages, levels = m.get("stages"), m.get("aug_levels")
    if not isinstance(stages, list) or not all(isinstance(s, str) and s for s in stages):
        raise CheckpointError(f"{root / CASCADE_FILE}: 'stages' must be a list of sub-folder names")
    if not isinstance(levels, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in levels):
        raise CheckpointError(f"{root / CASCADE_FILE}: 'aug_levels' must be a list of numbers")
    for s in stages:
        if Path(s).name != s or s in (".", ".."):
            raise CheckpointError(f"{root / CASCADE_FILE}: stage {s!r} must be a sub-folder name of {root}")
    return m


def load_cascade(path: str | Path, ema: bool = True, device: torch.device | str | None = None) -> Cascade:
    """Read a cascade folder (cascade.json + stage run folders); a one-line CheckpointError for a bad folder."""
    from .run import load_run

    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"cascade folder {root} does not exist")
    if not is_cascade(root):
        raise CheckpointError(f"{root} holds no {CASCADE_FILE}: not a cascade (make one with difflab cascade)")
    m = _read_manifest(root)
    names = [f"{root / s}" for s in m["stages"]]
    configs = [_stage_config(root / s, f"{root / CASCADE_FILE} stage {s!r}") for s in m["stages"]]
    check_chain(configs, names, [float(v) for v in m["aug_levels"]])
    runs = []
    for s in m["stages"]:
        try:
            runs.append(load_run(root / s, ema=ema, device=device))
        except CheckpointError as e:
            raise CheckpointError(f"{root / CASCADE_FILE} stage {s!r}: {e}") from None
    return Cascade(root, runs[0], runs[1:], [float(v) for v in m["aug_levels"]])


def assemble(base: str | Path, stages: Sequence[str | Path], out: str | Path,
             levels: Sequence[float] | None = None) -> Path:
    """Copy a base run and SR stage runs into a new cascade folder ``out`` (base/, sr1/, sr2/, ... and cascade.json).

    ``levels``: one augmentation level per stage (default 0.2 for stages trained with --noise-aug, else 0).  The
    chain is checked first (:func:`check_chain`); ``out`` must not exist, and is written to a temporary folder
    renamed into place, so a failure leaves nothing behind.
    """
    from .checkpoint import atomic_write
    from .conditioning import conditioning_of_run

    out = Path(out)
    if out.exists():
        raise UserError(f"--out {out} already exists; give a new folder for the cascade")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: folder {out.parent} does not exist")
    folders = [Path(base), *(Path(s) for s in stages)]
    configs = [_stage_config(f, "--base" if i == 0 else f"--stage {f}") for i, f in enumerate(folders)]
    for f in folders:
        if not (f / "checkpoint.safetensors").is_file():
            raise CheckpointError(f"{f}: no checkpoint.safetensors (train the run first)")
    if levels is None:
        levels = [DEFAULT_LEVEL if getattr(conditioning_of_run(rc), "augment", False) else 0.0 for rc in configs[1:]]
    levels = [float(v) for v in levels]
    check_chain(configs, [str(f) for f in folders], levels)
    names = ["base", *(f"sr{i + 1}" for i in range(len(stages)))]
    tmp = out.parent / f".{out.name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        for f, name in zip(folders, names):
            shutil.copytree(f, tmp / name, ignore=shutil.ignore_patterns(".*"))
        manifest = {"format": CASCADE_FORMAT, "stages": names, "aug_levels": levels,
                    "sources": [str(f) for f in folders],
                    "sizes": [list(rc["shape"]) for rc in configs]}
        atomic_write(tmp / CASCADE_FILE, lambda p: p.write_text(json.dumps(manifest, indent=1) + "\n"))
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = ["Cascade", "assemble", "load_cascade", "is_cascade", "check_chain", "CASCADE_FILE", "CASCADE_FORMAT"]
