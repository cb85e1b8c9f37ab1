"""``difflab import-diffusers``: a DDPMPipeline / DDIMPipeline folder becomes a difflab run (needs the diffusers extra)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import-diffusers", help="turn a diffusers DDPM/DDIM pipeline folder into a difflab run",
                       description=(
        "Read a folder written by DDPMPipeline.save_pretrained or DDIMPipeline.save_pretrained (model_index.json, "
        "unet/, scheduler/) and write a difflab run: the UNet2DModel's weights mapped onto difflab's U-Net, the "
        "scheduler's beta table as a difflab schedule, its prediction_type as the denoiser's prediction. The run "
        "then works with every difflab command and no longer needs diffusers (docs/interop.md)."))
    p.add_argument("src", type=Path, metavar="DIR", help="diffusers pipeline folder")
    p.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="run folder to create")
    p.add_argument("--data", metavar="SPEC", help="the dataset the model was trained on (e.g. digits), recorded so "
                                                  "that 'difflab evaluate' can compare against it")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..interop.diffusers import import_pipeline
    from ..training import load_run

    out = import_pipeline(args.src, args.out, data=args.data)
    loaded = load_run(out, device="cpu")
    m = loaded.model
    print(f"imported {args.src} into {out}: U-Net {loaded.shape}, schedule {m.schedule.config()['kind']} "
          f"T={m.schedule.T}, prediction {m.prediction}")
    return 0
