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
    p.add_argument("--guidance", metavar="W,W,...",
                   help="text runs: classifier-free guidance scales, one row per method and scale, with the text "
                        "alignment of each (prompt accuracy where prompts name a digit or colour; --clip alignment), "
                        "e.g. 0,1,2,4 (default: 0 when --clip is given)")
    p.add_argument("--clip", type=Path, metavar="RUN_DIR",
                   help="a difflab train-clip folder: alignment = mean cosine of its image and prompt embeddings")
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
    scales = _scales(args.guidance) if args.guidance is not None else ([0.0] if args.clip is not None else None)
    if scales is not None:
        for r, path in zip(runs, args.run):
            if not isinstance(r, DiffusionRun) or r.conditioning.kind != "captions":
                raise UserError(f"--guidance/--clip measure text alignment; {path} is not a text-conditional run")
            if not r.conditioning.preview_prompts():
                raise UserError(f"--guidance/--clip: {path} stores no captions to ask for (a run saved before they "
                                "were stored); retrain or resume it")
    first = tuple(runs[0].data_shape)
    ref = load(args.data or runs[0].config["data"], image_size=first[-1] if len(first) == 3 else None)  # folders: the run's size
    if args.ref_num < 10:
        raise UserError(f"--ref-num must be at least 10, got {args.ref_num}")
    if len(ref) > args.ref_num:  # only the first N rows are read (a packed set stays on disk)
        from ..data import Dataset

        ref = Dataset(ref.batch(torch.arange(args.ref_num)), None, ref.spec)
    for r, path in zip(runs, args.run):
        r.check_can_sample()
        if r.data_shape != ref.shape:  # a latent run: the decoded images
            raise UserError(f"{path} makes samples of shape {r.data_shape}, but {ref.spec} has {ref.shape}")
    prepare = lambda x: x  # noqa: E731
    title_note = ""
    if ref.kind == "image":
        from ..evaluation.alignment import ink

        name = args.features or FEATURE_NETS.get(ref.shape)
        if name is None and ref.shape[0] == 3 and (1, *ref.shape[1:]) in FEATURE_NETS:
            name, prepare, title_note = FEATURE_NETS[(1, *ref.shape[1:])], ink, ", features of the brightest channel"
        if name is None:
            raise UserError(f"no built-in feature network for images of shape {ref.shape}; pass --features")
        if name in PRETRAINED:  # FID's Inception or FD-DINOv2's ViT from a local file; reference features cached
            extractor, net = pretrained_extractor(name, _args.weights_for(name, args), args.device)
            ref_features = reference_features_cached(ref, "train", extractor, net, len(ref))
        else:
            extractor = get_extractor(name)
            ref_features = data_features(ref, extractor) if title_note == "" else extractor(prepare(ref.x))
    rows = []
    score = lambda x: (evaluate_features(extractor(prepare(x)), ref_features) if ref.kind == "image"  # noqa: E731
                       else {**evaluate_points(x, ref.x), **points_extras(x, ref.spec)})
    for path, r in zip(args.run, runs):
        if not isinstance(r, DiffusionRun):  # a family with its own sampler: one row
            rows.append(family_row(path, r, args.num, args.seed, score, len(runs) > 1))
    align = _aligner(args, ref, extractor if ref.kind == "image" and scales is not None else None)
    jobs = [(path, r, s, k, w) for path, r in zip(args.run, runs) if isinstance(r, DiffusionRun) for s, k in methods
            for w in (scales or [None])]
    for path, r, sampler, steps, w in tqdm(jobs, desc="report", unit="method"):
        label = f"{path.name} {sampler}:{steps}" if len(runs) > 1 else f"{sampler}:{steps}"
        extra: dict = {}
        if w is None:
            x, secs = r.timed_sample(args.num, args.seed, sampler=sampler, steps=steps)  # classes in turn if conditional
        else:
            prompts, cond, model = _prompted(r, args.num, w)
            x, secs = r.timed_sample(args.num, args.seed, sampler=sampler, steps=steps, cond=cond, model=model)
            label, extra = f"{label} w={w:g}", {"guidance": w, **align(x, prompts)}
        rows.append({"method": label, "run": str(path), "family": r.family, "sampler": sampler, "steps": steps,
                     "nfe": r.nfe, "sec_per_1000": secs * 1000 / args.num, "params": r.num_params,
                     "marker": r.marker, "tuned_grid": r.last_tuned, **extra, **score(x)})
    command = "difflab " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    md = write_report(rows, args.out, f"Trilemma on {ref.spec} ({args.num} samples per method{title_note})", command)
    write_json(args.out / "report.json", {"data": ref.spec, "rows": rows})
    print(md.read_text())
    return 0


def _scales(text: str) -> list[float]:
    """'0,1,2,4' -> [0.0, 1.0, 2.0, 4.0]: finite scales >= 0."""
    import math

    try:
        out = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--guidance: expected scales like 0,1,2,4, got {text[:40]!r}") from None
    if not out or any(not math.isfinite(v) or v < 0 for v in out):
        raise UserError(f"--guidance: expected finite scales >= 0 like 0,1,2,4, got {text[:40]!r}")
    return out


def _prompted(r, num: int, w: float):
    """(the prompt of each of num samples, the run's stored prompts in turn; the condition maker over batches;
    the CFG-guided denoiser at scale w, or None at 0)."""
    from ..guidance import ClassifierFreeGuidance

    stored = r.conditioning.preview_prompts()
    prompts = [stored[k % len(stored)] for k in range(num)]
    at = [0]

    def cond(n: int, device):
        start, at[0] = at[0], at[0] + n
        return r.conditioning.prompts(prompts[start:start + n], device)

    return prompts, cond, (ClassifierFreeGuidance(r.loaded.model, w) if w else None)


def _aligner(args: argparse.Namespace, ref, extractor):
    """(samples, prompts) -> the text-alignment entries of a row: prompt accuracy (the feature net's digit classes
    when it has 10) and, with --clip, the mean cosine of the CLIP folder's image and prompt embeddings."""
    from ..evaluation.alignment import clip_alignment, prompt_accuracy

    clip = None
    if args.clip is not None:
        from ..training.clip import load_clip

        if not args.clip.is_dir():
            raise UserError(f"--clip {args.clip}: no such folder (train one with difflab train-clip)")
        clip, sched = load_clip(args.clip, device=args.device or "cpu")
        channels = int(clip.config.image.get("in_channels", 1))
        if ref.kind != "image" or channels != ref.shape[0]:
            raise UserError(f"--clip {args.clip}: its image tower takes {channels}-channel images, but {ref.spec} "
                            f"has shape {list(ref.shape)}")
    classify = None
    if extractor is not None and extractor.name in ("digits", "mnist"):  # the shipped nets classify the 10 digits
        import torch

        classify = lambda x: torch.as_tensor(extractor(x).logits).argmax(1)  # noqa: E731

    def align(x, prompts):
        out = prompt_accuracy(x, prompts, classify)
        if clip is not None:
            out["clip_align"] = float(clip_alignment(clip, sched.t_min, x, prompts).mean())
        return out

    return align
