"""``difflab export-diffusers``: a difflab run as a DDPMPipeline folder (needs the diffusers extra)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export-diffusers", help="write a run as a diffusers DDPMPipeline folder", description=(
        "Write RUN as a folder that DDPMPipeline.from_pretrained(DIR) loads: difflab's U-Net as a UNet2DModel and "
        "the run's DDPM table and prediction as a DDPMScheduler (a flow-matching run, --schedule flow --prediction "
        "flow, as a FlowMatchEulerDiscreteScheduler). Runs whose network does not map (an MLP, conditioning images "
        "or text, EDM preconditioning, another continuous-time schedule, ...) are refused with the reason "
        "(docs/interop.md)."))
    p.add_argument("--run", required=True, type=Path, metavar="RUN_DIR")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="pipeline folder to create")
    p.add_argument("--no-ema", action="store_true", help="export the raw weights instead of the EMA")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..interop.diffusers import export_run

    out = export_run(args.run, args.out, ema=not args.no_ema)
    print(f"wrote a DDPMPipeline to {out} (load it with DDPMPipeline.from_pretrained({str(out)!r}))")
    return 0
