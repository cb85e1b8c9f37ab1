"""``difflab edit inpaint|sdedit|uncrop|panorama|superres``: image-to-image tasks on a trained run (docs/tasks.md).

Inputs are PNG/JPEG files or folders (a folder in, a folder out with the same file names).  Images keep their
size: one whose height x width differs from the run's is refused (uncrop/panorama take the run's size as well;
superres takes the run's size divided by its scale; colorize reads its input as grayscale);
channels are converted to the run's (L for one channel, RGB for three).  Masks are PNG, white = keep,
black = generate (RePaint's convention), thresholded at 128.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..tasks.registry import MAX_SIDE  # the largest image side edit reads or writes (checked from the header)
from . import _args

SUFFIXES = (".png", ".jpg", ".jpeg")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..samplers import names
    from ..tasks.registry import TASKS

    p = sub.add_parser("edit", help="inpaint, SDEdit, uncrop or extend images with a trained run", description=(
        "Image-to-image tasks on a trained run: inpaint (RePaint), sdedit, uncrop, panorama (training-free, on "
        "any unconditional run), superres and colorize (--task superres / colorize runs); inpaint on a --task inpaint run uses its "
        "mask conditioning; sdedit and inpaint on a text run take --prompt (with --guidance-scale, --negative-prompt). "
        "--input and --out are PNG/JPEG files, or folders (same file names out). Masks: white = keep, "
        "black = generate."))
    sub_tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    for task in TASKS.values():
        q = sub_tasks.add_parser(task.name, help=task.help)
        q.add_argument("--run", required=True, type=Path, metavar="RUN_DIR")
        q.add_argument("--input", required=True, type=Path, metavar="IMG_OR_DIR")
        q.add_argument("--out", required=True, type=Path, metavar="OUT")
        _args.add_overwrite(q)
        q.add_argument("--sampler", default="ddim", choices=names(), help="sampler (default ddim)")
        q.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
        q.add_argument("--seed", type=_args.seed, default=0)
        q.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
        q.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
        q.add_argument("--device", type=_args.device, help="cpu, cuda, ... (default: cuda if available)")
        for o in task.options:  # checked against the registry's bounds in run()
            q.add_argument(f"--{o.flag}", type=_args.finite_float if o.type is float else o.type, default=None,
                           help=o.help)
        if task.mask != "none":
            q.add_argument("--mask", required=task.mask == "required", type=Path, metavar="MASK",
                           help="PNG (white = keep, black = generate) or a folder of masks named as the inputs"
                           + ("" if task.mask == "required" else " (optional)"))
        if task.prompt:
            _prompt_arguments(q)
        if task.name == "superres":
            _superres_arguments(q)
        q.set_defaults(handler=run)


def _prompt_arguments(q: argparse.ArgumentParser) -> None:
    """--prompt, --guidance-scale and --negative-prompt of edits on a text run (docs/tasks.md)."""
    q.add_argument("--prompt", help="text runs: the caption the edit asks for (default: the empty caption)")
    q.add_argument("--guidance-scale", type=float, default=0.0, metavar="W",
                   help="with --prompt: classifier-free guidance weight (default 0 = off)")
    q.add_argument("--negative-prompt", metavar="TEXT", help="with --guidance-scale: guide away from this caption")


def _superres_arguments(q: argparse.ArgumentParser) -> None:
    """--prompt, --guidance-scale (text-conditional SR runs and cascades, Imagen) and --threshold of edit superres."""
    q.add_argument("--prompt", help="a text-conditional SR run or cascade: the caption of the images "
                   "(default: the empty caption)")
    q.add_argument("--guidance-scale", type=float, default=0.0, metavar="W",
                   help="with --prompt: classifier-free guidance weight of the text SR stages (default 0 = off)")
    q.add_argument("--threshold", type=float, metavar="P",
                   help="dynamic thresholding at percentile P of |x0| instead of clamping (Saharia et al. 2022; "
                        "e.g. 0.995)")


def _superres_text(args: argparse.Namespace, conditionings: list[Any]) -> tuple[float, list[str] | None]:
    """(guidance weight, prompts of one image) of edit superres, checked against the run's (or cascade's) SR
    stages: --prompt needs a text-conditional one, --guidance-scale needs --prompt."""
    prompt, w = getattr(args, "prompt", None), float(getattr(args, "guidance_scale", 0.0))
    if not w >= 0:
        raise UserError(f"--guidance-scale must be >= 0, got {w}")
    if (prompt is not None or w) and not any(hasattr(c, "text") for c in conditionings):
        raise UserError(f"--prompt: no super-resolution stage of {args.run} is text-conditional "
                        "(train it with --text-encoder)")
    if w and prompt is None:
        raise UserError("--guidance-scale needs --prompt: the caption to guide towards")
    return w, None if prompt is None else [prompt]


def _text_guided(args: argparse.Namespace, loaded) -> tuple[object, object]:
    """(denoiser, condition of one image) of an edit on a text run: the prompt's condition, with CFG if asked."""
    from ..guidance import ClassifierFreeGuidance
    from ..training.conditioning import with_negative_prompt

    prompt, negative = getattr(args, "prompt", None), getattr(args, "negative_prompt", None)
    w = getattr(args, "guidance_scale", 0.0)
    if loaded.conditioning.kind != "captions":
        if prompt is not None or negative is not None or w:
            raise UserError(f"--prompt: the run in {args.run} is not text-conditional (train it with --text-encoder)")
        return loaded.model, None
    if w < 0:
        raise UserError(f"--guidance-scale must be >= 0, got {w}")
    if w and prompt is None:
        raise UserError("--guidance-scale needs --prompt: the caption to guide towards")
    model = ClassifierFreeGuidance(loaded.model, w) if w else loaded.model
    cond_fn = (lambda n, device: loaded.conditioning.prompts([prompt] * n, device)) if prompt is not None \
        else loaded.conditioning.null
    if negative is not None:
        cond_fn = with_negative_prompt(model, loaded.conditioning, negative, cond_fn)
    return model, cond_fn(1, next(loaded.model.parameters()).device)


def _files(path: Path) -> list[Path]:
    """The image files of --input: the file itself, or a folder's PNG/JPEG files sorted by name."""
    if not path.exists():
        raise UserError(f"--input {path}: no such file or directory")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES and p.is_file())
        if not files:
            raise UserError(f"--input {path}: the folder holds no PNG/JPEG files")
        return files
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"--input {path}: expected a .png, .jpg or .jpeg file or a folder")
    return [path]


def read_image(path: Path, channels: int) -> torch.Tensor:
    """[1, C, H, W] in [-1, 1]; converted to L (C = 1) or RGB (C = 3), never resized."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            _check_pixels(im.size, str(path))
            a = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"{path}: not a readable image ({e})") from None
    a = a[:, :, None] if a.ndim == 2 else a
    return torch.from_numpy(a.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)[None]




def _check_pixels(size: tuple[int, int], name: str) -> None:
    """UserError if an image's header claims a side larger than MAX_SIDE (before any pixel is decoded)."""
    if max(size) > MAX_SIDE:
        raise UserError(f"{name} is {size[1]}x{size[0]} pixels (height x width); edit reads images of at most "
                        f"{MAX_SIDE} pixels a side")


def read_mask(path: Path, size: tuple[int, int], image: Path) -> torch.Tensor:
    """[H, W] of 0/1 (white >= 128 = keep); its size must equal the image's."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            _check_pixels(im.size, f"--mask {path}")
            a = np.asarray(im.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"--mask {path}: not a readable image ({e})") from None
    if a.shape != size:
        raise UserError(f"--mask {path} is {a.shape[0]}x{a.shape[1]} but the image {image} is {size[0]}x{size[1]} "
                        f"(height x width)")
    return torch.from_numpy((a >= 128).astype(np.float32))


def write_image(x: torch.Tensor, path: Path) -> None:
    """Write [1, C, H, W] in [-1, 1] as an 8-bit image (format from the suffix)."""
    from PIL import Image

    from ..data import to_uint8
    from ..training.checkpoint import atomic_write

    a = to_uint8(x)[0]
    img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    atomic_write(path, lambda p: img.save(p, format=fmt))


def _outputs(args: argparse.Namespace, files: list[Path]) -> list[Path]:
    """The output file of each input; an existing one is refused unless --overwrite."""
    if args.input.is_dir():
        if args.out.exists() and not args.out.is_dir():
            raise UserError(f"--out {args.out}: --input is a folder, so --out must be a folder")
        if not args.out.parent.is_dir():
            raise UserError(f"--out {args.out}: folder {args.out.parent} does not exist")
        outs = [args.out / f.name for f in files]
        for out in outs:
            _args.refuse_existing(out, args.overwrite)
        args.out.mkdir(exist_ok=True)
        return outs
    if args.out.suffix.lower() not in SUFFIXES:
        raise UserError(f"--out {args.out}: the file must end in .png, .jpg or .jpeg")
    if not args.out.parent.is_dir():
        raise UserError(f"--out {args.out}: folder {args.out.parent} does not exist")
    _args.refuse_existing(args.out, args.overwrite)
    return [args.out]


def _mask_for(args: argparse.Namespace, image_file: Path, size: tuple[int, int]) -> torch.Tensor | None:
    mask = getattr(args, "mask", None)
    if mask is None:
        return None
    if mask.is_dir():
        mask = mask / image_file.name
        if not mask.is_file():
            raise UserError(f"--mask {args.mask}: no mask named {image_file.name} for input {image_file}")
    elif not mask.is_file():
        raise UserError(f"--mask {mask}: no such file")
    return read_mask(mask, size, image_file)


def run(args: argparse.Namespace) -> int:
    from ..tasks.registry import get

    task = get(args.task)
    if args.steps < 1:
        raise UserError(f"--steps must be at least 1, got {args.steps}")
    values = task.values(lambda name: getattr(args, name, None))
    files = _files(args.input)
    from ..runs import CascadeRun, DiffusionRun, load

    r = load(args.run, ema=not args.no_ema, device=args.device)
    if isinstance(r, CascadeRun):
        if task.name != "superres":
            raise UserError(f"--run {args.run} is a cascade: edit superres runs its SR stages; edit {task.name} "
                            f"needs a single run (e.g. {args.run / 'base'})")
        return _cascade_superres(args, files, _outputs(args, files), values["aug_level"])
    outs = _outputs(args, files)
    if not isinstance(r, DiffusionRun) or r.domain != "images":
        raise UserError(f"--run {args.run}: edit works on pixel diffusion runs ({r.describe()})")
    kind = r.conditioning.kind
    if not task.supports(kind):
        raise UserError(f"--run {args.run} ({kind} conditioning) does not support edit {task.name}; it supports "
                        + (", ".join(r.tasks) or "no editing task") + f" (edit {task.name} runs on "
                        + ", ".join(f"{k} runs" for k in task.runs_on) + ")")
    if task.name == "superres":  # a text SR run takes its caption as prompts (Imagen), with CFG if asked
        w, prompts = _superres_text(args, [r.conditioning])
        from ..guidance import ClassifierFreeGuidance

        guided, cond = ClassifierFreeGuidance(r.loaded.model, w) if w else r.loaded.model, None
        values = {**values, "prompts": prompts}
    else:
        guided, cond = _text_guided(args, r.loaded)
    _edit_files(args, task, r, r.denoiser(guided, threshold=getattr(args, "threshold", None)), cond, values, files,
                outs)
    print(f"wrote {len(outs)} image{'s' if len(outs) != 1 else ''} to {args.out}")
    return 0


def _edit_files(args: argparse.Namespace, task: Any, r: Any, model: Any, cond: Any, values: dict[str, Any],
                files: list[Path], outs: list[Path]) -> None:
    """Run the task on each input file (its size checked against the run's) into its output file."""
    from ..tasks.registry import Job

    h, w = task.input_size(r.shape, r.conditioning)
    device, g = r.device, torch.Generator().manual_seed(args.seed)
    common = {"sampler": args.sampler, "steps": args.steps, "generator": g}
    for f, out in zip(files, outs):
        x = read_image(f, 1 if task.gray_input else r.shape[0])
        if tuple(x.shape[-2:]) != (h, w):
            raise UserError(f"{f} is {x.shape[-2]}x{x.shape[-1]} but the run {args.run} "
                            f"{'takes' if (h, w) != tuple(r.shape[-2:]) else 'makes'} {h}x{w} images "
                            f"(height x width); resize it first")
        mask = _mask_for(args, f, (h, w))
        job = Job(model, x.to(device), None if mask is None else mask.to(device), r.conditioning, cond, values,
                  common)
        try:
            y = task.run(job)
        except ValueError as e:
            raise UserError(f"edit {task.name}: {e}") from None
        write_image(y.cpu(), out)


def _cascade_superres(args: argparse.Namespace, files: list[Path], outs: list[Path], aug_level: float | None) -> int:
    """``edit superres`` on a cascade folder: inputs of the base's size through every SR stage in turn (each
    ``--noise-aug`` stage at --aug-level if given, else at the cascade's level; the others at 0)."""
    from .. import tasks
    from ..guidance import ClassifierFreeGuidance
    from ..models.denoiser import Clamped, Thresholded
    from ..training.cascade import load_cascade

    c = load_cascade(args.run, ema=not args.no_ema, device=args.device)
    gw, prompts = _superres_text(args, [st.conditioning for st in c.stages])
    threshold = getattr(args, "threshold", None)
    if threshold is not None and not 0.0 < threshold <= 1.0:  # a single run's r.denoiser checks it the same way
        raise UserError(f"--threshold must lie in (0, 1], got {threshold}")
    wrap = Clamped if threshold is None else (lambda m: Thresholded(m, float(threshold)))
    levels = [(aug_level if aug_level is not None else lv) if st.conditioning.augment else 0.0
              for st, lv in zip(c.stages, c.levels)]
    ch, h, w = c.base.shape
    g = torch.Generator().manual_seed(args.seed)
    for f, out in zip(files, outs):
        x = read_image(f, ch)
        if tuple(x.shape[-2:]) != (h, w):
            raise UserError(f"{f} is {x.shape[-2]}x{x.shape[-1]} but the cascade {args.run} takes {h}x{w} images "
                            f"(its base size, height x width); resize it first")
        for stage, level in zip(c.stages, levels):
            x = x.to(next(stage.model.parameters()).device)
            text = hasattr(stage.conditioning, "text")  # the caption (and CFG) reach the text SR stages only
            sr = ClassifierFreeGuidance(stage.model, gw) if text and gw else stage.model
            words = {"prompts": prompts} if text and prompts is not None else {}
            try:
                x = tasks.superres(wrap(sr), x, stage.conditioning, sampler=args.sampler,
                                   steps=args.steps, generator=g, level=level, **words)
            except ValueError as e:
                raise UserError(f"edit superres: {e}") from None
        write_image(x.cpu(), out)
    print(f"wrote {len(outs)} image{'s' if len(outs) != 1 else ''} to {args.out}")
    return 0
