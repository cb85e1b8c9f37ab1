"""bf16 against fp32 and one against two threads for the default recipe's network (flow matching, the patch-2 U-Net,
batch 32) on MNIST: training steps per second, and the loss of the two precisions over the same steps.

    .venv/bin/python benchmarks/precision.py --data mnist:/work/shared/data/mnist

Every repetition trains each setting (precision x threads) for --steps steps in this process, in a rotating order,
and takes its steps/s from the engine's step-loop seconds (set-up, the final checkpoint and preview excluded);
ratios are taken within a repetition, then the median over repetitions (the machine is noisy). --parity-steps
trains fp32 and bf16 from the same seed for that many steps with one thread and compares the mean loss of the last
quarter. Run it alone on the machine; the load is recorded. Writes docs/benchmarks/precision.md.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
SETTINGS = [("fp32", 1), ("bf16", 1), ("fp32", 2), ("bf16", 2)]


def steps_per_s(data, precision: str, threads: int, steps: int, seed: int, log_every: int | None = None):
    from difflab.training import TrainConfig, train
    from difflab.training.recipes import default_recipe

    torch.set_num_threads(threads)
    cfg = TrainConfig.from_dict({**default_recipe(data.shape), "steps": steps, "precision": precision, "seed": seed,
                                 "checkpoint_every": 10**9, "log_every": log_every or steps, "sample_every": 0,
                                 "sample_steps": 2})
    with tempfile.TemporaryDirectory() as d:
        res = train(cfg, data, Path(d) / "run", progress=False)
        log = (Path(d) / "run" / "log.csv").read_text().strip().splitlines()
    losses = [float(line.split(",")[1]) for line in log[1:]]
    return steps / res.seconds, losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mnist:/work/shared/data/mnist")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--parity-steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from difflab.data import load

    data = load(args.data)
    before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    t0 = time.time()
    steps_per_s(data, "fp32", 1, 5, args.seed)  # warm-up: allocator, kernels, data pages
    rates: dict[tuple[str, int], list[float]] = {s: [] for s in SETTINGS}
    for rep in range(args.reps):
        order = SETTINGS[rep % len(SETTINGS):] + SETTINGS[:rep % len(SETTINGS)]
        for p, t in order:
            rates[(p, t)].append(steps_per_s(data, p, t, args.steps, args.seed + rep)[0])
            print(p, t, f"{rates[(p, t)][-1]:.2f} steps/s", flush=True)
    parity = {}
    if args.parity_steps:
        for p in ("fp32", "bf16"):
            _, losses = steps_per_s(data, p, 1, args.parity_steps, args.seed, log_every=10)
            tail = losses[-max(1, len(losses) // 4):]
            parity[p] = sum(tail) / len(tail)
            print(p, "final-quarter loss", parity[p], flush=True)
    after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(rates[a], rates[b]))  # noqa: E731
    lines = ["| precision | threads | steps/s (median) | per repetition |", "|---|---|---|---|"]
    for s in SETTINGS:
        lines.append(f"| {s[0]} | {s[1]} | {statistics.median(rates[s]):.2f} | "
                     + ", ".join(f"{r:.2f}" for r in rates[s]) + " |")
    text = [
        "# bf16 and threads for the default recipe's network", "",
        f"Command: `.venv/bin/python benchmarks/precision.py --data {args.data} --steps {args.steps} --reps "
        f"{args.reps} --parity-steps {args.parity_steps}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {time.time() - t0:.0f} s; torch "
        f"{torch.__version__}, 2-core CPU (AMX bf16), nothing else running.  ",
        f"Machine load (`uptime`): before `{before}`; after `{after}`.", "",
        __doc__.split("\n\n")[0].replace("\n", " "), "", *lines, "",
        f"- bf16 / fp32, 1 thread: {ratio(('bf16', 1), ('fp32', 1)):.2f}x; 2 threads: "
        f"{ratio(('bf16', 2), ('fp32', 2)):.2f}x (medians of per-repetition ratios).",
        f"- 2 threads / 1 thread: fp32 {ratio(('fp32', 2), ('fp32', 1)):.2f}x, bf16 "
        f"{ratio(('bf16', 2), ('bf16', 1)):.2f}x.",
    ]
    if parity:
        d = parity["bf16"] - parity["fp32"]
        text.append(f"- Loss over the last quarter of {args.parity_steps} steps (same seed, 1 thread): fp32 "
                    f"{parity['fp32']:.4f}, bf16 {parity['bf16']:.4f} ({100 * d / parity['fp32']:+.1f}%).")
    (ROOT / "docs" / "benchmarks" / "precision.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
