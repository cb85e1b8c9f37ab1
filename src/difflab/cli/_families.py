"""The gan / vae / ddgan / lsgm branch of ``difflab sample``, ``evaluate`` and ``report``: the run's own sampler (its NFE
is fixed by the family, or measured for lsgm's adaptive ODE solver)."""
from __future__ import annotations

import argparse

import torch

from ..errors import UserError


def sample_family(args: argparse.Namespace) -> int:
    """Draw --num samples of a family run into a PNG grid / scatter or an NPZ file."""
    from ..training.families import load_generator

    loaded = load_generator(args.run, ema=not args.no_ema, device=args.device)
    lsgm_sampler(loaded, args)
    for opt, default in (("sampler", "ddim"), ("steps", 50)):
        if loaded.family not in ("lsgm", "cld") and getattr(args, opt, default) != default:
            raise UserError(f"--{opt}: a {loaded.family} run has its own sampler ({loaded.nfe} network call(s) "
                            f"per sample); drop --{opt}")
    labels = None
    if args.label is not None:
        if not 0 <= args.label < max(loaded.num_classes, 1):
            raise UserError(f"--label {args.label}: the run in {args.run} "
                            + (f"has classes 0..{loaded.num_classes - 1}" if loaded.num_classes
                               else "is not class-conditional"))
        labels = torch.full((args.num,), args.label, dtype=torch.long)
    x = loaded.sample(args.num, args.seed, labels, args.batch_size)
    image = len(loaded.shape) == 3
    if image:
        x = x.clamp(-1, 1)
    from .sample import write_samples

    write_samples(x, args.out, image)
    print(f"wrote {args.num} samples of the {loaded.family} run ({loaded.nfe} network call(s) each) to {args.out}")
    return 0


def points_extras(x: torch.Tensor, spec: str) -> dict[str, float]:
    """For the 25-Gaussian grid: modes covered and the high-quality fraction (within 3 std of a centre)."""
    if spec != "toy:25gaussians":
        return {}
    from ..data.toy import GRID_STD, grid_centers
    from ..evaluation.modes import mode_coverage

    return mode_coverage(x, grid_centers(), GRID_STD)


def family_row(path, loaded, num: int, seed: int, score, prefix: bool) -> dict:
    """The report row of a gan / vae / ddgan run: its samples scored, NFE, seconds per 1000, size (and the VAE's ELBO)."""
    from ..data import load

    x, secs = loaded.timed_sample(num, seed)
    if len(loaded.shape) == 3:
        x = x.clamp(-1, 1)
    label = path.name if prefix else (loaded.family if loaded.family != "ddgan" else f"ddgan T={loaded.nfe}")
    row = {"method": label, "run": str(path), "family": loaded.family, "sampler": loaded.family, "steps": loaded.nfe,
           "nfe": loaded.nfe, "sec_per_1000": secs * 1000 / num, "params": loaded.num_params, **score(x)}
    if loaded.family == "vae":  # the negative ELBO on the test split (bits/dim for images, nats for points)
        from ..training.vae import vae_nll

        row["nll"] = vae_nll(loaded.modules["model"], load(loaded.config["data"], "test").x[:2000], seed)
    if loaded.family == "lsgm":  # the LSGM bound (DSM cross entropy) on 500 test images
        from ..training.lsgm import lsgm_nll

        row["nll"] = lsgm_nll(loaded.modules, loaded.recipe, load(loaded.config["data"], "test").x[:500], seed=seed)["nll"]
    return row


def lsgm_sampler(loaded, args: argparse.Namespace) -> None:
    """An lsgm run's latent sampler from --sampler and --steps (defaults: the run's recipe; dopri5 / heun / euler
    integrate to t_eps, the others run over the prior as over any denoiser)."""
    import dataclasses

    if loaded.family not in ("lsgm", "cld"):
        return
    sampler, steps = getattr(args, "sampler", "ddim"), getattr(args, "steps", 50)
    if loaded.family == "cld":  # em | sscs | ode on (x, v) (samplers/cld.py); the scalar samplers refuse CLD
        from ..samplers.cld import CLD_SAMPLERS

        if sampler != "ddim" and sampler not in CLD_SAMPLERS:
            raise UserError(f"--sampler {sampler}: a cld run samples with {', '.join(CLD_SAMPLERS)}")
        if steps < 2:
            raise UserError(f"--steps {steps}: a cld sampler needs at least 2 score calls")
    changes = {}
    if sampler != "ddim":
        changes["sampler"] = sampler
    if steps != 50:
        changes["sample_steps"] = steps
    loaded.recipe = dataclasses.replace(loaded.recipe, **changes)


def evaluate_family(args: argparse.Namespace) -> int:
    """``difflab evaluate --run`` of a gan / vae / ddgan / lsgm run: metrics of its samples; --nll for lsgm (the LSGM bound)."""
    import json
    from pathlib import Path

    from ..data import load
    from ..training.checkpoint import write_json
    from ..training.families import load_generator
    from .evaluate import metrics_for

    loaded = load_generator(args.run, device=args.device)
    lsgm_sampler(loaded, args)
    if args.nll and loaded.family not in ("lsgm", "cld"):
        raise UserError(f"--nll: a {loaded.family} run has no likelihood here (the vae's ELBO is in `difflab report`)")
    ref = load(args.data or loaded.config["data"], args.split)
    x, secs = loaded.timed_sample(args.num, args.seed)
    if len(loaded.shape) == 3:
        x = x.clamp(-1, 1)
    result = {"source": str(args.run), "family": loaded.family, "nfe": loaded.nfe, "seconds": secs, "data": ref.spec,
              "split": args.split, "metrics": metrics_for(x, ref, args.features, args)}
    if args.nll and loaded.family == "cld":  # the probability-flow ODE bound on (x, v) (likelihood/cld.py)
        result["nll"] = loaded_cls(loaded).nll(loaded.modules, loaded.recipe, load(ref.spec, "test").x[:args.nll_num],
                                               seed=args.seed)
    elif args.nll:
        from ..training.lsgm import lsgm_nll

        test = load(ref.spec, "test").x[:args.nll_num]
        result["nll"] = lsgm_nll(loaded.modules, loaded.recipe, test, method=args.nll_method, seed=args.seed)
    print(f"{'metric':<18} value")
    for k, v in result["metrics"].items():
        print(f"{k:<18} {v:.5g}")
    print(f"{'nfe':<18} {loaded.nfe}")
    if "nll" in result:
        r = result["nll"]
        print(f"{'nll (' + r['method'] + ')':<18} {r['nll']:.4f} +- {r['ci95']:.4f} {r['unit']}  "
              + "  ".join(f"{k} {v:.4f}" for k, v in r["terms"].items()))
    out_json = Path(args.json or args.run / "evaluation.json")
    write_json(out_json, json.loads(json.dumps(result, default=float)))
    print(f"wrote {out_json}")
    return 0


def loaded_cls(loaded) -> type:
    """The family class of a loaded family run."""
    from ..training.families import FAMILIES

    return FAMILIES[loaded.family]
