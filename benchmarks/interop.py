"""A trained difflab run through diffusers and back: do the samples agree, and how fast is each side?

    python benchmarks/interop.py --run RUN [--out docs/benchmarks/interop.md] [--batch 256] [--steps 50] [--reps 5]

RUN is exported with `difflab export-diffusers`, loaded with `DDPMPipeline.from_pretrained`, and sampled with
diffusers' `DDIMScheduler` (the loop a diffusers user writes: unet(x, t) then scheduler.step, clip_sample off) and
with difflab's `ddim` on the same timesteps from the same x_T; the export is then imported back with
`difflab import-diffusers` and sampled again.  diffusers is a benchmark extra (`pip install -e .[diffusers]`).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/benchmarks/interop.md"))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    load = os.getloadavg()
    import diffusers

    from difflab.interop.diffusers import export_run, import_pipeline
    from difflab.samplers import grids, sample
    from difflab.training import load_run

    tmp = Path(tempfile.mkdtemp(prefix="difflab-interop-"))
    run = tmp / "run"  # a snapshot: the run may still be training
    shutil.copytree(args.run, run)
    export_run(run, tmp / "pipe")
    import_pipeline(tmp / "pipe", tmp / "back")
    pipe = diffusers.DDPMPipeline.from_pretrained(str(tmp / "pipe"))
    unet = pipe.unet.eval()
    sched = diffusers.DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    sched.set_timesteps(args.steps)
    ours = load_run(run, device="cpu")
    back = load_run(tmp / "back", device="cpu")
    model, shape = ours.model, ours.shape
    grid = grids.timesteps(model.schedule, sched.timesteps.tolist())

    def run_diffusers(x_T: torch.Tensor) -> torch.Tensor:
        x = x_T.clone()
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
        return x

    with torch.no_grad():  # warm-up: first calls pay for allocations and kernel selection
        w = torch.randn(2, *shape, generator=torch.Generator().manual_seed(99))
        run_diffusers(w), sample(model, w, "ddim", grid=grid), sample(back.model, w, "ddim", grid=grid)
    timings: dict[str, list[float]] = {"diffusers": [], "difflab": [], "difflab (imported back)": []}
    diffs: dict[str, float] = {}
    for rep in range(args.reps):
        x_T = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(rep))
        outs = {}
        with torch.no_grad():
            contenders = [("diffusers", run_diffusers), ("difflab", lambda x: sample(model, x, "ddim", grid=grid)),
                          ("difflab (imported back)", lambda x: sample(back.model, x, "ddim", grid=grid))]
            k = rep % len(contenders)  # rotate who goes first, so a change in the machine's load hits all alike
            for name, fn in contenders[k:] + contenders[:k]:
                t0 = time.perf_counter()
                outs[name] = fn(x_T)
                timings[name].append(time.perf_counter() - t0)
        for name in ("difflab", "difflab (imported back)"):
            diffs[name] = max(diffs.get(name, 0.0), float((outs[name] - outs["diffusers"]).abs().max()))
    med = {k: statistics.median(v) for k, v in timings.items()}
    step = ours.step
    shutil.rmtree(tmp, ignore_errors=True)
    kind = pipe.unet.config.time_embedding_type
    cmd = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/interop.py " + " ".join(sys.argv[1:])
    lines = [
        "# diffusers interop: the same model sampled by diffusers and by difflab",
        "",
        f"Command: `{cmd}`.",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch "
        f"thread(s), load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at the start (machine shared).",
        "",
        f"Run `{args.run}` at step {step} (data {ours.config.get('data')}, shape {list(shape)}, schedule {model.schedule.config()['kind']} "
        f"T={model.schedule.T}, prediction {model.prediction}) exported to a DDPMPipeline (time embedding "
        f"`{kind}`), sampled with DDIM, {args.steps} steps (timesteps {sched.timesteps[0].item()}, "
        f"{sched.timesteps[1].item()}, ..., {sched.timesteps[-1].item()}), batch {args.batch}, from the same x_T "
        f"({args.reps} batches, fresh seeds 0..{args.reps - 1}); no clipping on either side.",
        "",
        "| sampler | seconds per batch (median) | vs diffusers | max abs difference from diffusers' samples |",
        "|---|---|---|---|",
        f"| diffusers DDIMScheduler loop | {med['diffusers']:.2f} | 1.00x | - |",
        f"| difflab `ddim` on the run | {med['difflab']:.2f} | {med['diffusers'] / med['difflab']:.2f}x | "
        f"{diffs['difflab']:.2e} |",
        f"| difflab `ddim` on the export imported back | {med['difflab (imported back)']:.2f} | "
        f"{med['diffusers'] / med['difflab (imported back)']:.2f}x | {diffs['difflab (imported back)']:.2e} |",
        "",
        "Speed is diffusers' time divided by difflab's (above 1: difflab faster). The differences (samples are not clipped) "
        "come from float32 rounding (diffusers keeps its alpha-bar table in float32, difflab in "
        "float64). The export imported back is the same network bit for bit (tests/test_interop.py), so its row "
        "repeats the second one; a difference there would be a mapping error.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
