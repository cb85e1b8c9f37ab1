"""The gan / vae / ddgan branch of ``difflab sample``: the run's own sampler (its NFE is fixed by the family)."""
from __future__ import annotations

import argparse

import torch

from ..errors import UserError


def sample_family(args: argparse.Namespace) -> int:
    """Draw --num samples of a family run into a PNG grid / scatter or an NPZ file."""
    from ..training.families import load_generator

    loaded = load_generator(args.run, ema=not args.no_ema, device=args.device)
    for opt, default in (("sampler", "ddim"), ("steps", 50)):
        if getattr(args, opt, default) != default:
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
    return row
