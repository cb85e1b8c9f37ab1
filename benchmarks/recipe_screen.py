"""Which training settings of the default image recipe train the best samples in a few CPU minutes: a tuning screen.

Every candidate is the default recipe (``difflab train --data D`` without options) with a few TrainConfig fields
changed (warm-up, dropout, learning rate, batch). Candidates train the same wall-clock minutes, two at a time, one
thread each (as benchmarks/time_to_quality.py trains), then draw --num samples with the run's default sampler at
ONE sample seed and are scored in the data's feature network against the *training* split. Tuning on the training
split and one seed keeps the choice apart from what the time-to-quality pages report (a fresh seed against the test
split, on fresh trainings).

    python benchmarks/recipe_screen.py --data digits --minutes 1 --out docs/benchmarks/recipe_screen_digits.md
    python benchmarks/recipe_screen.py --data mnist:DIR --minutes 5 --only default,w50_d0 --out docs/benchmarks/recipe_screen_mnist.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from _pairs import run_in_pairs  # noqa: E402  (benchmarks/_pairs.py)

ROOT = Path(__file__).resolve().parents[1]

#: name -> TrainConfig overrides of the default recipe ("network" is merged field by field into the recipe's)
CANDIDATES: dict[str, dict] = {
    "default": {},
    "w50": {"warmup_steps": 50},
    "w50_d0": {"warmup_steps": 50, "network": {"dropout": 0.0}},
    "w50_d0_lr2": {"warmup_steps": 50, "network": {"dropout": 0.0}, "lr": 2e-3},
    "w50_d0_b64": {"warmup_steps": 50, "network": {"dropout": 0.0}, "batch_size": 64},
    "w50_d0_b32": {"warmup_steps": 50, "network": {"dropout": 0.0}, "batch_size": 32},
    "w50_d0_lr2_b64": {"warmup_steps": 50, "network": {"dropout": 0.0}, "lr": 2e-3, "batch_size": 64},
    "w50_d0_c48": {"warmup_steps": 50, "network": {"dropout": 0.0, "channels": 48}},
    "w50_d0_c16": {"warmup_steps": 50, "network": {"dropout": 0.0, "channels": 16}},
    "w50_d0_lr3": {"warmup_steps": 50, "network": {"dropout": 0.0}, "lr": 3e-3},
    "w50_d0_b16": {"warmup_steps": 50, "network": {"dropout": 0.0}, "batch_size": 16},
    "w50_d0_lr2_b16": {"warmup_steps": 50, "network": {"dropout": 0.0}, "lr": 2e-3, "batch_size": 16},
    "w50_d0_c24": {"warmup_steps": 50, "network": {"dropout": 0.0, "channels": 24}},
    "w50_d0_c16_lr2": {"warmup_steps": 50, "network": {"dropout": 0.0, "channels": 16}, "lr": 2e-3},
    "w50_d0_c16_b64": {"warmup_steps": 50, "network": {"dropout": 0.0, "channels": 16}, "batch_size": 64},
    "w50_d0_c16_r1": {"warmup_steps": 50, "network": {"dropout": 0.0, "channels": 16, "num_res_blocks": 1}},
    "w50_d0_c8": {"warmup_steps": 50, "network": {"dropout": 0.0, "channels": 8}},
    "w50_d0_c16_noattn": {"warmup_steps": 50, "network": {"dropout": 0.0, "channels": 16, "attention_levels": []}},
    "w50_d0_c16_r1_noattn": {"warmup_steps": 50, "network": {"dropout": 0.0, "channels": 16, "num_res_blocks": 1,
                                                             "attention_levels": []}},
    "w50_d0_c16_r1_b64": {"warmup_steps": 50, "network": {"dropout": 0.0, "channels": 16, "num_res_blocks": 1},
                          "batch_size": 64},
    "w50_d0_c24_r1": {"warmup_steps": 50, "network": {"dropout": 0.0, "channels": 24, "num_res_blocks": 1}},
    "w50_d0_r1": {"warmup_steps": 50, "network": {"dropout": 0.0, "num_res_blocks": 1}},
}


def features(spec: str) -> str:
    return "digits" if spec.split(":")[-1].startswith("digits") else "mnist"


def config_for(spec: str, name: str, minutes: float) -> dict:
    """The default recipe of the data with the candidate's overrides, as a TrainConfig dict."""
    from difflab.data import load
    from difflab.training.recipes import recipe

    base = recipe("auto", load(spec, split="train").shape)
    over = CANDIDATES[name]
    net = {**base.get("network", {}), **over.get("network", {})}
    cfg = {**base, **{k: v for k, v in over.items() if k != "network"}, "minutes": minutes, "seed": 0}
    if net:
        cfg["network"] = {"kind": "unet", **net}
    return cfg


def worker(args: argparse.Namespace, name: str) -> None:
    import difflab
    from difflab.data import load
    from difflab.evaluation import evaluate_features, get_extractor
    from difflab.training import TrainConfig, train
    from difflab.utils.images import save_image_grid

    data = load(args.data, split="train")
    cfg = TrainConfig.from_dict(config_for(args.data, name, args.minutes))
    run = args.work / name
    shutil.rmtree(run, ignore_errors=True)
    res = train(cfg, data, run, progress=False)
    t0 = time.monotonic()
    model = difflab.load(run, device="cpu")
    x = model.sample(args.num, seed=args.seed)
    sample_s = time.monotonic() - t0
    save_image_grid(x[:64], args.work / f"{name}.png", nrow=8)
    ex = get_extractor(features(args.data))
    score = evaluate_features(ex(x), ex(data.x[: args.ref_num]))
    out = {"name": name, "steps": res.step, "batch": cfg.batch_size, "sample_s": sample_s, **score}
    (args.work / f"{name}.json").write_text(json.dumps(out))
    print(json.dumps(out), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", help="digits or mnist:DIR")
    p.add_argument("--minutes", type=float, default=1.0, help="training minutes per candidate")
    p.add_argument("--num", type=int, default=1000, help="samples per candidate")
    p.add_argument("--ref-num", type=int, default=10000, help="training images the samples are scored against")
    p.add_argument("--only", help="comma-separated candidate names (default: all)")
    p.add_argument("--seed", type=int, default=1, help="the one sample seed of the screen")
    p.add_argument("--work", type=Path, default=Path("/tmp/difflab_recipe_screen"))
    p.add_argument("--out", type=Path)
    p.add_argument("--reuse", action="store_true",
                   help="keep the results of candidates already in --work (a screen in rounds); train the others")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.worker:
        return worker(args, args.worker)
    names = args.only.split(",") if args.only else list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        sys.exit(f"error: unknown candidate {unknown[0]!r}; choose from {', '.join(CANDIDATES)}")
    command = "python benchmarks/recipe_screen.py " + " ".join(sys.argv[1:])
    t_start = time.monotonic()
    common = ["--data", args.data, "--minutes", str(args.minutes), "--num", str(args.num), "--ref-num",
              str(args.ref_num), "--seed", str(args.seed), "--work", str(args.work)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    todo = [n for n in names if not (args.reuse and (args.work / f"{n}.json").is_file())]
    loads = run_in_pairs(__file__, todo, common, env)
    rows = [json.loads((args.work / f"{n}.json").read_text()) for n in names]
    table = ["| candidate | overrides of the default recipe | batch | steps | FD | precision | recall | sampling s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["fd"]):
        over = json.dumps(CANDIDATES[r["name"]]) if CANDIDATES[r["name"]] else "(none)"
        table.append(f"| {r['name']} | `{over}` | {r['batch']} | {r['steps']} | {r['fd']:.2f} | {r['precision']:.3f} "
                     f"| {r['recall']:.3f} | {r['sample_s']:.0f} |")
    text = "\n".join(table)
    print(text)
    if args.out:
        lines = [f"# Recipe screen on {args.data.split(':')[0]} ({args.minutes:g} training minutes per candidate)", "",
                 f"Command: `{command}`  ",
                 f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {(time.monotonic() - t_start) / 60:.0f} "
                 f"min in all; torch {torch.__version__}.  ",
                 "Two candidates at a time, one thread each, nothing else running. Load (1-min average) before and "
                 "after each pair: " + ", ".join(f"{x[0]:.2f}" for x in loads) + ".  ",
                 *([f"Trained in this invocation: {', '.join(todo) or 'none'}; the others are earlier rounds' results "
                    f"(same settings) kept from {args.work}.  "] if len(todo) < len(names) else []),
                 f"{args.num} samples each with the run's default sampler at seed {args.seed}, scored against "
                 f"{args.ref_num} images of the *training* split (the tuning reference; reports use a fresh seed and "
                 "the test split).", "", text, ""]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines))
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    print(f"sample grids in {args.work}")


if __name__ == "__main__":
    main()
