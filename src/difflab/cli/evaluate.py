"""``difflab evaluate``: sample-quality metrics (and likelihood) of a run or of a file of samples."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Dataset, load, to_unit
from ..errors import UserError
from ..training.checkpoint import write_json
from . import _args

FEATURE_NETS = {(1, 8, 8): "digits", (1, 28, 28): "mnist"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..runs import sampler_names

    p = sub.add_parser("evaluate", help="measure sample quality (and likelihood)", description=(
        "Score samples against data: for images FD, KID, precision/recall, density/coverage and class statistics in "
        "the feature space of a classifier trained on digits or MNIST; for 2-D data sliced Wasserstein, MMD, "
        "precision/recall. Prints a table and writes JSON."))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, metavar="RUN_DIR", help="sample from this run")
    src.add_argument("--samples", type=Path, metavar="FILE.npz",
                     help="samples written by `difflab sample` (an .npz, or a folder of shards, read one at a time)")
    p.add_argument("--data", metavar="SPEC", help="reference data (default: the run's data)")
    p.add_argument("--split", default="train", choices=["train", "test", "all"], help="reference split (default train)")
    p.add_argument("--num", type=int, default=1000, help="samples to draw from the run (default 1000)")
    p.add_argument("--sampler", choices=sampler_names(), help="a sampler the run's family accepts (default: the run's)")
    p.add_argument("--steps", type=int, help="sampling steps (default: the run's; 50 for diffusion runs)")
    _args.add_grid(p)
    p.add_argument("--seed", type=_args.seed, default=0)
    p.add_argument("--features", choices=["digits", "mnist", "inception", "dinov2"],
                   help="feature network (default: by image size); inception: FID's Inception-v3; dinov2: FD-DINOv2's "
                        "ViT (docs/evaluation.md)")
    _args.add_weights_options(p)
    p.add_argument("--ref-num", type=int, default=50_000,
                   help="reference images, a seeded subset if the split is larger (default 50000), read batch by batch")
    p.add_argument("--nll", action="store_true", help="also report the negative log-likelihood on the test split")
    p.add_argument("--nll-method", choices=["elbo", "ode"],
                   help="bound or probability-flow ODE (default: the run's first; refused where its family has none)")
    p.add_argument("--nll-num", type=int, default=300, help="test examples for --nll (default 300)")
    p.add_argument("--nll-num-t", type=int, default=100,
                   help="DDPM bound: stratified steps per example, an unbiased estimate (default 100; 0 = all T)")
    p.add_argument("--json", type=Path, metavar="FILE", help="where to write the results (default next to the input)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--device", type=_args.device, help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(handler=run)


def _load_samples(path: Path) -> torch.Tensor:
    """The 'images' (uint8 N x H x W x C) or 'samples' (float N x D) of an .npz file, at least 2 and all finite."""
    import zipfile

    if not path.is_file():
        raise UserError(f"--samples {path} does not exist")
    if not zipfile.is_zipfile(path):  # e.g. an .npy renamed: never handed to np.load as something else
        raise UserError(f"--samples {path} is not an .npz archive (write one with difflab sample --out FILE.npz)")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "images" in f:
                imgs = f["images"]
                if imgs.dtype != np.uint8 or imgs.ndim != 4:
                    raise UserError(f"{path}: 'images' must be uint8 N x H x W x C, got {imgs.dtype} {imgs.shape}")
                x = to_unit(imgs)
            elif "samples" in f:
                x = torch.from_numpy(np.asarray(f["samples"], dtype=np.float32))
            else:
                raise UserError(f"{path} has neither 'images' nor 'samples'")
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise UserError(f"{path} is not a readable .npz file ({e})") from None
    if x.ndim < 2 or len(x) < 2:
        raise UserError(f"--samples {path} holds {len(x) if x.ndim else 0} examples; the metrics need at least 2")
    return x


def metrics_for(x: torch.Tensor | Path, ref: Dataset, features: str | None, args: Any = None) -> dict[str, float]:
    """Image or point metrics of samples x (or a folder of shards) against the reference data."""
    from ..evaluation import evaluate_images, evaluate_points

    if not isinstance(x, Path) and tuple(x.shape[1:]) != ref.shape:
        raise UserError(f"samples have shape {tuple(x.shape[1:])} but {ref.spec} has {ref.shape}")
    if not isinstance(x, Path):
        bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
        if bad:
            raise UserError(f"{bad} of {len(x)} samples hold NaN or infinite values (a diverged model?); no metric "
                            "is computed from them")
    name = features or FEATURE_NETS.get(ref.shape)
    if name is None and ref.kind == "image":
        raise UserError(f"no built-in feature network for images of shape {ref.shape}; pass --features "
                        "digits|mnist|inception|dinov2 or use difflab.evaluation.evaluate_images with your own extractor")
    if name in ("inception", "dinov2") or isinstance(x, Path):  # local pretrained weights, or shards one at a time
        from ..evaluation.shards import evaluate_samples

        opt = {k: getattr(args, k, None) for k in ("ref_num", "device")}
        return evaluate_samples(x, ref, getattr(args, "split", "train"), name, weights=_args.weights_for(name, args),
                                ref_num=opt["ref_num"] or 50_000, device=opt["device"])
    if ref.kind == "points":
        return evaluate_points(x, ref.x)
    from ..evaluation import get_extractor
    from ..evaluation.shards import data_features

    extractor = get_extractor(name)
    reference = data_features(ref, extractor, getattr(args, "ref_num", None) or 50_000)  # read batch by batch
    return evaluate_images(x, reference, features=extractor)


def run(args: argparse.Namespace) -> int:
    result: dict[str, Any] = {}
    if args.nll_num_t < 0:
        raise UserError(f"--nll-num-t must be >= 0, got {args.nll_num_t}")
    for name in ("num", "steps", "nll_num", "ref_num"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.run is not None:
        from ..runs import load as load_run

        r = load_run(args.run, device=args.device)
        r.check_sampler(args.sampler, args.steps)
        r.check_grid(args.grid)
        if args.nll:
            r.check_nll(args.nll_method)
        ref = load(args.data or r.config["data"], args.split)
        grid = {"grid": args.grid} if args.grid else {}  # only diffusion runs take one (checked above)
        x, secs = r.timed_sample(args.num, args.seed, sampler=args.sampler, steps=args.steps, **grid)  # classes in turn
        result.update(source=str(args.run), family=r.family, sampler=args.sampler or r.default_sampler,
                      steps=args.steps or r.default_steps, nfe=r.nfe, seconds=secs,
                      tuned_grid=r.last_tuned, **grid)
        out_json = args.json or args.run / "evaluation.json"
    else:
        if args.nll:
            raise UserError("--nll needs --run (a model), not --samples")
        if not args.data:
            raise UserError("--samples needs --data SPEC (the reference data)")
        x = args.samples if args.samples.is_dir() else _load_samples(args.samples)
        ref = load(args.data, args.split)
        result.update(source=str(args.samples))
        out_json = args.json or args.samples.with_suffix(".json")
    result.update(data=ref.spec, split=args.split, metrics=metrics_for(x, ref, args.features, args))
    if args.nll:
        held_out = load(ref.spec, "test")
        test = held_out.batch(torch.arange(min(args.nll_num, len(held_out))))
        result["nll"] = r.nll(test, seed=args.seed, method=args.nll_method, num_t=args.nll_num_t or None)
    _print(result)
    write_json(Path(out_json), json.loads(json.dumps(result, default=float)))
    print(f"wrote {out_json}")
    return 0


def _print(result: dict[str, Any]) -> None:
    print(f"{'metric':<18} value")
    for k, v in result["metrics"].items():
        print(f"{k:<18} {v:.5g}")
    if "nfe" in result:
        print(f"{'nfe':<18} {result['nfe']}")
    if "nll" in result:
        r = result["nll"]
        print(f"{'nll (' + r['method'] + ')':<18} {r['nll']:.4f} +- {r['ci95']:.4f} {r['unit']}  "
              + "  ".join(f"{k} {v:.4f}" for k, v in r.get("terms", {}).items()))
