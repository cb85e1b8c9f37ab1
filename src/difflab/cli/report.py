"""``difflab report``: the trilemma table and plot for runs x samplers x step budgets."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

from ..data import load
from ..errors import UserError
from ._families import family_row, points_extras
from ..training.checkpoint import write_json
from . import _args

DEFAULT_METHODS = "ddim:10,ddim:50,ddpm:100,dpmpp_2m:10,dpmpp_2m:20,unipc:10,ipndm:5,ipndm:10,heun:20"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="quality / diversity / speed of runs across samplers", description=(
        "Sample every run with every method, score quality (FD), diversity (recall, coverage) and speed (NFE, "
        "seconds per 1000 samples), and write report.md, report.json and trilemma.png."))
    p.add_argument("--run", "--runs", type=Path, action="extend", nargs="+", required=True, metavar="RUN_DIR",
                   help="run folders of any registered family on the same data; a denoiser run is sampled with "
                        "every --methods entry, the others with their own sampler")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"sampler:steps list (default {DEFAULT_METHODS})")
    p.add_argument("--num", type=int, default=1000, help="samples per method (default 1000)")
    p.add_argument("--data", metavar="SPEC", help="reference data (default: the first run's data)")
    p.add_argument("--features", choices=["digits", "mnist", "inception", "dinov2"],
                   help="feature network (default: by image size); inception / dinov2 read local weights and cache "
                        "the reference features (docs/evaluation.md)")
    _args.add_weights_options(p)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for report.md and trilemma.png")
    p.add_argument("--seed", type=_args.seed, default=0)
    p.add_argument("--ref-num", type=int, default=10000, metavar="N",
                   help="score against the first N reference examples (default 10000; the k-NN metrics hold an "
                        "N x N distance matrix: all 60000 MNIST images need over 20 GB)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--device", type=_args.device, help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..evaluation import evaluate_features, evaluate_points, get_extractor
    from ..evaluation.report import parse_methods, write_report
    from ..evaluation.shards import PRETRAINED, data_features, pretrained_extractor, reference_features_cached
    from ..samplers import names
    from .evaluate import FEATURE_NETS

    if args.num < 10:
        raise UserError(f"--num must be at least 10, got {args.num}")
    methods = parse_methods(args.methods, names())
    from ..runs import DiffusionRun, load as load_run

    runs = [load_run(r, device=args.device) for r in args.run]
    ref = load(args.data or runs[0].config["data"])
    if args.ref_num < 10:
        raise UserError(f"--ref-num must be at least 10, got {args.ref_num}")
    if len(ref) > args.ref_num:  # only the first N rows are read (a packed set stays on disk)
        from ..data import Dataset

        ref = Dataset(ref.batch(torch.arange(args.ref_num)), None, ref.spec)
    for r, path in zip(runs, args.run):
        r.check_can_sample()
        if r.data_shape != ref.shape:  # a latent run: the decoded images
            raise UserError(f"{path} makes samples of shape {r.data_shape}, but {ref.spec} has {ref.shape}")
    if ref.kind == "image":
        name = args.features or FEATURE_NETS.get(ref.shape)
        if name is None:
            raise UserError(f"no built-in feature network for images of shape {ref.shape}; pass --features")
        if name in PRETRAINED:  # FID's Inception or FD-DINOv2's ViT from a local file; reference features cached
            extractor, net = pretrained_extractor(name, _args.weights_for(name, args), args.device)
            ref_features = reference_features_cached(ref, "train", extractor, net, len(ref))
        else:
            extractor = get_extractor(name)
            ref_features = data_features(ref, extractor)
    rows = []
    score = lambda x: (evaluate_features(extractor(x), ref_features) if ref.kind == "image"  # noqa: E731
                       else {**evaluate_points(x, ref.x), **points_extras(x, ref.spec)})
    for path, r in zip(args.run, runs):
        if not isinstance(r, DiffusionRun):  # a family with its own sampler: one row
            rows.append(family_row(path, r, args.num, args.seed, score, len(runs) > 1))
    jobs = [(path, r, s, k) for path, r in zip(args.run, runs) if isinstance(r, DiffusionRun) for s, k in methods]
    for path, r, sampler, steps in tqdm(jobs, desc="report", unit="method"):
        x, secs = r.timed_sample(args.num, args.seed, sampler=sampler, steps=steps)  # classes in turn if conditional
        label = f"{path.name} {sampler}:{steps}" if len(runs) > 1 else f"{sampler}:{steps}"
        rows.append({"method": label, "run": str(path), "family": r.family, "sampler": sampler, "steps": steps,
                     "nfe": r.nfe, "sec_per_1000": secs * 1000 / args.num, "params": r.num_params,
                     "marker": r.marker, "tuned_grid": r.last_tuned, **score(x)})
    command = "difflab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    md = write_report(rows, args.out, f"Trilemma on {ref.spec} ({args.num} samples per method)", command)
    write_json(args.out / "report.json", {"data": ref.spec, "rows": rows})
    print(md.read_text())
    return 0
