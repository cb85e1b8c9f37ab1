"""``difflab distill``: progressive distillation of a run into a student run that samples with DDIM in a few steps."""
from __future__ import annotations

import argparse
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
                   help="the student's parametrisation (default v, as Salimans & Ho 2022; the first student then reads "
                        "the teacher's network as v, so it starts as the teacher only for a v teacher; 'teacher' keeps "
                        "the teacher's and starts as the teacher exactly)")
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

    from ..training.checkpoint import CHECKPOINT, CONFIG, read_json
    from ..training.distill import distill_progressive, progressive_rounds

    if (args.out / CHECKPOINT).exists():
        raise UserError(f"{args.out} already holds a run; choose another --out")
    if args.method == "consistency":
        return _consistency(args)
    if args.steps < 1 or args.start <= args.steps:
        raise UserError(f"--start ({args.start}) must exceed --steps ({args.steps}) >= 1")
    if args.start % args.steps or (args.start // args.steps) & (args.start // args.steps - 1):
        raise UserError(f"--start / --steps must be a power of 2, got {args.start} / {args.steps}")
    rounds = progressive_rounds(args.start, args.steps)
    loaded, data = _teacher(args)
    budget = dict(minutes=args.minutes / rounds, steps=10**9) if args.minutes else dict(steps=args.round_steps)
    torch.manual_seed(args.seed)
    _say_start(loaded.model, _prediction(args))
    distill_progressive(loaded.model, data, args.out, read_json(args.run / CONFIG), _fit_config(args, budget),
                        start=args.start, steps=args.steps, prediction=_prediction(args), source=args.run,
                        progress=not args.quiet, log=print)
    print(f"wrote the student run {args.out}: difflab sample --run {args.out} --sampler ddim --steps {args.steps}")
    return 0


def _say_start(teacher, pred: str | None) -> None:
    """One line when the first student does not start as the teacher's function (another parametrisation)."""
    from ..training.distill import starts_as_teacher

    pred = pred or teacher.prediction
    if not starts_as_teacher(teacher, pred):
        print(f"the first {pred} student reads the {teacher.prediction} teacher's network as {pred}: it starts from "
              f"the teacher's weights, not from its function (--prediction teacher starts it as the teacher)")


def _prediction(args: argparse.Namespace) -> str | None:
    """The student's parametrisation (None: the teacher's)."""
    return None if args.prediction == "teacher" else args.prediction


def _fit_config(args: argparse.Namespace, budget: dict):
    """The optimisation settings of one round (progressive) or of the whole run (consistency)."""
    from ..training.config import FitConfig

    return FitConfig(batch_size=args.batch_size, lr=args.lr, seed=args.seed, warmup_steps=0,
                     checkpoint_every=10**9, **budget)


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

    from ..training.checkpoint import CONFIG, read_json
    from ..training.distill import distill_consistency_run

    if args.steps < 1:
        raise UserError(f"--steps must be >= 1, got {args.steps}")
    if args.levels < 2:
        raise UserError(f"--levels must be >= 2, got {args.levels}")
    if not 0.0 <= args.mu < 1.0:
        raise UserError(f"--mu must lie in [0, 1), got {args.mu}")
    loaded, data = _teacher(args)
    budget = dict(minutes=args.minutes, steps=10**9) if args.minutes else dict(steps=args.round_steps)
    torch.manual_seed(args.seed)
    _say_start(loaded.model, _prediction(args))
    distill_consistency_run(loaded.model, data, args.out, read_json(args.run / CONFIG), _fit_config(args, budget),
                            levels=args.levels, steps=args.steps, prediction=_prediction(args), source=args.run,
                            progress=not args.quiet, mu=args.mu, solver=args.solver, metric=args.metric)
    print(f"wrote the student run {args.out}: difflab sample --run {args.out} --sampler consistency --steps K "
          f"(K = 1..{args.steps})")
    return 0
