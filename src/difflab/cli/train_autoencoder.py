"""``difflab train-autoencoder``: a KL-regularised autoencoder for latent diffusion (docs/latent.md)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..data import load
from ..errors import UserError
from . import _args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-autoencoder", help="train a KL autoencoder for latent diffusion", description=(
        "Train a convolutional KL-regularised autoencoder (reconstruction + a small KL) and write a folder with "
        "config.json (including the latent scale factor), checkpoint.safetensors, log.csv and reconstructions.png; "
        "then train a diffusion model on its latents with difflab train --autoencoder FOLDER."))
    p.add_argument("--data", required=True, metavar="SPEC", help="digits | mnist:DIR | a folder of images")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to create (or resume)")
    p.add_argument("--latent", metavar="CxHxW",
                   help="latent shape (default: 4 x H/4 x W/4, or 2 x H/2 x W/2 for images of side <= 16)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="optimisation steps (default 5000)")
    budget.add_argument("--minutes", type=_args.positive_float, help="wall-clock budget")
    p.add_argument("--batch-size", type=int, help="examples per step (default 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--kl-weight", type=float, help="weight of the KL term (default 1e-3; see docs/latent.md)")
    p.add_argument("--seed", type=_args.seed, help="random seed (default 0)")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="JSON file with recipe fields (latent, network, kl_weight, batch_size, ...)")
    p.add_argument("--image-size", type=int, default=32, help="side of images loaded from a folder (default 32)")
    p.add_argument("--channels", type=int, choices=[1, 3], help="channels of images loaded from a folder")
    p.add_argument("--resume", action="store_true", help="continue the folder's training from its checkpoint")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..training.autoencoder import AutoencoderTrainConfig, parse_latent, train_autoencoder
    from ..training.checkpoint import CONFIG, read_json

    for name in ("steps", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    over = {"latent": parse_latent(args.latent) if args.latent else None, "steps": args.steps, "minutes": args.minutes,
            "batch_size": args.batch_size, "lr": args.lr, "kl_weight": args.kl_weight, "seed": args.seed}
    if args.steps is not None:
        over["minutes"] = 0.0
    if args.minutes is not None and args.steps is None:
        over["steps"] = 1_000_000
    over = {k: v for k, v in over.items() if v is not None}
    if args.resume and (args.out / CONFIG).is_file():
        base = dict(read_json(args.out / CONFIG).get("train", {}))
    elif args.config is not None:
        from ..utils.config import read_config_file

        base = read_config_file(args.config)
    else:
        base = {}
    cfg = AutoencoderTrainConfig.from_dict({**base, **over})
    data = load(args.data, "train", image_size=args.image_size, channels=args.channels)
    res = train_autoencoder(cfg, data, args.out, resume=args.resume, progress=not args.quiet)
    if res.stopped == "terminated":
        print(f"difflab: terminated at step {res.step}; checkpoint written to {args.out}; continue with --resume")
        return 143
    rc = read_json(args.out / CONFIG)
    print(f"trained the autoencoder {res.step} steps in {res.seconds:.0f} s (reconstruction MSE "
          f"{res.losses.get('rec_mse', float('nan')):.4f}, KL {res.losses.get('kl', float('nan')):.1f} nats); "
          f"latent {'x'.join(map(str, rc['latent']))}, scale factor {rc['scale_factor']:.4f}; folder {args.out}")
    return 0
