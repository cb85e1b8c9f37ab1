"""Which sampler a diffusion run should use by default at about 50 network calls: a screen on trained runs.

Scores each candidate (`difflab evaluate --run R --sampler S --steps K`) on the same runs with one seed against the
*training* split, so that the default chosen here is not chosen on the cases a benchmark reports (those score a
fresh seed against the test split). Two evaluations run at a time with one thread each.

    .venv/bin/python benchmarks/default_sampler.py --runs RUN [RUN ...] --seed 1 --out docs/benchmarks/default_sampler.md
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
#: (sampler, steps): --steps is a budget of network calls, so each spends about 50 (heun 25: 24 calls)
CANDIDATES = [("ddim", 50), ("euler", 50), ("heun", 50), ("heun", 25), ("dpmpp_2m", 50), ("unipc", 50),
              ("ddpm", 50), ("euler_maruyama", 50)]


def evaluate(run: Path, sampler: str, steps: int, args: argparse.Namespace) -> dict:
    out = args.work / f"{run.name}_{sampler}_{steps}.json"
    if not out.is_file():
        subprocess.run([PY, "-m", "difflab", "evaluate", "--run", str(run), "--sampler", sampler, "--steps",
                        str(steps), "--num", str(args.num), "--seed", str(args.seed), "--split", "train",
                        "--ref-num", str(args.ref_num), "--json", str(out), "--threads", "1", "--device", "cpu"],
                       check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    r = json.loads(out.read_text())
    return {**r["metrics"], "nfe": r["nfe"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, nargs="+", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--ref-num", type=int, default=10000)
    p.add_argument("--work", type=Path, default=Path("/tmp/difflab_default_sampler"))
    p.add_argument("--out", type=Path)
    p.add_argument("--candidates", help="sampler:steps pairs, comma-separated (default: eight settings of about "
                   "50 calls, CANDIDATES)")
    args = p.parse_args()
    cands = CANDIDATES
    if args.candidates:
        try:
            cands = [(s, int(k)) for s, k in (c.split(":") for c in args.candidates.split(","))]
        except ValueError:
            p.error(f"--candidates: expected sampler:steps pairs such as heun:25,ddim:50, got {args.candidates!r}")
    args.work.mkdir(parents=True, exist_ok=True)
    t0, load = time.time(), subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    jobs = [(r, s, k) for r in args.runs for s, k in cands]
    with ThreadPoolExecutor(2) as pool:
        res = list(pool.map(lambda j: evaluate(*j, args), jobs))
    rows = {(str(r), s, k): x for (r, s, k), x in zip(jobs, res)}
    head = "| sampler | steps | calls | " + " | ".join(f"{r.name} FD / recall" for r in args.runs) + " | mean FD rank |"
    lines = [head, "|" + "---|" * (4 + len(args.runs))]
    ranks: dict[tuple[str, int], list[int]] = {c: [] for c in cands}
    for r in args.runs:
        order = sorted(cands, key=lambda c: rows[(str(r), *c)]["fd"])
        for i, c in enumerate(order):
            ranks[c].append(i + 1)
    for s, k in sorted(cands, key=lambda c: sum(ranks[c])):
        cells = " | ".join(f"{rows[(str(r), s, k)]['fd']:.2f} / {rows[(str(r), s, k)]['recall']:.3f}" for r in args.runs)
        lines.append(f"| {s} | {k} | {rows[(str(args.runs[0]), s, k)]['nfe']} | {cells} | "
                     f"{sum(ranks[(s, k)]) / len(ranks[(s, k)]):.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        cmd = "python benchmarks/default_sampler.py " + " ".join(sys.argv[1:])
        args.out.write_text(
            f"# Default sampler screen\n\nCommand: `{cmd}`  \nDate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0))}, "
            f"{(time.time() - t0) / 60:.0f} min; load before: `{load}`\n\n"
            f"{args.num} samples per cell, seed {args.seed}, scored against {args.ref_num} training images (the "
            f"training split, not the test split the time-to-quality pages report on).\n\n{table}\n")


if __name__ == "__main__":
    main()
