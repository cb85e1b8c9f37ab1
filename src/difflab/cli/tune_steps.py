"""``difflab tune-steps``: tune a sampler's step grid to a run for a budget of model calls; stored in RUN/grids.json."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..data.domain import domain_of
from ..errors import UserError
from ..samplers.tuned import GRIDS_FILE, denoised_mode, entry, key, merged, read_grids, run_grid, wrap
from ..training.checkpoint import write_json
from . import _args


def tuned_sigmas(run: Path, sampler: str, nfe: int, mode: str) -> torch.Tensor | None:
    """The stored grid for (sampler, nfe, mode), or None (:func:`difflab.samplers.tuned.run_grid`)."""
    return run_grid(run, sampler, nfe, mode)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..samplers import names

    p = sub.add_parser("tune-steps", help="tune a sampler's step grid to a run (stored in RUN/grids.json)",
                       description=(
        "Choose the noise levels of a sampler for a budget of model calls against an accurate teacher solution on "
        "a calibration batch (GITS dynamic programming, Chen et al. 2024, then a local search on the sampler's own "
        "endpoint error). The grid is stored in RUN/grids.json and used by 'difflab sample' for that sampler and "
        "--steps."))
    p.add_argument("--run", required=True, type=Path, metavar="RUN_DIR")
    p.add_argument("--sampler", required=True, choices=[n for n in names("ode") if n != "dopri5"])
    p.add_argument("--nfe", required=True, type=int, help="budget of model calls")
    p.add_argument("--num", type=int, default=64, help="calibration batch (default 64)")
    p.add_argument("--seed", type=_args.seed, default=0)
    p.add_argument("--max-evals", type=int, default=150, help="sampler runs in the search (default 150)")
    p.add_argument("--no-clip", action="store_true", help="tune for 'sample --no-clip'")
    p.add_argument("--threshold", type=float, metavar="P", help="tune for 'sample --threshold P'")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--device", type=_args.device, help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..samplers import tune_grid
    from ..training import load_run

    for name in ("nfe", "num", "max_evals"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.threshold is not None and not 0.0 < args.threshold <= 1.0:
        raise UserError(f"--threshold must lie in (0, 1], got {args.threshold}")
    loaded = load_run(args.run, ema=not args.no_ema, device=args.device)
    domain = domain_of(loaded)  # images are clamped while sampling, latents and points never
    mode = domain.denoised_mode(args.no_clip, args.threshold)
    model = domain.denoiser(loaded.model, args.no_clip, args.threshold)
    device = next(loaded.model.parameters()).device
    x_T = model.schedule.sample_prior((args.num, *loaded.shape), generator=torch.Generator().manual_seed(args.seed),
                                      device=device)
    t0 = time.perf_counter()
    tg = tune_grid(model, args.sampler, args.nfe, x_T, cond=loaded.conditioning.preview(args.num, device),
                   max_evals=args.max_evals)
    new = {**tg.to_dict(), "num": args.num, "seed": args.seed, "denoised": mode,
           "seconds": round(time.perf_counter() - t0, 1)}
    write_json(args.run / GRIDS_FILE, merged(args.run, {key(args.sampler, args.nfe, mode): new}))
    print(f"{args.sampler} at {tg.nfe} calls: endpoint RMSE {tg.objective:.4g} against {tg.default_objective:.4g} "
          f"on the default grid ({args.num} calibration samples, {time.perf_counter() - t0:.0f} s); "
          f"sigmas {', '.join(f'{v:.3g}' for v in tg.sigmas.tolist())}; stored in {args.run / GRIDS_FILE}")
    return 0


__all__ = ["GRIDS_FILE", "key", "denoised_mode", "wrap", "read_grids", "tuned_sigmas", "entry", "add_parser", "run"]
