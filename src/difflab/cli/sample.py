"""``difflab sample``: draw samples from a trained run into a PNG grid/scatter or an NPZ file."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ..data import to_uint8, to_unit
from ..errors import UserError
from ..interop.diffusers import clipped_as_imported
from ..models.denoiser import Clamped, Thresholded
from ..training import load_run
from ..training.checkpoint import atomic_write
from ..utils.images import save_image_grid, save_scatter
from . import guide
from . import _args


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..samplers import names
    from ..samplers.cld import CLD_SAMPLERS

    p = sub.add_parser("sample", help="sample from a trained run", description=(
        "Sample from a run folder. FILE.png gets a grid (images) or a scatter plot (2-D data); FILE.npz gets "
        "'images' (uint8 N x H x W x C) or 'samples' (float32 N x D)."))
    p.add_argument("--run", required=True, type=Path, metavar="RUN_DIR")
    p.add_argument("--num", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--sampler", default="ddim", choices=names() + list(CLD_SAMPLERS),
                   help="sampler (default ddim; a cld run: em | sscs | ode, default its recipe's)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument("--seed", type=_args.seed, default=0)
    p.add_argument("--batch-size", type=int, default=500, help="samples per batch (default 500)")
    p.add_argument("--label", type=int, help="class to generate (class-conditional runs)")
    p.add_argument("--no-clip", action="store_true",
                   help="do not clamp the denoised prediction to the data range [-1, 1] (images)")
    p.add_argument("--threshold", type=float, metavar="P",
                   help="images: dynamic thresholding at percentile P of |x0| instead of clamping (Saharia et al. "
                        "2022; e.g. 0.995)")
    p.add_argument("--no-tuned-grid", action="store_true",
                   help="ignore a grid stored by 'difflab tune-steps' for this sampler and --steps")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--out", required=True, type=Path, metavar="FILE",
                   help="output .png or .npz, or a folder: one .npz per batch (docs/evaluation.md)")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="sample with N processes on this machine (torchrun); the samples do not depend on N")
    _args.add_overwrite(p)
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--device", type=_args.device, help="cpu, cuda, ... (default: cuda if available)")
    guide.add_arguments(p)
    p.add_argument("--negative-prompt", metavar="TEXT",
                   help="text runs with --guidance-scale: guide away from this caption instead of the empty one")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..samplers import sample

    if args.nproc is not None:
        return _launch(args.nproc)
    suffix = args.out.suffix.lower()
    if suffix not in (".png", ".npz", ""):
        raise UserError(f"--out {args.out}: the file must end in .png or .npz (or be a folder, without a suffix)")
    for name in ("num", "steps", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.out.parent.is_dir():
        raise UserError(f"--out {args.out}: folder {args.out.parent} does not exist")
    if args.out.suffix:  # a shard folder is resumed instead (docs/evaluation.md)
        _args.refuse_existing(args.out, args.overwrite)
    from ..training import distributed
    from ..training.cascade import is_cascade
    from ..training.families import is_family_run

    if (is_cascade(args.run) or is_family_run(args.run)) and (not suffix or distributed.launched()):
        raise UserError(f"{args.run}: shard folders and several processes are for diffusion runs; sample it into "
                        "one .png or .npz in one process")
    if is_cascade(args.run):  # a cascade folder: the base run, then its super-resolution stages
        from .cascade import sample_cascade

        return sample_cascade(args)
    if is_family_run(args.run):  # gan / vae / ddgan: the family's own sampler
        from ._families import sample_family

        return sample_family(args)
    from ..samplers import SAMPLERS

    if args.sampler not in SAMPLERS:
        raise UserError(f"--sampler {args.sampler} samples cld runs only; {args.run} is a diffusion run")
    loaded = load_run(args.run, ema=not args.no_ema, device=distributed.init(args.device).device)
    model, shape = loaded.model, loaded.shape
    image = len(shape) == 3
    num_classes = int(model.net.config.num_classes) if hasattr(model.net, "config") else 0
    if args.label is not None and args.classifier is None and not 0 <= args.label < max(num_classes, 1):
        raise UserError(f"--label {args.label}: the run in {args.run} "
                        + (f"has classes 0..{num_classes - 1}" if num_classes else "is not class-conditional"))
    model, make_cond = guide.guided(args, loaded)
    if args.negative_prompt is not None:
        from ..training.conditioning import with_negative_prompt

        make_cond = with_negative_prompt(model, loaded.conditioning, args.negative_prompt, make_cond)
    device = next(model.parameters()).device
    if args.threshold is not None and not 0.0 < args.threshold <= 1.0:
        raise UserError(f"--threshold must lie in (0, 1], got {args.threshold}")
    pixels = image and not loaded.latent  # a latent run clamps the decoded image, never the latents
    if loaded.latent and args.threshold is not None:
        raise UserError(f"--threshold: {args.run} is a latent diffusion run; its latents are never thresholded "
                        "(the decoded image is clamped)")
    imported = loaded.config.get("imported") if pixels and args.threshold is None and not args.no_clip else None
    if isinstance(imported, dict):  # the x0 clipping of the diffusers pipeline the run came from (docs/interop.md)
        model = clipped_as_imported(model, imported)
    elif pixels and args.threshold is not None:
        model = Thresholded(model, args.threshold)
    elif pixels and not args.no_clip:
        model = Clamped(model)
    from .tune_steps import GRIDS_FILE, denoised_mode, tuned_sigmas

    tuned = None if args.no_tuned_grid else tuned_sigmas(args.run, args.sampler, args.steps,
                                                         denoised_mode(pixels, args.no_clip, args.threshold))
    if tuned is not None:
        print(f"using the tuned {args.sampler} grid for {args.steps} calls from {args.run / GRIDS_FILE}")
    from ..evaluation.generate import PerSample

    def draw(idx: torch.Tensor, rng: PerSample) -> torch.Tensor:
        x = sample(model, rng.prior(model.schedule, shape, device), sampler=args.sampler, steps=args.steps,
                   grid=tuned, cond=make_cond(len(idx), device), generator=rng)
        return loaded.to_data(x).cpu()

    return sharded(args, draw, image)


def _launch(nproc: int) -> int:
    """This command again under torchrun with nproc processes (the arguments without --nproc)."""
    import sys

    from ..training import distributed

    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    if distributed.launched():
        raise UserError("--nproc inside torchrun: launch either with torchrun or with --nproc, not both")
    argv = list(sys.argv[1:])
    for i, a in enumerate(argv):
        if a.startswith("--nproc="):
            del argv[i]
            break
        if a == "--nproc":
            del argv[i:i + 2]
            break
    return distributed.relaunch(nproc, argv)


def sharded(args: argparse.Namespace, draw: Any, image: bool) -> int:
    """Draw --num samples with a seed per sample over this command's processes into --out (docs/evaluation.md)."""
    from ..evaluation.generate import generate, merge
    from ..training import distributed

    world = distributed.init(args.device)
    settings = {k: str(v) for k, v in sorted(vars(args).items()) if k not in ("handler", "out", "nproc", "threads",
                                                                             "device")}
    folder = args.out if not args.out.suffix else args.out.parent / f".{args.out.name}.shards"
    ok = False
    try:
        generate(draw, args.num, args.batch_size, args.seed, folder, world, progress=world.main, settings=settings)
        if world.main and args.out.suffix:
            arrays = merge(folder, args.num)
            write_samples(to_unit(arrays) if image else torch.from_numpy(arrays), args.out, image)
            shutil.rmtree(folder)
        ok = True
    finally:
        distributed.shutdown(ok)
    if world.main:
        print(f"wrote {args.num} samples to {args.out}" + (f" ({world.size} processes)" if world.distributed else ""))
    return 0


def write_samples(x: torch.Tensor, out: Path, image: bool) -> None:
    """A PNG grid (images) or scatter plot (points), or an .npz of uint8 images / float32 points, written atomically."""
    if out.suffix.lower() == ".png":
        atomic_write(out, (lambda p: save_image_grid(x, p)) if image else (lambda p: save_scatter(x, p)))
    else:
        arrays = {"images": to_uint8(x)} if image else {"samples": x.numpy().astype(np.float32)}
        atomic_write(out, lambda p: np.savez(p, **arrays))
