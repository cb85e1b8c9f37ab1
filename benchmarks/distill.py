"""Distilled students on digits or MNIST: FD / recall of progressive and consistency students at 1-4 calls against the teacher's DDPM at 100 calls.

    python benchmarks/distill.py --teacher RUN --student OUT1 --student OUT2 [--num 500] [--out docs/benchmarks/distill.md]

Each student is a run written by ``difflab distill``; it is sampled with the sampler and grids stored in its
grids.json (``ddim`` for progressive students, ``consistency`` for consistency students), from x_T of seed 0,
denoised predictions clipped to [-1, 1], scored in the digits feature net against the training digits (MNIST
teachers: the MNIST feature net against 10000 training images).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import torch

import difflab


def score(model, shape, sampler, steps, grid, num, ex, ref):
    """Metrics of ``num`` samples (x_T and sampler noise from seed 0)."""
    from difflab.evaluation import evaluate_features
    from difflab.models.denoiser import Clamped

    g = torch.Generator().manual_seed(0)
    x_T = model.schedule.sample_prior((num, *shape), generator=g)
    x, calls = difflab.sample(Clamped(model), x_T, sampler, steps=steps, grid=grid, generator=g, return_nfe=True)
    return calls, evaluate_features(ex(x.clamp(-1, 1)), ref, kid_subsets=10)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True, help="the teacher run (DDPM at 100 calls is the baseline)")
    ap.add_argument("--student", action="append", default=[], help="a student run (repeatable)")
    ap.add_argument("--teacher-rows", default="ddpm:100,ddim:4,dpmpp_2m:4,dpmpp_2m:10",
                    help="sampler:calls rows of the teacher (default grids)")
    ap.add_argument("--num", type=int, default=500)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", help="markdown file to write")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from difflab.evaluation import features_for, get_extractor, reference_features
    from difflab.training import load_run

    la = os.getloadavg()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t = load_run(args.teacher, device="cpu")
    feat = features_for(t.config["data"])  # digits or mnist
    ex = get_extractor(feat)
    ref = reference_features(t.config["data"], "train", max_n=10000)  # MNIST: 10000 training images, seed 0
    ref_text = (f"digits feature net against the {len(ref)} training digits" if feat == "digits"
                else f"MNIST feature net against {len(ref)} training images (seed 0)")
    lines = [f"Command: `python {' '.join(sys.argv)}`  ", f"Date: {now}  ",
             f"Load (`uptime`) at the start: {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}  ",
             f"Teacher: {args.teacher} ({t.step} steps, prediction {t.config['prediction']}); {args.num} samples per "
             f"row, x_T from seed 0, x_0 clipped to [-1, 1], {ref_text}.", "",
             "| model | sampler | calls | FD | FD / DDPM-100 | KID | precision | recall | coverage |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = None

    def row(name, sampler, calls, m):
        ratio = f"{m['fd'] / base:.2f}" if base else ""
        lines.append(f"| {name} | {sampler} | {calls} | {m['fd']:.2f} | {ratio} | {m['kid']:.2f} | "
                     f"{m['precision']:.3f} | {m['recall']:.3f} | {m['coverage']:.3f} |")
        print(lines[-1], flush=True)

    for item in args.teacher_rows.split(","):
        name, steps = item.split(":")
        calls, m = score(t.model, t.shape, name, int(steps), None, args.num, ex, ref)
        if name == "ddpm" and base is None:
            base = m["fd"]
        row("teacher", name, calls, m)
    for run in args.student:
        s = load_run(run, device="cpu")
        d = s.config.get("distillation", {})
        entries = json.loads((Path(run) / "grids.json").read_text())
        for key, e in sorted(entries.items(), key=lambda kv: kv[1]["nfe"]):
            if not key.endswith(":clip"):
                continue
            grid = torch.tensor(e["sigmas"], dtype=torch.float64)
            calls, m = score(s.model, s.shape, e["sampler"], e["nfe"], grid, args.num, ex, ref)
            row(f"{d.get('method', '?')} {Path(run).name}", e["sampler"], calls, m)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
