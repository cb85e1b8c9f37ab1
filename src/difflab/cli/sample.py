"""``difflab sample``: draw samples from a trained run into a PNG grid/scatter or an NPZ file."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ..data import to_uint8
from ..errors import UserError
from ..runs import CascadeRun, DiffusionRun, load
from ..training.checkpoint import atomic_write
from ..utils.images import save_image_grid, save_scatter
from . import guide


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..runs import sampler_names

    p = sub.add_parser("sample", help="sample from a trained run", description=(
        "Sample from a run folder of any family. FILE.png gets a grid (images) or a scatter plot (2-D data); "
        "FILE.npz gets 'images' (uint8 N x H x W x C) or 'samples' (float32 N x D)."))
    p.add_argument("--run", required=True, type=Path, metavar="RUN_DIR")
    p.add_argument("--num", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--sampler", choices=sampler_names(),
                   help="sampler, one the run's family accepts (default: the run's; ddim for diffusion runs, the "
                        "recipe's for a family with several, none to choose for a family with its own sampler)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the run's; 50 for diffusion runs)")
    p.add_argument("--seed", type=int, default=0)
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
    p.add_argument("--out", required=True, type=Path, metavar="FILE", help="output .png or .npz")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    guide.add_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    suffix = args.out.suffix.lower()
    if suffix not in (".png", ".npz"):
        raise UserError(f"--out {args.out}: the file must end in .png or .npz")
    for name in ("num", "steps", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.out.parent.is_dir():
        raise UserError(f"--out {args.out}: folder {args.out.parent} does not exist")
    r = load(args.run, ema=not args.no_ema, device=args.device)
    r.check_sampler(args.sampler, args.steps)
    if isinstance(r, CascadeRun):  # the base run, then its super-resolution stages
        from .cascade import sample_cascade

        args.sampler, args.steps = args.sampler or r.default_sampler, args.steps or r.default_steps
        return sample_cascade(args)
    if isinstance(r, DiffusionRun):
        x = sample_diffusion(args, r)
    else:  # a family with its own sampler: no denoiser to guide, clamp or threshold
        refuse_denoiser_options(args, r.describe())
        r.check_label(args.label)
        x = r.sample(args.num, args.seed, cond=args.label, sampler=args.sampler, steps=args.steps,
                     batch_size=args.batch_size)
    write_samples(x, args.out, r.domain != "points")
    print(f"wrote {args.num} samples of the {r.label} run ({r.nfe} network call(s) each) to {args.out}")
    return 0


def refuse_denoiser_options(args: argparse.Namespace, what: str) -> None:
    """Guidance and thresholding wrap a denoiser: a one-line error for runs that have none."""
    given = [opt for opt, v in (("--threshold", args.threshold), ("--prompt", args.prompt),
                                ("--guidance-scale", args.guidance_scale or None), ("--classifier", args.classifier),
                                ("--clip", args.clip)) if v is not None]
    if given:
        raise UserError(f"{given[0]}: {what}, which has no denoiser to guide or threshold")


def sample_diffusion(args: argparse.Namespace, r) -> torch.Tensor:
    """A denoiser run: guidance (--label, --prompt, --classifier, --clip), the tuned grid, clamping or thresholding."""
    if args.classifier is None:
        r.check_label(args.label)
    if r.domain == "latents" and args.threshold is not None:
        raise UserError(f"--threshold: {args.run} is a latent diffusion run; its latents are never thresholded "
                        "(the decoded image is clamped)")
    model, make_cond = guide.guided(args, r.loaded)
    sampler, steps = args.sampler or r.default_sampler, args.steps or r.default_steps
    from .tune_steps import GRIDS_FILE, denoised_mode, tuned_sigmas

    tuned = None if args.no_tuned_grid else tuned_sigmas(args.run, sampler, steps,
                                                         denoised_mode(r.domain != "points", args.no_clip,
                                                                       args.threshold))
    if tuned is not None:
        print(f"using the tuned {sampler} grid for {steps} calls from {args.run / GRIDS_FILE}")
    return r.sample(args.num, args.seed, cond=make_cond, sampler=sampler, steps=steps, batch_size=args.batch_size,
                    grid=tuned, model=model, clip=not args.no_clip, threshold=args.threshold, progress=True)


def write_samples(x: torch.Tensor, out: Path, image: bool) -> None:
    """A PNG grid (images) or scatter plot (points), or an .npz of uint8 images / float32 points, written atomically."""
    if out.suffix.lower() == ".png":
        atomic_write(out, (lambda p: save_image_grid(x, p)) if image else (lambda p: save_scatter(x, p)))
    else:
        arrays = {"images": to_uint8(x)} if image else {"samples": x.numpy().astype(np.float32)}
        atomic_write(out, lambda p: np.savez(p, **arrays))
