"""``difflab distill``: progressive distillation of a run into a student run that samples with DDIM in a few steps."""
from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

from ..errors import UserError
from . import _args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distil a run into a few-step student run", description=(
        "progressive (Salimans & Ho 2022): starting from DDIM on START Karras levels, each round trains a student "
        "whose one DDIM step matches two of its teacher's, halving the steps until --steps; 'difflab sample --run "
        "OUT --sampler ddim --steps N'. consistency (Song et al. 2023): a consistency function trained against one "
        "teacher ODE step between adjacent levels of LEVELS Karras levels, with an EMA target network; it samples "
        "in 1 to --steps calls: 'difflab sample --run OUT --sampler consistency --steps K'. OUT is a normal run; "
        "its grids are stored in OUT/grids.json."))
    p.add_argument("--run", required=True, type=Path, metavar="RUN_DIR", help="teacher run")
    p.add_argument("--method", choices=["progressive", "consistency"], default="progressive")
    p.add_argument("--prediction", choices=["v", "eps", "x0", "teacher"], default="v",
                   help="the student's parametrisation (default v, as Salimans & Ho 2022; 'teacher' keeps the teacher's)")
    p.add_argument("--steps", type=int, default=4, help="student's sampling steps (default 4)")
    p.add_argument("--start", type=int, default=64, help="progressive: teacher's DDIM steps in the first round (default 64)")
    p.add_argument("--levels", type=int, default=18, help="consistency: Karras levels N of the discretisation (default 18)")
    p.add_argument("--mu", type=float, default=0.95, help="consistency: EMA decay of the target network (default 0.95)")
    p.add_argument("--solver", choices=["heun", "euler"], default="heun", help="consistency: the teacher's ODE step")
    p.add_argument("--metric", choices=["pseudo_huber", "l2"], default="pseudo_huber", help="consistency: distance")
    p.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="student run folder to create")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--round-steps", type=int, default=500,
                        help="optimisation steps per round (consistency: in all; default 500)")
    budget.add_argument("--minutes", type=_args.positive_float, help="wall-clock budget of all rounds, split evenly")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=_args.seed, default=0)
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--device", type=_args.device, help="cpu, cuda, ... (default: cuda if available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..models.denoiser import Clamped
    from ..samplers import grids
    from ..training.checkpoint import CHECKPOINT, CONFIG, read_json, write_json
    from ..training.config import FitConfig
    from ..training.distill import as_student, distill_round
    from .tune_steps import GRIDS_FILE, key

    if (args.out / CHECKPOINT).exists():
        raise UserError(f"{args.out} already holds a run; choose another --out")
    if args.method == "consistency":
        return _consistency(args)
    if args.steps < 1 or args.start <= args.steps:
        raise UserError(f"--start ({args.start}) must exceed --steps ({args.steps}) >= 1")
    rounds = math.log2(args.start / args.steps)
    if rounds != int(rounds):
        raise UserError(f"--start / --steps must be a power of 2, got {args.start} / {args.steps}")
    loaded, data = _teacher(args)
    rounds = int(rounds)
    per_round = dict(minutes=args.minutes / rounds, steps=10**9) if args.minutes else dict(steps=args.round_steps)
    cfg = FitConfig(batch_size=args.batch_size, lr=args.lr, seed=args.seed, warmup_steps=0,
                    checkpoint_every=10**9, **per_round)
    torch.manual_seed(args.seed)
    teacher, sigmas = loaded.model, grids.karras(loaded.model.schedule, args.start)
    args.out.mkdir(parents=True, exist_ok=True)
    pred = loaded.model.prediction if args.prediction == "teacher" else args.prediction
    config = {**read_json(args.run / CONFIG), "prediction": pred, "distillation": {
        "method": "progressive", "teacher": str(args.run), "start": args.start, "steps": args.steps,
        "round": cfg.to_dict()}}
    for r in range(rounds):
        last = r == rounds - 1
        if last:
            write_json(args.out / CONFIG, config)
        targets = Clamped(teacher) if data.kind == "image" else teacher  # as sampling does: D at sigma_max is far off
        teacher, sigmas = distill_round(targets, data, sigmas, cfg, args.out if last else None,
                                        student=as_student(teacher, pred) if r == 0 else copy.deepcopy(teacher),
                                        progress=not args.quiet)
        print(f"round {r + 1}/{rounds}: student samples with DDIM in {len(sigmas) - 1} steps")
    entry = {"sampler": "ddim", "nfe": args.steps, "sigmas": [float(v) for v in sigmas], "distilled": True}
    write_json(args.out / GRIDS_FILE, {key("ddim", args.steps, m): {**entry, "denoised": m} for m in ("clip", "none")})
    print(f"wrote the student run {args.out}: difflab sample --run {args.out} --sampler ddim --steps {args.steps}")
    return 0


def _teacher(args: argparse.Namespace):
    """The teacher run of args.run and its training data; latent and conditional runs are refused."""
    from ..data import load
    from ..training import load_run

    loaded = load_run(args.run, device=args.device)
    if loaded.latent:
        raise UserError(f"{args.run} is a latent diffusion run; distill supports pixel runs")
    if loaded.conditioning.num_classes:
        raise UserError(f"{args.run} is conditional; distill supports unconditional runs")
    return loaded, load(loaded.config["data"])


def _consistency(args: argparse.Namespace) -> int:
    """Consistency distillation of args.run into args.out (Song et al. 2023, Alg. 2)."""
    import torch

    from ..models.denoiser import Clamped, ConsistencyDenoiser
    from ..samplers import grids
    from ..training.checkpoint import CONFIG, read_json, write_json
    from ..training.config import FitConfig
    from ..training.distill import as_student, distill_consistency
    from .tune_steps import GRIDS_FILE, key

    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.levels < 2:
        raise UserError(f"--levels must be >= 2, got {args.levels}")
    if not 0.0 <= args.mu < 1.0:
        raise UserError(f"--mu must lie in [0, 1), got {args.mu}")
    loaded, data = _teacher(args)
    budget = dict(minutes=args.minutes, steps=10**9) if args.minutes else dict(steps=args.round_steps)
    cfg = FitConfig(batch_size=args.batch_size, lr=args.lr, seed=args.seed, warmup_steps=0,
                    checkpoint_every=10**9, **budget)
    torch.manual_seed(args.seed)
    teacher = loaded.model
    pred = teacher.prediction if args.prediction == "teacher" else args.prediction
    sigma_data = float(data.x.float().std())
    base = as_student(teacher, pred)
    student = ConsistencyDenoiser(base.net, base.schedule, pred, sigma_data=sigma_data)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / CONFIG, {**read_json(args.run / CONFIG), "prediction": pred, "denoiser": "consistency",
                                   "distillation": {"method": "consistency", "teacher": str(args.run),
                                                    "levels": args.levels, "mu": args.mu, "solver": args.solver,
                                                    "metric": args.metric, "sigma_data": sigma_data,
                                                    "fit": cfg.to_dict()}})
    targets = Clamped(teacher) if data.kind == "image" else teacher  # as sampling does: D at sigma_max is far off
    distill_consistency(targets, data, grids.karras(teacher.schedule, args.levels), student, cfg, args.out,
                        progress=not args.quiet, mu=args.mu, solver=args.solver, metric=args.metric)
    entries = {}
    for k in range(1, args.steps + 1):
        g = grids.consistency(teacher.schedule, k)
        for m in ("clip", "none"):
            entries[key("consistency", k, m)] = {"sampler": "consistency", "nfe": k, "sigmas": [float(v) for v in g],
                                                 "distilled": True, "denoised": m}
    write_json(args.out / GRIDS_FILE, entries)
    print(f"wrote the student run {args.out}: difflab sample --run {args.out} --sampler consistency --steps K "
          f"(K = 1..{args.steps})")
    return 0
