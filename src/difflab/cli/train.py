"""``difflab train``: fit a denoiser on a dataset spec into a run folder."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Callable

from ..data import load
from ..errors import UserError
from ..training import TrainConfig, distributed, train
from ..training.checkpoint import CONFIG, read_json
from ..training.recipes import RECIPE_NAMES, recipe
from ..utils.config import ConfigError, read_config_file
from . import _args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a diffusion model", description=(
        "Train a denoiser (L_simple / denoising score matching) and write a run folder with config.json, "
        "checkpoint.safetensors, log.csv, loss.png and samples.png."))
    p.add_argument("--data", metavar="SPEC",
                   help="digits | toy:NAME (swiss_roll, moons, 8gaussians, 25gaussians, checkerboard, pinwheel, rings) | "
                        "mnist:DIR | path to a folder of PNG/JPEG images (with --resume: the run's own data by default)")
    p.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="run folder to create (or resume)")
    from ..training.families import DEFAULT_FAMILY, FAMILIES

    p.add_argument("--family", choices=list(FAMILIES), default=DEFAULT_FAMILY,
                   help=f"model family (default {DEFAULT_FAMILY}; see docs/families.md)")
    p.add_argument("--timesteps", type=int, metavar="T", help="--family ddgan: denoising steps (default 4)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="total optimisation steps")
    budget.add_argument("--minutes", type=_args.positive_float, help="wall-clock budget of this invocation")
    p.add_argument("--batch-size", type=int, help="examples per step (default 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--seed", type=_args.seed, help="random seed (default 0)")
    p.add_argument("--config", type=Path, metavar="FILE", help="JSON file with TrainConfig fields")
    p.add_argument("--conditional", action="store_true", default=None, help="train on the dataset's class labels")
    p.add_argument("--text-encoder", type=_args.text_encoder, metavar="small|minilm|clip:PATH",
                   help="condition on captions through this text encoder (implies --conditional): a captioned "
                        "folder's own (docs/data.md), or captions made from digit labels; clip:PATH is a CLIP text "
                        "model in a local folder (never downloaded; its absolute path is stored in the run)")
    p.add_argument("--sample-every", type=int, metavar="N", help="write a preview grid every N steps")
    p.add_argument("--task", choices=["generate", "superres", "inpaint", "colorize"],
                   help="superres: SR3, conditioned on the 1/--scale image upsampled; inpaint: conditioned on a masked "
                        "image and its random box/stroke/half mask; colorize: conditioned on the grayscale image "
                        "(docs/tasks.md; default generate)")
    p.add_argument("--scale", type=int, help="--task superres: integer down-sampling factor (default 2)")
    p.add_argument("--noise-aug", action="store_true", default=None,
                   help="--task superres: noise-conditioning augmentation (Gaussian noise and blur) of the low-res "
                        "condition, its level a second condition (Ho et al. 2022)")
    p.add_argument("--aug-blur", type=float, metavar="STD",
                   help="--noise-aug: blur std of the low-res image at level 1, in low-res pixels (default 0.5; 0: noise only)")
    p.add_argument("--autoencoder", metavar="DIR",
                   help="latent diffusion: train on the scaled latents of this difflab train-autoencoder folder "
                        "(docs/latent.md)")
    p.add_argument("--image-size", type=int, default=32, help="side of images loaded from a folder (default 32)")
    p.add_argument("--channels", type=int, choices=[1, 3],
                   help="channels of images loaded from a folder (default: 3 if any file is in colour, else 1)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--device", type=_args.device, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--accumulate", type=int, metavar="K",
                   help="split each step's batch into K micro-batches (gradient accumulation; same result)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast precision (fp16: CUDA only)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    p.add_argument("--lr-schedule", choices=["constant", "cosine", "linear"], help="LR after warm-up (default constant)")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train with N processes on this machine (torchrun; gloo on CPU, NCCL on CUDA)")
    p.add_argument("--logger", choices=["csv", "tensorboard"],
                   help="tensorboard: also log losses, LR, samples/s and previews to RUN/tensorboard (extra 'tensorboard')")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _recipe_args(p)
    p.set_defaults(handler=run)


def _recipe_args(p: argparse.ArgumentParser) -> None:
    """The parameterisation of a diffusion run: schedule, prediction, training noise, weighting, post-hoc EMA."""
    from ..losses import NOISE_DISTRIBUTIONS, WEIGHTINGS
    from ..models.denoiser import PREDICTIONS

    p.add_argument("--schedule", metavar="KIND", help="noise schedule kind, e.g. flow (rectified flow), vp, ve, cosine")
    p.add_argument("--prediction", choices=PREDICTIONS, help="network output (edm: EDM preconditioning; flow: eps - x0)")
    p.add_argument("--noise", choices=NOISE_DISTRIBUTIONS, help="training noise levels (lognormal: EDM; logit_normal: SD3)")
    p.add_argument("--weighting", choices=WEIGHTINGS, help="loss weighting (edm: Karras et al. 2022)")
    p.add_argument("--recipe", choices=RECIPE_NAMES,
                   help="the parameterisation to start from (default auto: flow matching for images, with the "
                        "pixel-unshuffle U-Net from side 16; flow matching with Euler-Maruyama for latents; ddpm for points "
                        "and image-to-image tasks; "
                        "docs/training.md); the options below override its fields")
    p.add_argument("--posthoc-ema", type=float, nargs="+", metavar="SIGMA_REL",
                   help="track power-function EMAs of these lengths for `difflab ema` (e.g. 0.05 0.1)")


def _recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields of the _recipe_args options; a DDPM table kind (linear, cosine, ...) gets T = 1000 steps."""
    from ..schedules import names

    sched = None if args.schedule is None else \
        {"kind": args.schedule, **({"T": 1000} if args.schedule in names(discrete=True) else {})}
    return {"schedule": sched, "prediction": args.prediction, "noise": args.noise, "weighting": args.weighting,
            "posthoc_ema": args.posthoc_ema}


def run(args: argparse.Namespace) -> int:
    if args.nproc is not None:
        return launch(args.nproc)
    if args.image_size < 4:
        raise ConfigError(f"--image-size must be at least 4, got {args.image_size}")
    if args.data is None:
        _data_of_run(args)
    from ..training.families import DEFAULT_FAMILY

    if args.family != DEFAULT_FAMILY:
        return run_family(args)
    overrides = _engine_overrides(args) | {
        "conditional": True if args.text_encoder else args.conditional, "sample_every": args.sample_every, "text_encoder": args.text_encoder,
        "autoencoder": args.autoencoder, "task": args.task, "scale": args.scale, "noise_aug": args.noise_aug,
        "aug_blur": args.aug_blur} | _recipe_overrides(args)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    resumed = args.resume and (args.out / CONFIG).is_file()
    if args.recipe is not None and resumed:
        raise UserError("--recipe applies to a new run; a resumed run keeps the recipe in its config.json")

    def recipe_config(data: Any) -> TrainConfig:
        """The run's recipe: the stored one when resuming; else --recipe (auto: by the data's size), then the
        --config file, then the options."""
        if resumed:
            return TrainConfig.resumed(read_json(args.out / CONFIG), overrides, str(args.out / CONFIG),
                                       more_minutes=args.minutes is not None and args.steps is None)
        from_file = read_config_file(args.config) if args.config is not None else {}
        latent = bool(overrides.get("autoencoder") or from_file.get("autoencoder"))
        base = recipe(args.recipe or "auto", data.shape, task=overrides.get("task", from_file.get("task", "generate")),
                      latent=latent, given=[*from_file, *overrides])
        merged = _merge(_merge(base, from_file), overrides)
        if latent and "schedule" not in from_file and "schedule" not in overrides and \
                merged.get("prediction", TrainConfig.prediction) == "eps":
            from ..training.latent import LATENT_SCHEDULE

            merged["schedule"] = LATENT_SCHEDULE  # eps prediction on latents: LDM's bounded table (docs/latent.md)
        return TrainConfig.from_dict(merged, where=str(args.config) if args.config else "")

    res, main = _fit(args, lambda data, world: train(recipe_config(data), data, args.out, resume=args.resume,
                                                     progress=not args.quiet, world=world))
    if main and res.stopped != "terminated":
        print(f"trained {res.step} steps in {res.seconds:.0f} s (last loss {res.last_loss:.4f}); "
              f"run folder {res.run_dir} (samples.png, loss.png, checkpoint.safetensors)")
    return 143 if res.stopped == "terminated" else 0


def run_family(args: argparse.Namespace) -> int:
    """``--family gan|vae|ddgan``: the family's recipe (its config file, then the options) trained by the engine."""
    from ..training.families import family_class, train_family
    from ..utils.config import read_config_file

    cls = family_class(args.family)
    if args.task is not None or args.scale is not None or args.noise_aug is not None or args.aug_blur is not None:
        raise UserError(f"--task and --scale are options of diffusion runs, not --family {args.family}")
    if args.autoencoder is not None:
        raise UserError(f"--autoencoder is an option of diffusion runs, not --family {args.family}")
    if args.text_encoder is not None or args.sample_every is not None:
        raise UserError(f"--text-encoder and --sample-every are options of diffusion runs, not --family {args.family}")
    fields = {f.name for f in dataclasses.fields(cls.recipe)}  # what the family's recipe can be told
    if args.timesteps is not None and "timesteps" not in fields:
        raise UserError(f"--timesteps is an option of families with denoising steps (ddgan), not {args.family}")
    if "conditional" not in fields and args.conditional:
        raise UserError(f"--conditional: the {args.family} family is unconditional")
    overrides = _engine_overrides(args) | {"conditional": args.conditional, "timesteps": args.timesteps}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.resume and (args.out / CONFIG).is_file():
        cfg = cls.recipe.resumed(read_json(args.out / CONFIG), overrides, str(args.out / CONFIG))
    elif args.config is not None:
        cfg = cls.recipe.from_dict({**read_config_file(args.config), **overrides}, where=str(args.config))
    else:
        cfg = cls.recipe.from_dict(overrides)
    res, main = _fit(args, lambda data, world: train_family(args.family, cfg, data, args.out, resume=args.resume,
                                                            progress=not args.quiet, world=world))
    if main and res.stopped != "terminated":
        losses = ", ".join(f"{k} {v:.4f}" for k, v in res.losses.items())
        print(f"trained {args.family} {res.step} steps in {res.seconds:.0f} s ({losses}); run folder {res.run_dir}")
    return 143 if res.stopped == "terminated" else 0  # 128 + SIGTERM: stopped at a checkpoint


def _data_of_run(args: argparse.Namespace) -> None:
    """``--resume`` without ``--data``: the run's own data spec, image size and channels (from its config.json)."""
    if not (args.resume and (args.out / CONFIG).is_file()):
        raise UserError("--data is required (it may be left out only with --resume of an existing run)")
    stored = read_json(args.out / CONFIG)
    if "data" not in stored:
        raise UserError(f"{args.out / CONFIG} names no data; pass --data")
    args.data = stored["data"]
    shape = stored.get("shape") or []
    if len(shape) == 3:  # images: the size and channels a folder is loaded at
        args.channels, args.image_size = args.channels or int(shape[0]), int(shape[1])


def _merge(base: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``more``; the network's overrides are merged key by key (a kind change starts afresh)."""
    out = {**base, **more}
    net_a, net_b = base.get("network"), more.get("network")
    if isinstance(net_a, dict) and isinstance(net_b, dict):
        same = net_b.get("kind", net_a.get("kind", "auto")) == net_a.get("kind", "auto")
        out["network"] = {**net_a, **net_b} if same else net_b
    return out


def _engine_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's fields given on the command line; a --minutes budget makes the step count an upper bound."""
    out = {"steps": args.steps, "minutes": args.minutes, "batch_size": args.batch_size, "lr": args.lr,
           "seed": args.seed, "accumulate": args.accumulate, "precision": args.precision, "compile": args.compile,
           "lr_schedule": args.lr_schedule, "logger": args.logger}
    if args.steps is not None:
        out["minutes"] = 0.0
    if args.minutes is not None and args.steps is None:
        out["steps"] = TrainConfig.steps
    return out


def _fit(args: argparse.Namespace, fit: Callable[[Any, Any], Any]) -> tuple[Any, bool]:
    """Load the data, join the processes, train: (the result, whether this is rank 0), after all have left."""
    data = load(args.data, "train", image_size=args.image_size, channels=args.channels)
    world = distributed.init(args.device)
    try:
        res = fit(data, world)
    except BaseException:
        distributed.shutdown(clean=False)
        raise
    distributed.shutdown()
    if res.stopped == "terminated" and world.main:
        print(f"difflab: terminated (SIGTERM) at step {res.step}; checkpoint written to {res.run_dir}; "
              f"continue with --resume", file=sys.stderr)
    return res, world.main


def launch(nproc: int) -> int:
    """Re-run this command with nproc processes on this machine (the arguments without --nproc), through torch's
    elastic launcher (:func:`difflab.training.distributed.relaunch`)."""
    if nproc < 1:
        raise UserError(f"--nproc must be at least 1, got {nproc}")
    if distributed.launched():
        raise UserError("--nproc inside torchrun: launch either with torchrun or with --nproc, not both")
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            argv.append(a)
    return distributed.relaunch(nproc, argv)
