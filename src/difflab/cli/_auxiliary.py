"""Arguments and config handling shared by the commands that train guidance models (classifier, CLIP)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..training.checkpoint import CHECKPOINT, CONFIG, read_json
from ..utils.config import read_config_file
from . import _args


def add_arguments(p: argparse.ArgumentParser, what: str, config_class: str, batch_help: str) -> None:
    """--data, --out, --run, --steps | --minutes, --batch-size, --seed, --config, --quiet."""
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help=f"{what} folder to create")
    p.add_argument("--run", type=Path, metavar="RUN_DIR",
                   help="diffusion run whose noise schedule to train under")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="optimisation steps (default 2000)")
    budget.add_argument("--minutes", type=_args.positive_float, help="wall-clock budget")
    p.add_argument("--batch-size", type=int, help=f"{batch_help} per step (default 128)")
    p.add_argument("--seed", type=_args.seed, help="random seed (default 0)")
    p.add_argument("--config", type=Path, metavar="FILE", help=f"JSON file with {config_class} fields")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def config_fields(args: argparse.Namespace, **overrides: Any) -> dict[str, Any]:
    """Config fields from --config, the schedule of --run and the command-line overrides (refuses an existing --out)."""
    if (args.out / CHECKPOINT).exists():
        raise UserError(f"{args.out} already holds a checkpoint; choose another --out")
    fields = read_config_file(args.config) if args.config is not None else {}
    if args.run is not None:
        fields["schedule"] = read_json(args.run / CONFIG).get("schedule", fields.get("schedule"))
    overrides = {"steps": args.steps, "minutes": args.minutes, "batch_size": args.batch_size, "seed": args.seed,
                 **overrides}
    if args.minutes is not None:
        overrides["steps"] = 10**9
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return fields
