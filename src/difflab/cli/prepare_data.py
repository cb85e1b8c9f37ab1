"""``difflab prepare-data``: pack an image source once into memory-mapped arrays that training opens instantly."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..errors import UserError
from . import _args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare-data", help="pack an image set into memory-mapped arrays", description=(
        "Decode an image source (a folder, digits, mnist:DIR, size:N:SPEC, color:SPEC) once into uint8 arrays "
        "plus packed.json in a new folder DATA; train with --data packed:DATA (or --data DATA). Every process "
        "maps the same file: nothing is decoded or copied at start (docs/data.md)."))
    p.add_argument("spec", metavar="SPEC", help="the image source, as --data takes it")
    p.add_argument("--out", type=Path, metavar="DATA", help="new folder to write")
    p.add_argument("--autoencoder", type=Path, metavar="AE_DIR",
                   help="also store the latents of this autoencoder folder (latent runs map them instead of "
                        "encoding); with SPEC packed:DATA and no --out, add them to DATA")
    p.add_argument("--device", type=_args.device, help="device that encodes the latents (default: cuda if available)")
    p.add_argument("--splits", default="train,test", help="comma-separated splits to pack (default train,test)")
    p.add_argument("--image-size", type=int, default=32, help="side of images decoded from a folder (default 32)")
    p.add_argument("--channels", type=int, choices=[1, 3], help="folders: force grayscale or RGB")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="threads decoding a folder's files (default: the CPU count, at most 8)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..data.packed import pack

    if args.image_size < 4:
        raise UserError(f"--image-size must be at least 4, got {args.image_size}")
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if args.out is None:
        if args.autoencoder is None or not args.spec.startswith("packed:"):
            raise UserError("--out DATA is required (only --autoencoder with SPEC packed:DATA adds latents in place)")
        return _latents(Path(args.spec[7:]), args)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    meta = pack(args.spec, args.out, splits, args.image_size, args.channels, args.workers, progress=True)
    sizes = ", ".join(f"{s} {v['shape'][0]}" for s, v in meta["splits"].items())
    print(f"packed {args.spec} into {args.out}: {sizes} images of {' x '.join(map(str, meta['shape']))}")
    return _latents(args.out, args) if args.autoencoder is not None else 0


def _latents(root: Path, args: argparse.Namespace) -> int:
    """Encode the packed folder's splits with --autoencoder and record them in its packed.json."""
    from ..data.packed import pack_latents, read_meta
    from ..training.autoencoder import load_autoencoder

    meta = read_meta(root)
    ae = load_autoencoder(args.autoencoder, device=args.device)
    if list(meta["shape"]) != list(ae.config["shape"]):
        raise UserError(f"--autoencoder {args.autoencoder} encodes images of shape {tuple(ae.config['shape'])}, "
                        f"but {root} holds {tuple(meta['shape'])}")
    record = {"path": str(ae.path.resolve()), "step": ae.step, "scale_factor": ae.scale_factor,
              "latent": list(ae.config["latent"])}
    pack_latents(root, ae.encode, ae.sha256, record, progress=True)
    print(f"stored the latents of {args.autoencoder} (step {ae.step}) in {root}")
    return 0
