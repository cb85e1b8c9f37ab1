"""Train difflab's feature networks by their fixed recipes and write the shipped weights.

    python benchmarks/train_feature_nets.py                         # digits only (sklearn, offline)
    python benchmarks/train_feature_nets.py --mnist /work/shared/data/mnist
    python benchmarks/train_feature_nets.py --out DIR               # default: src/difflab/assets

Writes feature_net_<name>.safetensors + .json (config, recipe, split, held-out accuracy, SHA-256 of the
weights). Training is single-threaded and seeded; a second run reproduces the same SHA-256 on the same
torch build and CPU type.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from difflab.evaluation.features import build_feature_net, save_feature_net

ASSETS = Path(__file__).resolve().parents[1] / "src" / "difflab" / "assets"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", metavar="DIR", help="directory of MNIST IDX files (also trains the MNIST net)")
    ap.add_argument("--out", default=str(ASSETS), help="output directory (default: the package assets)")
    ap.add_argument("--skip-digits", action="store_true")
    args = ap.parse_args()
    names = ([] if args.skip_digits else ["digits"]) + (["mnist"] if args.mnist else [])
    for name in names:
        net, meta = build_feature_net(name, mnist_dir=args.mnist, verbose=True)
        path = save_feature_net(net, args.out, meta)
        print(f"  wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
