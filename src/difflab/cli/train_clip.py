"""``difflab train-clip``: fit a noisy image-caption contrastive model for CLIP guidance (GLIDE)."""
from __future__ import annotations

import argparse

from ..data import load
from . import _auxiliary


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-clip", help="train a noisy CLIP model for CLIP guidance", description=(
        "Train a time-conditioned image tower and a small text tower with the symmetric contrastive loss on "
        "noised digit images and their generated captions (Nichol et al. 2022) into DIR; use it with "
        "difflab sample --clip DIR --prompt TEXT."))
    p.add_argument("--data", required=True, metavar="SPEC", help="digits | mnist:DIR")
    _auxiliary.add_arguments(p, "CLIP", "ClipTrainConfig", "pairs")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..training.clip import ClipTrainConfig, train_clip, zero_shot_accuracy

    cfg = ClipTrainConfig.from_dict(_auxiliary.config_fields(args))
    data = load(args.data, "train")
    model, sched = train_clip(cfg, data, args.out, progress=not args.quiet)
    acc = zero_shot_accuracy(model, sched, load(args.data, "test"), sched.t_min)
    print(f"noisy CLIP written to {args.out}; zero-shot accuracy on clean held-out images {acc:.3f}")
    return 0
