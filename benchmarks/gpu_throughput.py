"""Training throughput on one device: difflab's engine against the diffusers loop, synthetic 32x32x3 and 64x64x3 data.

Run by ``benchmarks/gpu_check.sh`` on a GPU:   python benchmarks/gpu_throughput.py --device cuda
A smoke test anywhere:                          python benchmarks/gpu_throughput.py --device cpu --sizes 8 --seconds 2

Both sides train the same U-Net (difflab's default for the image size, described to diffusers' UNet2DModel by
``throughput.diffusers_kwargs``) with the same recipe (``throughput.recipe``) in fp32 and bf16 autocast, for a fixed
wall-clock window after untimed warm-up steps, on uint8 noise images converted per batch as real data would be.
Prints a Markdown table and writes the raw numbers to ``--json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from throughput import EMA_DECAY, LR, WARMUP, CLIP, diffusers_kwargs, recipe  # noqa: E402

from difflab.data import Dataset  # noqa: E402
from difflab.models.unet import unet_for_image  # noqa: E402
from difflab.training import DiffusionFamily, fit  # noqa: E402
from difflab.training.distributed import World  # noqa: E402
from difflab.training.engine import batch_indices  # noqa: E402


def synthetic(size: int, n: int = 4096) -> Dataset:
    """n uint8 noise images [n, 3, size, size] (the loader's cost without any decoding)."""
    x = torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return Dataset(x, None, f"synthetic {size}x{size}x3")


def timed(step: Callable[[], None], warmup: int, seconds: float, sync: Callable[[], None]) -> dict[str, float]:
    """steps/s of ``step`` over a wall-clock window, after warm-up steps."""
    for _ in range(warmup):
        step()
    sync()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    sync()
    return {"steps": n, "seconds": time.perf_counter() - t0, "steps_per_s": n / (time.perf_counter() - t0)}


def difflab_rate(data: Dataset, batch: int, precision: str, dev: torch.device, warmup: int,
                 seconds: float) -> dict[str, float]:
    """steps/s of difflab.training.fit (in memory, no run folder) under its own wall-clock budget, after a warm-up fit."""
    cfg = recipe(batch, precision=precision)
    torch.manual_seed(0)
    family = DiffusionFamily(cfg, data)
    fit(family, len(data), cfg.replace(steps=warmup), None, world=World(device=dev), progress=False)
    res = fit(family, len(data), cfg.replace(steps=10**9, minutes=seconds / 60), None, world=World(device=dev),
              progress=False)
    return {"steps": res.step, "seconds": res.seconds, "steps_per_s": res.step / res.seconds}


def diffusers_steps(data: Dataset, batch: int, precision: str, dev: torch.device) -> Callable[[], None]:
    """One call = one step of the loop of diffusers' unconditional training example."""
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    c, h, _ = data.shape
    torch.manual_seed(0)
    model = UNet2DModel(**diffusers_kwargs(unet_for_image(h, c), h)).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    lr = get_scheduler("constant_with_warmup", opt, num_warmup_steps=WARMUP)
    ema = EMAModel(model.parameters(), decay=EMA_DECAY, foreach=True)
    noise_sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    state = {"step": 0}

    def step() -> None:
        x0 = data.batch(batch_indices(len(data), batch, 0, state["step"])).to(dev, non_blocking=True)
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (len(x0),), device=dev)
        amp = torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
        with amp:
            pred = model(noise_sched.add_noise(x0, noise, t), t, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        lr.step()
        opt.zero_grad(set_to_none=True)
        ema.step(model.parameters())
        loss.item()
        state["step"] += 1

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=20.0, help="timed window per contender")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    p.add_argument("--json", type=Path, help="where to write the raw numbers")
    args = p.parse_args()
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rows: list[dict[str, Any]] = []
    print("| data | precision | difflab steps/s | diffusers steps/s | ratio |\n|---|---|---|---|---|", flush=True)
    for size in args.sizes:
        data = synthetic(size)
        for precision in args.precisions:
            r = {"difflab": difflab_rate(data, args.batch, precision, dev, args.warmup, args.seconds),
                 "diffusers": timed(diffusers_steps(data, args.batch, precision, dev), args.warmup, args.seconds, sync)}
            rows.append({"size": size, "precision": precision, "batch": args.batch, **r})
            a, b = r["difflab"]["steps_per_s"], r["diffusers"]["steps_per_s"]
            print(f"| {size}x{size}x3 | {precision} | {a:.2f} | {b:.2f} | {a / b:.2f} |", flush=True)
    if args.json:
        device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
        args.json.write_text(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
