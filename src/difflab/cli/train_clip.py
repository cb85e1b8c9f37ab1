"""``difflab train-clip``: fit a noisy image-caption contrastive model for CLIP guidance (GLIDE)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data import load
from ..errors import UserError
from ..training.checkpoint import CHECKPOINT, CONFIG, read_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-clip", help="train a noisy CLIP model for CLIP guidance", description=(
        "Train a time-conditioned image tower and a small text tower with the symmetric contrastive loss on "
        "noised digit images and their generated captions (Nichol et al. 2022) into DIR; use it with "
        "difflab sample --clip DIR --prompt TEXT."))
    p.add_argument("--data", required=True, metavar="SPEC", help="digits | mnist:DIR")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="CLIP folder to create")
    p.add_argument("--run", type=Path, metavar="RUN_DIR", help="diffusion run whose noise schedule to train under")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="optimisation steps (default 2000)")
    budget.add_argument("--minutes", type=float, help="wall-clock budget")
    p.add_argument("--batch-size", type=int, help="pairs per step (default 128)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--config", type=Path, metavar="FILE", help="JSON file with ClipTrainConfig fields")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..guidance import ClipTrainConfig, train_clip, zero_shot_accuracy

    if (args.out / CHECKPOINT).exists():
        raise UserError(f"{args.out} already holds a checkpoint; choose another --out")
    fields: dict = {}
    if args.config is not None:
        if not args.config.is_file():
            raise UserError(f"--config {args.config} does not exist")
        try:
            fields = json.loads(args.config.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"--config {args.config} is not valid JSON ({e})") from None
    if args.run is not None:
        fields["schedule"] = read_json(args.run / CONFIG).get("schedule", fields.get("schedule"))
    overrides = {"steps": args.steps, "minutes": args.minutes, "batch_size": args.batch_size, "seed": args.seed}
    if args.minutes is not None:
        overrides["steps"] = 10**9
    fields.update({k: v for k, v in overrides.items() if v is not None})
    cfg = ClipTrainConfig.from_dict(fields)
    data = load(args.data, "train")
    model, sched = train_clip(cfg, data, args.out, progress=not args.quiet)
    acc = zero_shot_accuracy(model, sched, load(args.data, "test"), sched.t_min)
    print(f"noisy CLIP written to {args.out}; zero-shot accuracy on clean held-out images {acc:.3f}")
    return 0
