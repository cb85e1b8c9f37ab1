"""Guidance benchmark on digits: label accuracy, FD and recall against the guidance weight w (classifier-free) and
the classifier scale s (classifier guidance): the quality/diversity trade-off of Ho & Salimans 2022, fig. 1-2.

    python benchmarks/guidance.py                     # ~20 min of CPU time on 1 thread
    python benchmarks/guidance.py --train-steps 50 --classifier-steps 50 --num 200 --quick   # smoke run

Trains (or reuses, with --reuse) a class-conditional U-Net with label dropout p_uncond and a noisy classifier,
then samples ``--num`` images (an equal number per class) per setting with the same seeds and scores them with
the shipped digits feature net against the training split. Writes docs/benchmarks/guidance.md (table, command,
date), guidance.json and the PNG plots guidance_tradeoff.png and guidance_grid.png.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from difflab import data as datasets
from difflab.evaluation import evaluate_features, extract
from difflab.guidance import ClassifierFreeGuidance, ClassifierGuidance
from difflab.training.classifier import ClassifierTrainConfig, load_classifier, noisy_accuracy, train_classifier
from difflab.models.denoiser import Clamped
from difflab.samplers import sample
from difflab.training import TrainConfig, load_run, train
from difflab.utils.images import image_grid

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
NETWORK = {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 2, "attention_levels": [1], "num_heads": 2,
           "groups": 8, "dropout": 0.1}
COLUMNS = ["label_accuracy", "fd", "precision", "recall", "coverage", "confidence", "seconds"]


def train_models(args: argparse.Namespace, work: Path) -> tuple[Path, Path, dict]:
    """The conditional diffusion run and the noisy classifier (reused when present and --reuse)."""
    run, clf = work / "run", work / "classifier"
    info_path = work / "train_info.json"
    info: dict = json.loads(info_path.read_text()) if args.reuse and info_path.is_file() else {}
    digits = datasets.load("digits", "train")
    if not (args.reuse and (run / "checkpoint.safetensors").is_file()):
        cfg = TrainConfig(network=NETWORK, conditional=True, p_uncond=args.p_uncond, steps=args.train_steps, batch_size=128, lr=2e-3, warmup_steps=100, ema_decay=0.999,
                          sample_steps=25, checkpoint_every=1000, seed=0)
        if run.exists():
            import shutil

            shutil.rmtree(run)
        t0 = time.time()
        res = train(cfg, digits, run, progress=False)
        info["diffusion_train_seconds"], info["diffusion_steps"] = time.time() - t0, res.step
    if not (args.reuse and (clf / "checkpoint.safetensors").is_file()):
        t0 = time.time()
        schedule = json.loads((run / "config.json").read_text())["schedule"]
        train_classifier(ClassifierTrainConfig(schedule=schedule, steps=args.classifier_steps, seed=0), digits, clf)
        info["classifier_train_seconds"] = time.time() - t0
        info["classifier_steps"] = args.classifier_steps
    info_path.write_text(json.dumps(info))
    return run, clf, info


def settings(args: argparse.Namespace) -> list[tuple[str, float, float, bool]]:
    """(name, w, s, conditional inner model) for every row of the table."""
    rows = [(f"CFG w={w:g}", w, 0.0, True) for w in args.w]
    rows += [(f"uncond + classifier s={s:g}", 0.0, s, False) for s in args.s]
    rows += [(f"cond + classifier s={s:g}", 0.0, s, True) for s in args.s_cond]
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-steps", type=int, default=2000, help="diffusion training steps (default 2000)")
    p.add_argument("--classifier-steps", type=int, default=2000)
    p.add_argument("--p-uncond", type=float, default=0.15)
    p.add_argument("--num", type=int, default=1000, help="samples per setting (default 1000, 100 per class)")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--w", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--s", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0, 8.0])
    p.add_argument("--s-cond", type=float, nargs="+", default=[1.0, 4.0])
    p.add_argument("--work", type=Path, default=Path("/tmp/difflab_bench_guidance"))
    p.add_argument("--reuse", action="store_true", help="reuse the models in --work")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="write to --work instead of docs/ (smoke run)")
    p.add_argument("--clip-only", action="store_true",
                   help="only the CLIP-guidance table (needs the run of a previous invocation in --work)")
    p.add_argument("--clip-steps", type=int, default=1500)
    p.add_argument("--clip-scales", type=float, nargs="+", default=[0.0, 10.0, 30.0, 100.0, 300.0])
    p.add_argument("--interval-only", type=Path, metavar="RUN_DIR",
                   help="only the full vs interval CFG table on this class-conditional run (guidance_interval.md)")
    p.add_argument("--interval", type=float, nargs=2, default=[0.28, 5.42], metavar=("SIGMA_LO", "SIGMA_HI"),
                   help="guidance interval of sigma_ve for --interval-only (default Kynkaanniemi et al.'s (0.28, 5.42])")
    p.add_argument("--text-only", choices=["small", "minilm"],
                   help="only the text-conditional table for this encoder (trains its own model in --work)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out_dir = args.work if args.quick else DOCS
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.clip_only:
        return clip_benchmark(args, out_dir)
    if args.interval_only:
        return interval_benchmark(args, out_dir)
    if args.text_only:
        return text_benchmark(args, out_dir)
    t_start = time.time()
    run, clf_dir, info = train_models(args, args.work)
    model = load_run(run, device="cpu").model
    classifier, clf_sched = load_classifier(clf_dir)
    test = datasets.load("digits", "test")
    info["classifier_test_accuracy"] = {str(t): noisy_accuracy(classifier, clf_sched, test, t)
                                        for t in (0, 250, 500, 750)}
    reference = extract(datasets.load("digits", "train").x, "digits")
    k = 10
    y = torch.arange(args.num) % k
    x_T = torch.randn((args.num, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    results, grids = [], {}
    for name, w, s, conditional in settings(args):
        t0 = time.time()
        den = ClassifierFreeGuidance(model, w) if w else model
        if s or not conditional:  # the classifier reads cond["y"]; an unconditional row gives the model the null label
            den = ClassifierGuidance(den, classifier, s, clf_sched, conditional=conditional)
        den = Clamped(den)  # x_0 predictions clipped to the data range [-1, 1], as difflab sample does for images
        x = sample(den, x_T.clone(), sampler=args.sampler, steps=args.steps, cond={"y": y},
                   generator=torch.Generator().manual_seed(2))
        seconds = time.time() - t0
        m = evaluate_features(extract(x, "digits"), reference, labels=y.numpy())
        m["seconds"] = seconds
        results.append({"setting": name, "w": w, "s": s, "conditional": conditional, **m})
        grids[name] = x[:100]
        print(f"{name:32s} " + " ".join(f"{c}={m[c]:.3f}" for c in COLUMNS), flush=True)
    info["total_seconds"] = time.time() - t_start
    write(out_dir, args, results, grids, info)
    return 0


def interval_benchmark(args: argparse.Namespace, out_dir: Path) -> int:
    """CFG on all noise levels against CFG limited to (sigma_lo, sigma_hi] (Kynkaanniemi et al. 2024): label accuracy vs recall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import os

    la = os.getloadavg()
    t_start = time.time()
    loaded = load_run(args.interval_only, device="cpu")
    model = loaded.model
    reference = extract(datasets.load("digits", "train").x, "digits")
    y = torch.arange(args.num) % 10
    x_T = torch.randn((args.num, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    lo, hi = args.interval
    results = []
    for w in args.w:
        for kind in ("full", "interval") if w else ("none",):
            t0 = time.time()
            den = ClassifierFreeGuidance(model, w, interval=(lo, hi) if kind == "interval" else None) if w else model
            x = sample(Clamped(den), x_T.clone(), sampler=args.sampler, steps=args.steps, cond={"y": y},
                       generator=torch.Generator().manual_seed(2))
            m = evaluate_features(extract(x, "digits"), reference, labels=y.numpy())
            m["seconds"] = time.time() - t0
            results.append({"w": w, "guidance": kind, **m})
            print(f"w={w:g} {kind:8s} " + " ".join(f"{c}={m[c]:.3f}" for c in COLUMNS), flush=True)
    (out_dir / "guidance_interval.json").write_text(json.dumps({"results": results, "args": vars(args)}, indent=2,
                                                               default=str))
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    base = [r for r in results if r["guidance"] == "none"]
    for kind, mark in (("full", "o-"), ("interval", "s-")):
        rows = base + [r for r in results if r["guidance"] == kind]
        ax.plot([r["recall"] for r in rows], [r["label_accuracy"] for r in rows], mark,
                label=f"CFG {kind}" + (f" ({lo:g}, {hi:g}]" if kind == "interval" else ""))
        for r in rows:
            ax.annotate(f"w={r['w']:g}", (r["recall"], r["label_accuracy"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel("recall")
    ax.set_ylabel("label accuracy")
    ax.set_title("digits: guidance on all levels vs a limited interval")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "guidance_interval.png", dpi=120)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Classifier-free guidance limited to an interval of noise levels (digits)", "",
             f"Command: `python {' '.join(sys.argv)}`  ", f"Date: {now} (total {(time.time() - t_start) / 60:.1f} min)  ",
             f"Load (`uptime`) at the start: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}  ",
             f"Run: {args.interval_only} ({loaded.step} steps, p_uncond {loaded.config['train'].get('p_uncond')}); "
             f"{args.sampler}, {args.steps} steps, x_0 clipped, {args.num} samples per row (an equal number per class), "
             "the same x_T for every row; scores in the digits feature net against the 1497 training digits; label "
             f"accuracy = the feature net's argmax equals the requested class. Interval: guidance where "
             f"{lo:g} < sigma_ve <= {hi:g} (the values of Kynkaanniemi et al. 2024 for EDM2, fixed before the run), "
             "the conditional prediction elsewhere.", "",
             "![accuracy vs recall](guidance_interval.png)", "",
             "| w | guidance | label accuracy | FD | precision | recall | coverage |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['w']:g} | {r['guidance']} | {r['label_accuracy']:.3f} | {r['fd']:.2f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {r['coverage']:.3f} |")
    (out_dir / "guidance_interval.md").write_text("\n".join(lines) + "\n")
    return 0


def clip_benchmark(args: argparse.Namespace, out_dir: Path) -> int:
    """CLIP guidance of the unconditional branch towards "a <digit>": label accuracy, FD, recall against the scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from difflab.guidance import ClipGuidance
    from difflab.training.clip import ClipTrainConfig, load_clip, train_clip, zero_shot_accuracy
    from difflab.text import class_prompts

    t_start = time.time()
    run, clip_dir = args.work / "run", args.work / "clip"
    digits = datasets.load("digits", "train")
    info: dict = {}
    if not (args.reuse and (clip_dir / "checkpoint.safetensors").is_file()):
        t0 = time.time()
        schedule = json.loads((run / "config.json").read_text())["schedule"]
        train_clip(ClipTrainConfig(schedule=schedule, steps=args.clip_steps, seed=0), digits, clip_dir)
        info["clip_train_seconds"] = time.time() - t0
    clip, clip_sched = load_clip(clip_dir)
    test = datasets.load("digits", "test")
    info["zero_shot"] = {str(t): zero_shot_accuracy(clip, clip_sched, test, t) for t in (0, 250, 500, 750)}
    model = load_run(run, device="cpu").model
    reference = extract(digits.x, "digits")
    y = torch.arange(args.num) % 10
    prompts = [class_prompts()[k] for k in y.tolist()]
    x_T = torch.randn((args.num, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    results, grids = [], {}
    for s in args.clip_scales:
        t0 = time.time()
        den = Clamped(ClipGuidance(model, clip, prompts, s, clip_sched))
        x = sample(den, x_T.clone(), sampler=args.sampler, steps=args.steps, cond={"y": torch.full_like(y, 10)},
                   generator=torch.Generator().manual_seed(2))
        m = evaluate_features(extract(x, "digits"), reference, labels=y.numpy())
        m["seconds"] = time.time() - t0
        results.append({"setting": f"uncond + CLIP s={s:g}", "s": s, **m})
        grids[s] = x[:100]
        print(results[-1]["setting"], " ".join(f"{c}={m[c]:.3f}" for c in COLUMNS), flush=True)
    info["total_seconds"] = time.time() - t_start
    (out_dir / "guidance_clip.json").write_text(json.dumps({"results": results, "info": info}, indent=2))
    fig, axes = plt.subplots(1, 1 + len(grids), figsize=(3.2 * (1 + len(grids)), 3.2))
    ss = [r["s"] for r in results]
    for key, mark in (("label_accuracy", "o-"), ("recall", "s-"), ("precision", "^-")):
        axes[0].plot(ss, [r[key] for r in results], mark, label=key)
    axes[0].set_xscale("symlog", linthresh=10)
    axes[0].set_xlabel("CLIP guidance scale")
    axes[0].legend(fontsize=7)
    for ax, (s, x) in zip(axes[1:], grids.items()):
        order = torch.cat([torch.arange(c, len(x), 10) for c in range(10)])
        ax.imshow(image_grid(x[order], nrow=len(x) // 10), cmap="gray")
        ax.set_title(f"CLIP s={s:g}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_dir / "guidance_clip.png", dpi=110)
    plt.close(fig)
    cmd = "python " + " ".join(["benchmarks/guidance.py"] + sys.argv[1:])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# CLIP guidance on digits", "",
             f"Generated by `{cmd}` on {now} ({args.threads} thread(s), total {info['total_seconds'] / 60:.1f} min), "
             "on the unconditional branch (null label) of the model of [guidance.md](guidance.md), prompt "
             f"\"a <digit>\" per sample; noisy CLIP {args.clip_steps} steps, zero-shot accuracy on held-out digits at "
             "t = 0/250/500/750: " + "/".join(f"{v:.2f}" for v in info["zero_shot"].values()) + ".", "",
             "| setting | " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * len(COLUMNS)]
    lines += [f"| {r['setting']} | " + " | ".join(f"{r[c]:.3g}" for c in COLUMNS) + " |" for r in results]
    lines += ["", "![CLIP guidance](guidance_clip.png)", ""]
    (out_dir / "guidance_clip.md").write_text("\n".join(lines))
    return 0


ATTRIBUTE_WORDS = {"thin": ("ink", 0), "thick": ("ink", 1), "small": ("size", 0), "large": ("size", 1),
                   "left-slanted": ("slant", 0), "slanted": ("slant", 1)}


def text_benchmark(args: argparse.Namespace, out_dir: Path) -> int:
    """A caption-conditional model: label accuracy of "a <digit>" and attribute hit rates of "a <word> <digit>" against w."""
    from difflab.text import DIGIT_NAMES, CaptionThresholds, attributes, encode_prompts

    enc = args.text_only
    t_start = time.time()
    run = args.work / f"text_{enc}"
    digits = datasets.load("digits", "train")
    info: dict = {}
    if not (args.reuse and (run / "checkpoint.safetensors").is_file()):
        if run.exists():
            import shutil

            shutil.rmtree(run)
        cfg = TrainConfig(network=NETWORK, conditional=True, text_encoder=enc, p_uncond=args.p_uncond,
                          steps=args.train_steps, batch_size=128, lr=2e-3, warmup_steps=100, sample_steps=25,
                          checkpoint_every=1000, seed=0)
        t0 = time.time()
        train(cfg, digits, run, progress=False)
        info["train_seconds"] = time.time() - t0
    model = load_run(run, device="cpu").model
    th = CaptionThresholds.fit(digits.x)
    reference = extract(digits.x, "digits")
    n = args.num
    y = torch.arange(n) % 10
    x_T = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    results = []
    for w in args.w:
        den = Clamped(ClassifierFreeGuidance(model, w) if w else model)
        row: dict = {"w": w}
        t0 = time.time()
        ctx, mask = encode_prompts([f"a {DIGIT_NAMES[k]}" for k in range(10)], enc)
        x = sample(den, x_T.clone(), sampler=args.sampler, steps=args.steps,
                   cond={"context": ctx[y], "context_mask": mask[y]}, generator=torch.Generator().manual_seed(2))
        m = evaluate_features(extract(x, "digits"), reference, labels=y.numpy())
        row.update({k: m[k] for k in ("label_accuracy", "fd", "precision", "recall")})
        hits = []
        for word, (attr, side) in ATTRIBUTE_WORDS.items():
            ctx, mask = encode_prompts([f"a {word} {DIGIT_NAMES[k]}" for k in range(10)], enc)
            xa = sample(den, x_T[: n // 2].clone(), sampler=args.sampler, steps=args.steps,
                        cond={"context": ctx[y[: n // 2]], "context_mask": mask[y[: n // 2]]},
                        generator=torch.Generator().manual_seed(3))
            v = attributes(xa)[attr]
            cut = getattr(th, attr)
            hit = (v <= cut[0]) if side == 0 else (v > cut[1])  # in the tercile the word names (chance ~ 1/3)
            row[f"hit_{word}"] = float(hit.float().mean())
            hits.append(row[f"hit_{word}"])
        row["hit_mean"] = float(np.mean(hits))
        row["seconds"] = time.time() - t0
        results.append(row)
        print(f"text {enc} w={w:g} " + " ".join(f"{k}={v:.3f}" for k, v in row.items() if k != "w"), flush=True)
    info["total_seconds"] = time.time() - t_start
    (out_dir / f"guidance_text_{enc}.json").write_text(json.dumps({"results": results, "info": info}, indent=2))
    cols = ["label_accuracy", "fd", "recall", *[f"hit_{w}" for w in ATTRIBUTE_WORDS], "hit_mean"]
    cmd = "python " + " ".join(["benchmarks/guidance.py"] + sys.argv[1:])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"# Text-conditional digits ({enc} encoder)", "",
             f"Generated by `{cmd}` on {now} ({args.threads} thread(s), total {info['total_seconds'] / 60:.1f} min). "
             f"U-Net {NETWORK} with cross-attention to the `{enc}` encoder's token states, trained on generated captions "
             f"for {args.train_steps} steps with empty-prompt dropout {args.p_uncond}. Sampling: {args.sampler} "
             f"{args.steps} steps, clipped x_0, CFG weight w. label_accuracy / fd / recall: prompts \"a <digit>\", "
             f"{n} samples. hit_<word>: share of {n // 2} samples for \"a <word> <digit>\" whose measured attribute "
             "lies in the dataset tercile that the word names (chance about 1/3; ties in the size attribute make "
             "\"small\" commoner).", "",
             "| w | " + " | ".join(cols) + " |", "|---:|" + "---:|" * len(cols)]
    lines += [f"| {r['w']:g} | " + " | ".join(f"{r[c]:.3g}" for c in cols) + " |" for r in results]
    (out_dir / f"guidance_text_{enc}.md").write_text("\n".join(lines) + "\n")
    return 0


def write(out_dir: Path, args: argparse.Namespace, results: list[dict], grids: dict, info: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out_dir / "guidance.json").write_text(json.dumps({"results": results, "info": info, "args": vars(args)},
                                                      indent=2, default=str))
    cfg_rows = [r for r in results if r["s"] == 0 and r["conditional"]]
    cls_rows = [r for r in results if r["s"] != 0 or not r["conditional"]]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for rows, label, xkey in ((cfg_rows, "classifier-free (w)", "w"),):
        ws = [r[xkey] for r in rows]
        axes[0].plot(ws, [r["label_accuracy"] for r in rows], "o-", label="label accuracy")
        axes[0].plot(ws, [r["recall"] for r in rows], "s-", label="recall")
        axes[0].plot(ws, [r["precision"] for r in rows], "^-", label="precision")
        axes[0].set_xlabel("guidance weight w")
        axes[0].set_title("classifier-free guidance")
        axes[0].legend()
    unc = [r for r in cls_rows if not r["conditional"]]
    axes[1].plot([r["s"] for r in unc], [r["label_accuracy"] for r in unc], "o-", label="label accuracy")
    axes[1].plot([r["s"] for r in unc], [r["recall"] for r in unc], "s-", label="recall")
    axes[1].plot([r["s"] for r in unc], [r["precision"] for r in unc], "^-", label="precision")
    axes[1].set_xlabel("classifier scale s (unconditional model)")
    axes[1].set_title("classifier guidance")
    axes[1].legend()
    for rows, label in ((cfg_rows, "CFG"), (unc, "classifier (uncond)"),
                        ([r for r in cls_rows if r["conditional"]], "classifier (cond)")):
        if rows:
            axes[2].plot([r["recall"] for r in rows], [r["fd"] for r in rows], "o-", label=label)
            for r in rows:
                axes[2].annotate(f"{r['w'] or r['s']:g}", (r["recall"], r["fd"]), fontsize=7)
    axes[2].set_xlabel("recall (diversity)")
    axes[2].set_ylabel("FD (lower is better)")
    axes[2].set_yscale("log")
    axes[2].set_title("quality / diversity trade-off")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(out_dir / "guidance_tradeoff.png", dpi=110)
    plt.close(fig)
    shown = [n for n in grids if n in ("CFG w=0", "CFG w=1", "CFG w=4", "uncond + classifier s=0",
                                       "uncond + classifier s=4", "cond + classifier s=4")]
    fig, axes = plt.subplots(1, len(shown), figsize=(3 * len(shown), 3.4))
    for ax, n in zip(np.atleast_1d(axes), shown):
        x = grids[n]
        order = torch.cat([torch.arange(c, len(x), 10) for c in range(10)])  # one row per class
        ax.imshow(image_grid(x[order], nrow=len(x) // 10), cmap="gray")
        ax.set_title(n, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_dir / "guidance_grid.png", dpi=110)
    plt.close(fig)
    cmd = "python " + " ".join(["benchmarks/guidance.py"] + sys.argv[1:])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Guidance on digits: label accuracy, FD and recall against w and s",
        "",
        f"Generated by `{cmd}` on {now} (torch {torch.__version__}, Python {platform.python_version()}, "
        f"{args.threads} thread(s), total {info['total_seconds'] / 60:.1f} min).",
        "",
        f"Model: class-conditional U-Net ({NETWORK}), p_uncond = {args.p_uncond}, trained "
        f"{info.get('diffusion_steps', '?')} steps in {info.get('diffusion_train_seconds', 0) / 60:.1f} min; noisy "
        f"classifier {info.get('classifier_steps', '?')} steps in {info.get('classifier_train_seconds', 0) / 60:.1f} "
        f"min, held-out accuracy at t = 0/250/500/750: "
        + "/".join(f"{v:.2f}" for v in info["classifier_test_accuracy"].values()) + ".",
        f"Sampling: {args.sampler}, {args.steps} steps, x_0 predictions clipped to [-1, 1] (`Clamped`, outermost), {args.num} samples per row ({args.num // 10} per class), same "
        "x_T for every row. Scores: shipped digits feature net against the 1497 training images; label accuracy = "
        "feature-net argmax equals the requested class.",
        "",
        "| setting | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for r in results:
        lines.append(f"| {r['setting']} | " + " | ".join(f"{r[c]:.3g}" for c in COLUMNS) + " |")
    lines += ["", targets(results), "", "![trade-off](guidance_tradeoff.png)", "",
              "![samples, one row per class](guidance_grid.png)", ""]
    (out_dir / "guidance.md").write_text("\n".join(lines))


def targets(results: list[dict]) -> str:
    """The issue's target: label accuracy >= 99% at the best w with recall at most 0.1 below the unguided model."""
    cfg = [r for r in results if r["s"] == 0 and r["conditional"]]
    base = next((r for r in cfg if r["w"] == 0), None)
    if base is None:
        return "Targets: no unguided (w = 0) row to compare with."
    ok = [r for r in cfg if r["label_accuracy"] >= 0.99 and r["recall"] >= base["recall"] - 0.1]
    if not ok:
        return (f"Targets: **not met** - no w reaches label accuracy >= 99% with recall >= "
                f"{base['recall'] - 0.1:.3f} (unguided recall {base['recall']:.3f} - 0.1).")
    r = min(ok, key=lambda r: r["w"])
    return (f"Targets: **met** at w = {r['w']:g}: label accuracy {r['label_accuracy']:.3f} (>= 0.99) and recall "
            f"{r['recall']:.3f}, {base['recall'] - r['recall']:.3f} below the unguided {base['recall']:.3f} (<= 0.1).")


if __name__ == "__main__":
    sys.exit(main())
