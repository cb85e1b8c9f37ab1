"""``difflab train-classifier``: fit a noise-conditional classifier p(y | x_t, t) for classifier guidance."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data import load
from ..errors import UserError
from ..training.checkpoint import CHECKPOINT, CONFIG, read_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-classifier", help="train a noisy classifier for classifier guidance", description=(
        "Train a time-conditioned classifier on noised labelled images (Dhariwal & Nichol 2021) into DIR "
        "(config.json + checkpoint.safetensors); use it with difflab sample --classifier DIR --label K."))
    p.add_argument("--data", required=True, metavar="SPEC", help="digits | mnist:DIR | a folder with one sub-folder per class")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="classifier folder to create")
    p.add_argument("--run", type=Path, metavar="RUN_DIR", help="diffusion run whose noise schedule to train under")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="optimisation steps (default 2000)")
    budget.add_argument("--minutes", type=float, help="wall-clock budget")
    p.add_argument("--batch-size", type=int, help="examples per step (default 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-3)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--config", type=Path, metavar="FILE", help="JSON file with ClassifierTrainConfig fields")
    p.add_argument("--image-size", type=int, default=32, help="side of images loaded from a folder (default 32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..guidance import ClassifierTrainConfig, noisy_accuracy, train_classifier

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
    overrides = {"steps": args.steps, "minutes": args.minutes, "batch_size": args.batch_size, "lr": args.lr,
                 "seed": args.seed}
    if args.minutes is not None:
        overrides["steps"] = 10**9
    fields.update({k: v for k, v in overrides.items() if v is not None})
    cfg = ClassifierTrainConfig.from_dict(fields)
    data = load(args.data, "train", image_size=args.image_size)
    net, sched = train_classifier(cfg, data, args.out, progress=not args.quiet)
    test = load(args.data, "test", image_size=args.image_size)
    t_mid = 0.5 * (sched.t_min + sched.t_max)
    print(f"noisy classifier written to {args.out}; held-out accuracy {noisy_accuracy(net, sched, test, sched.t_min):.3f} "
          f"(clean), {noisy_accuracy(net, sched, test, t_mid):.3f} (t = {t_mid:g})")
    return 0
