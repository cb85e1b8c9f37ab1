"""``difflab ema``: a run with the post-hoc EMA of any length, reconstructed from the run's EMA snapshots."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ema", help="a copy of a run with the post-hoc EMA of a chosen length", description=(
        "Reconstruct the power-function EMA of relative length --length (sigma_rel, e.g. 0.1) from the snapshots "
        "of RUN/ema/ (a run trained with posthoc_ema, Karras et al. 2024) and write a run folder that holds it as "
        "its EMA weights (docs/training.md)."))
    p.add_argument("--run", required=True, type=Path, metavar="RUN_DIR")
    p.add_argument("--length", required=True, type=float, metavar="SIGMA_REL",
                   help="EMA length relative to the training time, in (0, 0.2887)")
    p.add_argument("--step", type=int, help="reconstruct at this step (default: the last snapshot)")
    p.add_argument("--out", type=Path, metavar="RUN_DIR", help="run folder to create (default: RUN_DIR-ema<length>)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..training.ema import write_posthoc_run

    out, result = write_posthoc_run(args.run, args.length, args.out, args.step)
    print(f"wrote {out} with the post-hoc EMA sigma_rel = {args.length:g} at step {result.step} "
          f"(profile fit: relative residual {result.residual:.3g})")
    if result.residual > 0.1:
        print("difflab: warning: the snapshots fit this EMA length poorly; lengths between the tracked ones "
              "(posthoc_ema) and more frequent snapshots (posthoc_every) fit better", file=sys.stderr)
    return 0
