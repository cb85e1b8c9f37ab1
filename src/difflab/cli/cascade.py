"""``difflab cascade``: assemble a base run and super-resolution runs into one cascade folder (docs/tasks.md);
``difflab sample --run CASCADE`` samples it through :func:`sample_cascade`."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cascade", help="assemble a base run and super-resolution runs into a cascade folder",
                       description=(
                           "Copy a base run (unconditional or class-conditional) and one or more --task superres runs "
                           "into one cascade folder (OUT/base, OUT/sr1, ... and OUT/cascade.json) that "
                           "'difflab sample --run OUT' samples: the base model, then each SR stage conditioned on the "
                           "previous stage's output. Each stage must take the previous stage's size."))
    p.add_argument("--base", required=True, type=Path, metavar="RUN_DIR", help="the base run (smallest images)")
    p.add_argument("--stage", required=True, type=Path, action="append", metavar="RUN_DIR",
                   help="a --task superres run; repeat for more stages, in order")
    p.add_argument("--aug-level", type=float, action="append", metavar="S",
                   help="noise-conditioning augmentation level per stage at sampling, in --stage order (default "
                        "0.2 for stages trained with --noise-aug, 0 otherwise)")
    p.add_argument("--out", required=True, type=Path, metavar="CASCADE_DIR", help="new folder for the cascade")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..training.cascade import assemble, load_cascade

    if args.aug_level is not None and len(args.aug_level) != len(args.stage):
        raise UserError(f"--aug-level: give one per --stage ({len(args.stage)}), got {len(args.aug_level)}")
    out = assemble(args.base, args.stage, args.out, args.aug_level)
    c = load_cascade(out, device="cpu")
    sizes = " -> ".join("x".join(map(str, s[1:])) for s in c.sizes())
    print(f"wrote cascade {out} ({sizes}; augmentation levels {', '.join(f'{v:g}' for v in c.levels)}); "
          f"sample it with difflab sample --run {out}")
    return 0


def sample_cascade(args: argparse.Namespace) -> int:
    """``difflab sample`` on a cascade folder: --num samples of the final stage's size into --out."""
    from ..training.cascade import load_cascade
    from .sample import write_samples

    from ..samplers import SAMPLERS

    if args.sampler not in SAMPLERS:
        raise UserError(f"--sampler {args.sampler} is not a diffusion sampler; {args.run} is a cascade of diffusion runs")
    if args.threshold is not None and not 0.0 < args.threshold <= 1.0:
        raise UserError(f"--threshold must lie in (0, 1], got {args.threshold}")
    if args.threshold is not None and args.no_clip:
        raise UserError("--threshold replaces each stage's clamping to [-1, 1]; it cannot be combined with --no-clip")
    if (getattr(args, "classifier", None) is not None or getattr(args, "clip", None) is not None
            or getattr(args, "negative_prompt", None) is not None):
        raise UserError(f"--run {args.run} is a cascade: of the guidance options it takes --prompt and --guidance-scale")
    c = load_cascade(args.run, ema=not args.no_ema, device=args.device)
    prompt, w = getattr(args, "prompt", None), getattr(args, "guidance_scale", 0.0)
    if prompt is not None and c.base.conditioning.kind != "captions":
        raise UserError(f"--prompt: the base run of the cascade {args.run} is not text-conditional")
    if w and (prompt is None and args.label is None or w < 0):
        raise UserError("--guidance-scale needs --prompt (a text base) or --label (a class-conditional base) and W >= 0")
    if args.label is not None and c.base.conditioning.kind != "labels":
        raise UserError(f"--label {args.label}: the base run of the cascade {args.run} is not class-conditional")
    g = torch.Generator().manual_seed(args.seed)
    chunks = []
    for start in tqdm(range(0, args.num, args.batch_size), desc="cascade", unit="batch",
                      disable=args.num <= args.batch_size):
        n = min(args.batch_size, args.num - start)
        chunks.append(c.sample(n, sampler=args.sampler, steps=args.steps, generator=g, label=args.label,
                               clip=not args.no_clip, prompt=prompt, guidance_scale=w,
                               threshold=args.threshold).cpu())
    write_samples(torch.cat(chunks), args.out, True)
    sizes = " -> ".join("x".join(map(str, s[1:])) for s in c.sizes())
    print(f"wrote {args.num} samples to {args.out} (cascade {sizes})")
    return 0
