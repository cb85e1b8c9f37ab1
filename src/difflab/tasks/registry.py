"""The task registry: every image-to-image task by name with the conditioning it runs on, its options and how it runs.

``difflab edit``, the page and :class:`difflab.runs.Run` (its ``tasks``) read their choices, help and validation
from here, so adding a task is one entry (docs/tasks.md).  A task runs on a pixel run whose conditioning kind
(``Conditioning.kind``: none, labels, captions, inpaint, superres, colorize) is in ``runs_on``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from torch import Tensor

from ..errors import UserError

#: Largest number of pixels a task may add to a side (uncrop) or a strip may reach (panorama).
MAX_SIDE = 4096


@dataclass(frozen=True)
class Option:
    """A task option: ``--name`` on the command line, ``name`` in a page request; numbers bounded to [lo, hi]."""

    name: str
    type: type = float
    default: Any = None
    help: str = ""
    lo: float = -math.inf
    hi: float = math.inf
    required: bool = False

    def check(self, value: Any) -> Any:
        """The value (the default when None), or a UserError naming the option and its range."""
        if value is None:
            if self.required:
                raise UserError(f"--{self.flag} is required")
            return self.default
        ok = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
        ok = ok and not isinstance(value, bool)
        if not ok or (self.type is int and value != int(value)):
            raise UserError(f"--{self.flag} must be {'an integer' if self.type is int else 'a finite number'}, "
                            f"got {str(value)[:40]!r}")
        if not self.lo <= value <= self.hi:
            raise UserError(f"--{self.flag} must lie in [{self.lo:g}, {self.hi:g}], got {value!r}")
        return self.type(value)

    @property
    def flag(self) -> str:
        return self.name.replace("_", "-")


@dataclass(frozen=True)
class Job:
    """What a task runs with: the (clamped) denoiser, one input [1, C, H, W], its mask, the run's conditioning, the
    prompt's condition (text runs), the option values and the sampler options (sampler, steps, generator)."""

    model: Any
    image: Tensor
    mask: Tensor | None
    conditioning: Any
    cond: Any
    values: dict[str, Any]
    common: dict[str, Any]


@dataclass(frozen=True)
class Task:
    """One image-to-image task (docs/tasks.md)."""

    name: str
    help: str
    runs_on: tuple[str, ...]
    run: Callable[[Job], Tensor]
    options: tuple[Option, ...] = ()
    mask: Literal["required", "optional", "none"] = "none"
    prompt: bool = False  # takes --prompt / --guidance-scale / --negative-prompt on a text run
    gray_input: bool = False  # reads its input as grayscale whatever the run's channels
    page: bool = False  # offered on the page of ``difflab serve``
    extra: dict[str, Any] = field(default_factory=dict)

    def supports(self, kind: str) -> bool:
        return kind in self.runs_on

    def values(self, given: Callable[[str], Any]) -> dict[str, Any]:
        """Every option checked: ``given(name)`` is the value asked for (None: the default)."""
        return {o.name: o.check(given(o.name)) for o in self.options}

    def input_size(self, shape: tuple[int, ...], conditioning: Any) -> tuple[int, int]:
        """(height, width) of an input for a run making ``shape`` images (a super-resolution run takes smaller ones)."""
        scale = int(getattr(conditioning, "scale", 1)) if self.name == "superres" else 1
        return shape[-2] // scale, shape[-1] // scale


def _repaint(jump: int, resample: int) -> tuple[Option, Option]:
    return (Option("jump", int, jump, f"RePaint jump length j (default {jump})", 1, 1000),
            Option("resample", int, resample, f"RePaint resamples r per block (default {resample}" + (
                "; 1 is plain replacement, faster but biased)" if resample > 1 else ": plain replacement)"), 1, 20))


def _inpaint(job: Job) -> Tensor:
    from .inpaint import inpaint, inpaint_conditioned

    if getattr(job.conditioning, "kind", None) == "inpaint":  # a mask-conditioned run (Palette)
        return inpaint_conditioned(job.model, job.image, job.mask, job.conditioning, **job.common)
    return inpaint(job.model, job.image, job.mask, cond=job.cond, **job.values, **job.common)


def _sdedit(job: Job) -> Tensor:
    from .sdedit import sdedit

    return sdedit(job.model, job.image, job.values["strength"], mask=job.mask, cond=job.cond, **job.common)


def _uncrop(job: Job) -> Tensor:
    from .uncrop import uncrop

    return uncrop(job.model, job.image, **job.values, **job.common)


def _panorama(job: Job) -> Tensor:
    from .uncrop import panorama

    v = dict(job.values)
    return panorama(job.model, job.image, v.pop("width"), **v, **job.common)


def _superres(job: Job) -> Tensor:
    from .superres import superres

    return superres(job.model, job.image, job.conditioning, level=job.values["aug_level"],
                    prompts=job.values.get("prompts"), **job.common)


def _colorize(job: Job) -> Tensor:
    from .superres import colorize

    return colorize(job.model, job.image, job.conditioning, **job.common)


def _registry() -> dict[str, Task]:
    from .inpaint import REPAINT

    unconditional = ("none",)
    sides = tuple(Option(s, int, 0, f"pixels to add on the {s}", 0, MAX_SIDE) for s in ("left", "right", "top", "bottom"))
    tasks = [
        Task("inpaint", "fill the black part of --mask (RePaint; a --task inpaint run: its mask conditioning)",
             (*unconditional, "captions", "inpaint"), _inpaint, _repaint(*REPAINT), mask="required", prompt=True,
             page=True),
        Task("sdedit", "noise the input to --strength and denoise it (SDEdit)", (*unconditional, "captions"), _sdedit,
             (Option("strength", float, 0.5, "t0 as a fraction of the schedule (0 = the input, 1 = ignore it; "
                     "default 0.5)", 0.0, 1.0),), mask="optional", prompt=True, page=True),
        Task("uncrop", "extend by --left/--right/--top/--bottom pixels", unconditional, _uncrop,
             (*sides, *_repaint(10, 1))),
        Task("panorama", "grow a strip --width pixels wide", unconditional, _panorama,
             (Option("width", int, None, "width of the strip in pixels", 1, MAX_SIDE, required=True),
              *_repaint(10, 1))),
        Task("superres", "upsample with a --task superres run (SR3)", ("superres",), _superres,
             (Option("aug_level", float, None, "noise-conditioning augmentation level of a --noise-aug run "
                     "(default 0.2)", 0.0, 1.0),), page=True),
        Task("colorize", "colour grayscale images with a --task colorize run", ("colorize",), _colorize,
             gray_input=True, page=True),
    ]
    return {t.name: t for t in tasks}


TASKS: dict[str, Task] = _registry()


def get(name: str) -> Task:
    if name not in TASKS:
        raise UserError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def tasks_for(kind: str) -> tuple[str, ...]:
    """The tasks a pixel run of conditioning ``kind`` supports, in registry order."""
    return tuple(name for name, t in TASKS.items() if t.supports(kind))


__all__ = ["Option", "Task", "Job", "TASKS", "get", "tasks_for", "MAX_SIDE"]
