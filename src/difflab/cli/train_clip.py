"""``difflab train-clip``: fit a noisy image-caption contrastive model for CLIP guidance (GLIDE) and text alignment."""
from __future__ import annotations

import argparse

from ..data import load
from . import _auxiliary


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-clip", help="train a noisy CLIP model for CLIP guidance and text alignment", description=(
        "Train a time-conditioned image tower and a small text tower with the symmetric contrastive loss on "
        "noised images and their captions (Nichol et al. 2022) into DIR: a captioned image folder's own captions "
        "(metadata.jsonl, metadata.csv or .txt files), or captions made from digit labels. Use it with "
        "difflab sample --clip DIR --prompt TEXT, or difflab report --clip DIR for text alignment."))
    p.add_argument("--data", required=True, metavar="SPEC", help="digits | mnist:DIR | a captioned image folder")
    p.add_argument("--image-size", type=int, default=32, help="side of an image folder's images (default 32)")
    _auxiliary.add_arguments(p, "CLIP", "ClipTrainConfig", "pairs")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.alignment import pair_alignment
    from ..text import dataset_captions
    from ..training.clip import ClipTrainConfig, train_clip, zero_shot_accuracy

    cfg = ClipTrainConfig.from_dict(_auxiliary.config_fields(args))
    data = load(args.data, "train", image_size=args.image_size)
    model, sched = train_clip(cfg, data, args.out, progress=not args.quiet)
    real, shuffled = pair_alignment(model, sched, data)
    line = f"noisy CLIP written to {args.out}; alignment of training pairs {real:.3f} (shuffled {shuffled:.3f})"
    if dataset_captions(data)[1]:  # captions made from digit labels: the class prompts classify
        acc = zero_shot_accuracy(model, sched, load(args.data, "test"), sched.t_min)
        line += f"; zero-shot accuracy on clean held-out images {acc:.3f}"
    print(line)
    return 0
