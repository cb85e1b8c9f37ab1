"""``difflab train-classifier``: fit a noise-conditional classifier p(y | x_t, t) for classifier guidance."""
from __future__ import annotations

import argparse

from ..data import load
from . import _auxiliary


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-classifier", help="train a noisy classifier for classifier guidance", description=(
        "Train a time-conditioned classifier on noised labelled images (Dhariwal & Nichol 2021) into DIR "
        "(config.json + checkpoint.safetensors); use it with difflab sample --classifier DIR --label K."))
    p.add_argument("--data", required=True, metavar="SPEC", help="digits | mnist:DIR | a folder with one sub-folder per class")
    _auxiliary.add_arguments(p, "classifier", "ClassifierTrainConfig", "examples")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-3)")
    p.add_argument("--image-size", type=int, default=32, help="side of images loaded from a folder (default 32)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..training.classifier import ClassifierTrainConfig, noisy_accuracy, train_classifier

    cfg = ClassifierTrainConfig.from_dict(_auxiliary.config_fields(args, lr=args.lr))
    data = load(args.data, "train", image_size=args.image_size)
    net, sched = train_classifier(cfg, data, args.out, progress=not args.quiet)
    test = load(args.data, "test", image_size=args.image_size)
    t_mid = 0.5 * (sched.t_min + sched.t_max)
    print(f"noisy classifier written to {args.out}; held-out accuracy {noisy_accuracy(net, sched, test, sched.t_min):.3f} "
          f"(clean), {noisy_accuracy(net, sched, test, t_mid):.3f} (t = {t_mid:g})")
    return 0
