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
#: (sampler, steps, grid): --steps is a budget of network calls, so each spends about 50 (heun 25: 24 calls); grid
#: None is the sampler's own
CANDIDATES = [("ddim", 50, None), ("euler", 50, None), ("heun", 50, None), ("heun", 25, None), ("dpmpp_2m", 50, None),
              ("unipc", 50, None), ("ddpm", 50, None), ("euler_maruyama", 50, None)]


def evaluate(run: Path, sampler: str, steps: int, grid: str | None, args: argparse.Namespace) -> dict:
    out = args.work / f"{run.name}_{sampler}_{steps}{'_' + grid if grid else ''}_seed{args.seed}_n{args.num}.json"
    if not out.is_file():
        subprocess.run([PY, "-m", "difflab", "evaluate", "--run", str(run), "--sampler", sampler, "--steps",
                        str(steps), "--num", str(args.num), "--seed", str(args.seed), "--split", "train",
                        "--ref-num", str(args.ref_num), "--json", str(out), "--threads", "1", "--device", "cpu",
                        *(["--grid", grid] if grid else [])],
                       check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    r = json.loads(out.read_text())
    return {**r["metrics"], "nfe": r["nfe"]}


def parse_candidates(text: str) -> list[tuple[str, int, str | None]]:
    """'heun:25,heun:13:trailing' -> [("heun", 25, None), ("heun", 13, "trailing")]."""
    out = []
    for c in text.split(","):
        parts = c.split(":")
        if len(parts) not in (2, 3) or not parts[1].isdigit():
            raise ValueError(c)
        out.append((parts[0], int(parts[1]), parts[2] if len(parts) == 3 else None))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, nargs="+", required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--ref-num", type=int, default=10000)
    p.add_argument("--work", type=Path, default=Path("/tmp/difflab_default_sampler"))
    p.add_argument("--out", type=Path)
    p.add_argument("--candidates", help="sampler:steps[:grid], comma-separated (default: eight settings of about "
                   "50 calls on their own grids, CANDIDATES)")
    args = p.parse_args()
    cands = CANDIDATES
    if args.candidates:
        try:
            cands = parse_candidates(args.candidates)
        except ValueError as e:
            p.error(f"--candidates: expected sampler:steps[:grid] such as heun:25,heun:13:trailing, got {e}")
    args.work.mkdir(parents=True, exist_ok=True)
    t0, load = time.time(), subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    jobs = [(r, *c) for r in args.runs for c in cands]
    with ThreadPoolExecutor(2) as pool:
        res = list(pool.map(lambda j: evaluate(*j, args), jobs))
    rows = {(str(j[0]), *j[1:]): x for j, x in zip(jobs, res)}
    head = ("| sampler | steps | grid | calls | " + " | ".join(f"{r.name} FD / precision / recall" for r in args.runs)
            + " | mean FD rank |")
    lines = [head, "|" + "---|" * (5 + len(args.runs))]
    ranks: dict[tuple[str, int, str | None], list[int]] = {c: [] for c in cands}
    for r in args.runs:
        order = sorted(cands, key=lambda c: rows[(str(r), *c)]["fd"])
        for i, c in enumerate(order):
            ranks[c].append(i + 1)
    for c in sorted(cands, key=lambda c: sum(ranks[c])):
        cells = " | ".join(f"{rows[(str(r), *c)]['fd']:.2f} / {rows[(str(r), *c)]['precision']:.3f} / "
                           f"{rows[(str(r), *c)]['recall']:.3f}" for r in args.runs)
        lines.append(f"| {c[0]} | {c[1]} | {c[2] or 'own'} | {rows[(str(args.runs[0]), *c)]['nfe']} | {cells} | "
                     f"{sum(ranks[c]) / len(ranks[c]):.1f} |")
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
