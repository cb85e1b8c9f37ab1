"""Which U-Net trains the best MNIST samples per CPU-minute: the screen behind the default recipe's network.

Every candidate trains the flow-matching recipe (docs/training.md) for the same wall-clock minutes on MNIST, two
candidates at a time, one thread each (as benchmarks/time_to_quality.py trains), then draws --num samples with the
run's default sampler (``difflab.load(run).sample``) at a seed drawn at run time and is scored by FD, precision and
recall in the MNIST feature network against the test split. The cost column is forward+backward GFLOP of one
training step at batch 64 (torch.utils.flop_counter).

    python benchmarks/networks.py --data mnist:$DIFFLAB_MNIST                 # the screen, ~6 min per pair
    python benchmarks/networks.py --data mnist:DIR --minutes 0.3 --num 100 --only base,p2_32_12_2   # a quick check
    python benchmarks/networks.py --data mnist:DIR --only p4_64_1_2@32,p2_32_12_2@32 --out docs/benchmarks/networks_b32.md

A candidate NAME@B trains at batch B (default --batch).
"""
from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import time
from pathlib import Path

import torch

from _pairs import run_in_pairs  # noqa: E402  (benchmarks/_pairs.py)

ROOT = Path(__file__).resolve().parents[1]

#: name -> U-Net overrides of the MNIST size preset (patch p, base channels c, channel multipliers, res blocks)
CANDIDATES: dict[str, dict] = {
    "base": {},  # the former default MNIST network: full 28x28 resolution
    "p2_32_12_2": {"patch": 2, "channels": 32, "channel_mult": [1, 2], "num_res_blocks": 2, "attention_levels": [1]},
    "p2_48_12_1": {"patch": 2, "channels": 48, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [1]},
    "p4_64_1_2": {"patch": 4, "channels": 64, "channel_mult": [1], "num_res_blocks": 2, "attention_levels": [0]},
}


def flops(net: dict, shape: tuple[int, ...]) -> tuple[float, int]:
    from torch.utils.flop_counter import FlopCounterMode

    from difflab.models.unet import UNet, unet_mnist

    cfg = unet_mnist(**{k: tuple(v) if isinstance(v, list) else v for k, v in net.items()})
    model = UNet(cfg)
    x = torch.randn(64, *shape)
    with FlopCounterMode(display=False) as fc:
        model(x, torch.rand(64) * 1000).square().mean().backward()
    return fc.get_total_flops() / 1e9, sum(p.numel() for p in model.parameters())


def split(cand: str, batch: int) -> tuple[str, int]:
    name, _, b = cand.partition("@")
    return name, (int(b) if b.isdigit() else 0) if b else batch


def worker(args: argparse.Namespace, cand: str) -> None:
    import difflab
    from difflab.data import load
    from difflab.evaluation import evaluate_features, get_extractor
    from difflab.training import TrainConfig, train
    from difflab.training.recipes import RECIPES
    from difflab.utils.images import save_image_grid

    data = load(args.data)
    name, batch = split(cand, args.batch)
    net = {"kind": "unet", **CANDIDATES[name]}
    cfg = TrainConfig.from_dict({**RECIPES["flow"], "network": net, "batch_size": batch,
                                 "minutes": args.minutes, "seed": 0})
    run = args.work / cand
    shutil.rmtree(run, ignore_errors=True)
    res = train(cfg, data, run, progress=False)
    t0 = time.monotonic()
    x = difflab.load(run, device="cpu").sample(args.num, seed=args.seed)
    sample_s = time.monotonic() - t0
    save_image_grid(x[:64], args.work / f"{cand}.png", nrow=8)
    ex = get_extractor("mnist")
    score = evaluate_features(ex(x), ex(load(args.data, split="test").x))
    gflop, params = flops(CANDIDATES[name], data.shape)
    out = {"name": name, "candidate": cand, "batch": batch, "steps": res.step, "gflop_step64": gflop, "params": params, "sample_s": sample_s, **score}
    (args.work / f"{cand}.json").write_text(json.dumps(out))
    print(json.dumps(out), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="mnist:DIR")
    p.add_argument("--minutes", type=float, default=5.0, help="training minutes per candidate")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--num", type=int, default=500, help="samples per candidate")
    p.add_argument("--only", help="comma-separated candidate names (default: all)")
    p.add_argument("--seed", type=int, help="seed of the samples (default: drawn at run time)")
    p.add_argument("--work", type=Path, default=Path("/tmp/difflab_networks"))
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "networks.md")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    if args.worker:
        return worker(args, args.worker)
    names = args.only.split(",") if args.only else list(CANDIDATES)
    unknown = [n for n in names if split(n, 1)[0] not in CANDIDATES or not split(n, 1)[1] > 0]
    if unknown:
        sys.exit(f"error: unknown candidate {unknown[0]!r}; choose from {', '.join(CANDIDATES)}")
    args.seed = secrets.randbelow(2**31) if args.seed is None else args.seed
    command = "python benchmarks/networks.py " + " ".join(sys.argv[1:])
    t_start = time.monotonic()
    common = ["--data", args.data, "--minutes", str(args.minutes), "--batch", str(args.batch), "--num", str(args.num),
              "--seed", str(args.seed), "--work", str(args.work)]
    loads = run_in_pairs(__file__, names, common)
    rows = [json.loads((args.work / f"{n}.json").read_text()) for n in names]
    for r, n in zip(rows, names):
        r.setdefault("candidate", n)
        r.setdefault("batch", args.batch)
    write(rows, args, command, loads, time.monotonic() - t_start)


def write(rows: list[dict], args: argparse.Namespace, command: str, loads: list, seconds: float) -> None:
    lines = ["# Networks per CPU-minute on MNIST (flow-matching recipe)", "",
             f"Command: `{command}`  ", f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"{seconds / 60:.0f} min in all; torch {torch.__version__}.  ",
             f"{args.minutes:g} training minutes per candidate, two candidates at a time, one "
             f"thread each, nothing else running. Load (1-min average) before and after each pair: "
             + ", ".join(f"{x[0]:.2f}" for x in loads) + ".  ",
             f"{args.num} samples each with the run's default sampler, seed {args.seed} (drawn at run time), scored "
             "against the MNIST test split in difflab's MNIST feature network.", "",
             "| network | overrides of the MNIST preset | parameters | GFLOP / step (batch 64, fwd+bwd) | batch | steps "
             "| FD | precision | recall | sampling s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        over = json.dumps(CANDIDATES[r["name"]]) if CANDIDATES[r["name"]] else "(none: the former default)"
        lines.append(f"| {r['name']} | `{over}` | {r['params'] / 1e6:.2f}M | {r['gflop_step64']:.1f} | {r['batch']} | {r['steps']} "
                     f"| {r['fd']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['sample_s']:.0f} |")
    grids = {r["candidate"]: f"{args.out.stem}_{r['candidate'].replace('@', '_b')}.png" for r in rows}
    lines += ["", "Sample grids: " + ", ".join(f"`{g}`" for g in grids.values()) + ".", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    for r in rows:
        shutil.copyfile(args.work / f"{r['candidate']}.png", args.out.parent / grids[r["candidate"]])
    (args.out.with_suffix(".json")).write_text(json.dumps(rows, indent=1))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
