"""Data of any size and sampling over processes: what packing and sharding buy (docs/benchmarks/scale.md).

For synthetic folders of N 64x64 colour PNGs (default 100k and 1M): the time and peak memory of ``prepare-data``;
time to the first training step and peak resident memory per process, in-memory folder against packed memory
map, with 1 and 2 processes; the packed loader's images/s against the training step rate; generation of 50,000
samples with 1 and 2 processes (seconds, samples/s, whether the merged shards are bitwise equal), from the packed
run or (``--gen-run digits``, generation only) from a small 8x8 digits U-Net the script trains first.  Every measurement runs the ``difflab`` command in a fresh subprocess.

    python benchmarks/scale.py                   (hours and ~13 GB of disk for 1M images: run on an idle machine)
    python benchmarks/scale.py --quick           (a smoke test: 2,000 16x16 images, 200 samples; about a minute)
    python benchmarks/scale.py --gen-run digits --gen-num 50000     (only generation: a small 8x8 digits U-Net
                                                  trained here, 50,000 samples with 1 and 2 processes)
    python benchmarks/scale.py --gen-run digits --gen-num 2000 --gen-train-steps 50   (its smoke test, < 1 min)

Writes the raw numbers to --json (default: a temporary folder) and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
TINY = {"network": {"channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_levels": [],
                    "groups": 4, "dropout": 0.0}, "schedule": {"kind": "linear", "T": 1000}, "sample_steps": 2,
        "checkpoint_every": 10**6, "log_every": 10**6}


def make_folder(root: Path, n: int, size: int, workers: int = 8) -> None:
    """n smooth random colour PNGs of size x size in 10 class folders (reused when already there)."""
    from PIL import Image

    if root.is_dir() and sum(1 for _ in root.rglob("*.png")) == n:
        return

    def one(i: int) -> None:
        rng = np.random.default_rng(i)
        low = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        d = root / f"c{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC).save(d / f"{i:07d}.png")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(n), chunksize=256))


def difflab(*args: Any, nproc: int = 1) -> dict[str, float]:
    """Run ``difflab ARGS`` (under torchrun for nproc > 1); wall seconds and the peak RSS of its largest process."""
    cmd = [sys.executable, "-m", "difflab", *map(str, args)]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return {"seconds": wall, "peak_rss_mb": int(r.stdout.split()[-1]) / 1024}


# runs a command and prints the peak RSS (KiB) of its largest process, torchrun's workers included
_WRAPPER = """import resource, subprocess, sys
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(rc)"""


def available_bytes() -> float:
    """Memory the kernel could give a new process now (MemAvailable; Linux), else the physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def loader_rate(spec: str, batch: int, seconds: float = 5.0) -> float:
    """Images/s of Dataset.batch on the engine's random batches (the data path of one training step)."""
    from difflab.data import load
    from difflab.training.engine import batch_indices

    data = load(spec)
    t0, n, step = time.perf_counter(), 0, 0
    while time.perf_counter() - t0 < seconds:
        data.batch(batch_indices(len(data), batch, 0, step))
        n, step = n + batch, step + 1
    return n / (time.perf_counter() - t0)


def bench_size(n: int, size: int, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    folder, packed, cfg = work / f"folder_{n}_{size}", work / f"packed_{n}_{size}", work / "cfg.json"
    cfg.write_text(json.dumps({**TINY, "batch_size": args.batch}))
    out: dict[str, Any] = {"n": n, "size": size}
    t0 = time.perf_counter()
    make_folder(folder, n, size)
    out["make_folder_s"] = time.perf_counter() - t0
    if not packed.is_dir():
        out["prepare_data"] = difflab("prepare-data", folder, "--out", packed, "--image-size", size, "--splits", "train")
    for kind, spec in (("in-memory", folder), ("packed", f"packed:{packed}")):
        for nproc in (1, 2):
            run = work / f"run_{kind}_{nproc}_{n}"
            need = nproc * (n * 3 * size * size + 2.5e9)  # decoded copy per process + torch, network, activations
            if kind == "in-memory" and need > available_bytes():
                out[f"first_step {kind} x{nproc}"] = {"skipped": f"needs about {need / 1e9:.1f} GB, "
                                                                 f"{available_bytes() / 1e9:.1f} GB available"}
                print(f"N={n}: {kind}, {nproc} process(es): not run, it would need about {need / 1e9:.1f} GB of "
                      f"memory ({available_bytes() / 1e9:.1f} GB available)", flush=True)
                continue
            r = difflab("train", "--data", spec, "--image-size", size, "--steps", 1, "--config", cfg, "--out", run,
                        "--quiet", "--device", "cpu", "--recipe", "ddpm", nproc=nproc)
            out[f"first_step {kind} x{nproc}"] = r
            print(f"N={n}: {kind}, {nproc} process(es): first step after {r['seconds']:.1f} s, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    out["loader_images_per_s"] = loader_rate(f"packed:{packed}", args.batch)
    r = difflab("train", "--data", f"packed:{packed}", "--steps", args.train_steps, "--config", cfg, "--out",
                work / f"run_rate_{n}", "--quiet", "--device", "cpu", "--recipe", "ddpm")
    start = out["first_step packed x1"]["seconds"]  # the same command's cost up to its first step
    out["train_images_per_s"] = args.batch * (args.train_steps - 1) / max(r["seconds"] - start, 1e-9)
    return out


def digits_run(work: Path, args: argparse.Namespace) -> Path:
    """A small 8x8 digits U-Net trained for --gen-train-steps steps (the run that --gen-run digits samples)."""
    run, cfg = work / f"run_digits_{args.gen_train_steps}", work / "cfg_digits.json"
    if not (run / "config.json").is_file():
        cfg.write_text(json.dumps({**TINY, "batch_size": 64}))
        r = difflab("train", "--data", "digits", "--steps", args.gen_train_steps, "--config", cfg, "--out", run,
                    "--quiet", "--device", "cpu", "--recipe", "ddpm")
        print(f"trained the digits run ({args.gen_train_steps} steps) in {r['seconds']:.1f} s", flush=True)
    return run


def bench_generate(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """--gen-num samples with 1 and 2 processes (``sample --nproc 2``): seconds, samples/s, bitwise equal shards."""
    run = digits_run(work, args) if args.gen_run == "digits" else work / f"run_packed_1_{args.sizes[-1]}"
    out: dict[str, Any] = {"run": args.gen_run, "num": args.gen_num, "steps": args.gen_steps, "batch_size": 500}
    for nproc in (1, 2):
        folder = work / f"gen_{args.gen_run}_{args.gen_num}_{nproc}"
        if folder.exists():  # an earlier run's shards would be kept and not drawn again: start empty
            import shutil

            shutil.rmtree(folder)
        r = difflab("sample", "--run", run, "--num", args.gen_num, "--steps", args.gen_steps, "--batch-size", 500,
                    "--out", folder, "--device", "cpu", nproc=nproc)
        r["samples_per_s"] = args.gen_num / r["seconds"]
        out[f"x{nproc}"] = r
        print(f"generate {args.gen_num} ({args.gen_run}): {nproc} process(es) {r['seconds']:.1f} s, "
              f"{r['samples_per_s']:.0f} samples/s", flush=True)
    from difflab.evaluation.generate import merge

    a, b = (merge(work / f"gen_{args.gen_run}_{args.gen_num}_{k}") for k in (1, 2))
    out["equal"] = bool(a.shape == b.shape and len(a) == args.gen_num and np.array_equal(a, b))
    out["speedup"] = out["x1"]["seconds"] / out["x2"]["seconds"]
    print(f"generate {args.gen_num}: 2 processes {out['speedup']:.2f}x, merged shards "
          f"{'equal bit for bit' if out['equal'] else 'DIFFERENT'}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke test of every part")
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="images per folder")
    p.add_argument("--image", type=int, default=64, help="image side")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--gen-num", type=int, default=50_000, help="samples to generate (0: skip generation)")
    p.add_argument("--gen-steps", type=int, default=10)
    p.add_argument("--gen-run", choices=["packed", "digits"], default="packed",
                   help="what generation samples: the packed-set run of the last size, or (digits) a small 8x8 "
                        "digits U-Net trained here for --gen-train-steps steps; digits runs only the generation part")
    p.add_argument("--gen-train-steps", type=int, default=300, help="--gen-run digits: training steps (default 300)")
    p.add_argument("--work", type=Path, help="folder for the synthetic data (kept between runs)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.quick:
        args.sizes, args.image, args.batch, args.train_steps, args.gen_num, args.gen_steps = [2000], 16, 32, 3, 200, 2
    work = args.work or Path(tempfile.mkdtemp(prefix="difflab-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = [] if args.gen_run == "digits" else [bench_size(n, args.image, work, args) for n in args.sizes]
    res = {"sizes": sizes, "generate": bench_generate(work, args) if args.gen_num > 0 else None}
    path = args.json or work / "scale.json"
    path.write_text(json.dumps(res, indent=1))
    if sizes:
        print("| N | loader images/s | training images/s |\n|---|---|---|")
    for r in res["sizes"]:
        print(f"| {r['n']} | {r['loader_images_per_s']:.0f} | {r['train_images_per_s']:.0f} |")
    g = res["generate"]
    if g is None:
        print(f"wrote {path}")
        return
    print(f"\n| samples | run | steps | processes | seconds | samples/s | equal |\n|---|---|---|---|---|---|---|")
    for k in (1, 2):
        print(f"| {g['num']:,} | {g['run']} | {g['steps']} | {k} | {g[f'x{k}']['seconds']:.1f} | "
              f"{g[f'x{k}']['samples_per_s']:.0f} | {'yes' if g['equal'] else 'NO'} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
