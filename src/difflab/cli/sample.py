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
from ..runs import CascadeRun, DiffusionRun, load
from ..training.checkpoint import atomic_write
from ..utils.images import save_image_grid, save_scatter
from . import guide
from . import _args


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
    _args.add_grid(p)
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
    if args.nproc is not None:
        return _launch(args.nproc)
    suffix = args.out.suffix.lower()
    if suffix not in (".png", ".npz", ""):
        raise UserError(f"--out {args.out}: the file must end in .png or .npz (or be a folder, without a suffix)")
    for name in ("num", "steps", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.out.parent.is_dir():
        raise UserError(f"--out {args.out}: folder {args.out.parent} does not exist")
    if args.out.suffix:  # a shard folder is resumed instead (docs/evaluation.md)
        _args.refuse_existing(args.out, args.overwrite)
    from ..training import distributed

    r = load(args.run, ema=not args.no_ema, device=distributed.init(args.device).device)
    r.check_sampler(args.sampler, args.steps)
    r.check_grid(args.grid)
    if not isinstance(r, DiffusionRun) and (not suffix or distributed.launched()):
        raise UserError(f"{args.run}: shard folders and several processes are for diffusion runs; sample it into "
                        "one .png or .npz in one process")
    if isinstance(r, CascadeRun):  # the base run, then its super-resolution stages
        from .cascade import sample_cascade

        args.sampler, args.steps = args.sampler or r.default_sampler, args.steps or r.default_steps
        return sample_cascade(args)
    if isinstance(r, DiffusionRun):
        return sample_diffusion(args, r)
    refuse_denoiser_options(args, r.describe())  # a family with its own sampler: no denoiser to guide or clamp
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


def sample_diffusion(args: argparse.Namespace, r: DiffusionRun) -> int:
    """A denoiser run: guidance (--label, --prompt, --classifier, --clip), the run's stored grid, clamping or
    thresholding, a seed per sample over this command's processes."""
    from ..samplers import sample

    if args.classifier is None:
        r.check_label(args.label)
    if r.domain == "latents" and args.threshold is not None:
        raise UserError(f"--threshold: {args.run} is a latent diffusion run; its latents are never thresholded "
                        "(the decoded image is clamped)")
    model, make_cond = guide.guided(args, r.loaded)
    if (args.prompt is None and args.clip is None and args.classifier is None and args.label is None
            and r.conditioning.kind == "captions"):
        make_cond = r.conditioning.preview  # the run's stored captions in turn (its class prompts for digit captions)
    if args.negative_prompt is not None:
        from ..training.conditioning import with_negative_prompt

        make_cond = with_negative_prompt(model, r.conditioning, args.negative_prompt, make_cond)
    sampler, steps = args.sampler or r.default_sampler, args.steps or r.default_steps
    tuned = r.sampling_grid(sampler, steps, not args.no_clip, args.threshold, args.grid, not args.no_tuned_grid)
    if tuned is not None and not isinstance(tuned, str):
        from ..samplers.tuned import GRIDS_FILE

        print(f"using the tuned {sampler} grid for {steps} calls from {args.run / GRIDS_FILE}")
    model, shape, device = r.denoiser(model, not args.no_clip, args.threshold), r.shape, r.device

    def draw(idx: torch.Tensor, rng: Any) -> torch.Tensor:
        x = sample(model, rng.prior(model.schedule, shape, device), sampler=sampler, steps=steps, grid=tuned,
                   cond=make_cond(len(idx), device), generator=rng)
        return r.loaded.to_data(x).cpu()

    return sharded(args, draw, r.domain != "points")


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
