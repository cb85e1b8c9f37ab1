"""The training loop (Ho et al. 2020, Algorithm 1) with AdamW, EMA, warm-up, clipping, budgets and exact resume.

Every random choice of step k (batch, t, noise, dropout) is drawn from a generator seeded by (seed, k), so a
run resumed from its checkpoint continues bitwise like an uninterrupted one on the same machine.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import Dataset
from ..errors import TrainingDiverged, UserError
from .. import losses
from ..models.denoiser import Clamped, Denoiser
from ..utils.images import save_image_grid, save_loss_curve, save_scatter
from .checkpoint import CHECKPOINT, CONFIG, load_checkpoint, read_json, restore_optimizer, save_checkpoint, write_json
from .config import TrainConfig
from .ema import EMA
from .run import build_denoiser, default_device, run_config

LOG = "log.csv"
LOG_FIELDS = ["step", "loss", "lr", "grad_norm", "seconds"]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    last_loss: float
    seconds: float


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, step, stream)."""
    s = np.random.SeedSequence([seed, step, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(s) & 0x7FFF_FFFF_FFFF_FFFF)


def batch_indices(n: int, batch: int, seed: int, step: int) -> torch.Tensor:
    """Indices of step's batch: consecutive slices of a fresh seeded permutation of the data each epoch."""
    start = step * batch
    out, pos = [], start
    while pos < start + batch:
        epoch, offset = divmod(pos, n)
        perm = torch.randperm(n, generator=step_generator(seed, epoch, stream=1))
        take = min(n - offset, start + batch - pos)
        out.append(perm[offset: offset + take])
        pos += take
    return torch.cat(out)


def batch_condition(cfg: TrainConfig, data: Dataset, idx: torch.Tensor, g: torch.Generator,
                    device: torch.device) -> dict[str, torch.Tensor] | None:
    """The network's condition for a batch: labels (or caption states), replaced by the null label (empty context) with probability p_uncond."""
    if not cfg.conditional:
        return None
    if cfg.text_encoder != "none":
        from ..text import caption_table

        ctx, mask = caption_table(data, cfg.text_encoder).gather(idx)
        drop = torch.rand(len(idx), generator=g) < cfg.p_uncond  # the empty prompt: no context tokens
        return {"context": (ctx * ~drop[:, None, None]).to(device), "context_mask": (mask & ~drop[:, None]).to(device)}
    y = data.y[idx].clone()
    y[torch.rand(len(y), generator=g) < cfg.p_uncond] = data.num_classes  # the null label
    return {"y": y.to(device)}


def train_step(model: Denoiser, opt: torch.optim.Optimizer, cfg: TrainConfig, data: Dataset,
               step: int, device: torch.device) -> tuple[float, float]:
    """One optimisation step; returns (loss, gradient norm)."""
    g = step_generator(cfg.seed, step)
    idx = batch_indices(len(data), cfg.batch_size, cfg.seed, step)
    x0 = data.x[idx].to(device)
    cond = batch_condition(cfg, data, idx, g, device)
    torch.manual_seed(int(torch.randint(2**62, (1,), generator=g)))  # dropout
    for group in opt.param_groups:
        group["lr"] = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    loss = losses.OBJECTIVES[cfg.objective](model, x0, cond, g, cfg)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    clip = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss.item(), gnorm.item()


def preview(model: Denoiser, data: Dataset, cfg: TrainConfig, path: Path, num: int = 64) -> None:
    """Sample a grid (images) or scatter plot (points) with the configured sampler."""
    from ..samplers import sample

    g = torch.Generator().manual_seed(cfg.seed)
    n = num if data.kind == "image" else 2000
    device = next(model.parameters()).device
    cond = None
    if cfg.conditional and cfg.text_encoder != "none":
        from ..text import class_prompts, encode_prompts

        ctx, mask = encode_prompts(class_prompts(data.num_classes), cfg.text_encoder)
        k = torch.arange(n) % data.num_classes
        cond = {"context": ctx[k].to(device), "context_mask": mask[k].to(device)}
    elif cfg.conditional:
        cond = {"y": (torch.arange(n) % data.num_classes).to(device)}
    x_T = torch.randn((n, *data.shape), generator=g).to(device)
    if data.kind == "image":
        model = Clamped(model)  # images live in [-1, 1]
    with torch.no_grad():
        x = sample(model, x_T, sampler=cfg.sampler, steps=cfg.sample_steps, cond=cond, generator=g)
    if data.kind == "image":
        save_image_grid(x, path, nrow=data.num_classes if cfg.conditional and n % 10 == 0 else None)
    else:
        save_scatter(x, path, reference=data.x[:2000], title=f"{data.spec}, {cfg.sampler} {cfg.sample_steps} steps")


def _prepare(run_dir: Path, cfg: TrainConfig, data: Dataset, resume: bool) -> None:
    if resume:
        if not (run_dir / CHECKPOINT).is_file():
            raise UserError(f"--resume: {run_dir} holds no checkpoint to resume from")
        stored = read_json(run_dir / CONFIG)
        if stored.get("data") != data.spec:
            raise UserError(f"--resume: {run_dir} was trained on {stored.get('data')!r}, not {data.spec!r}")
    elif (run_dir / CHECKPOINT).exists():
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    run_dir.mkdir(parents=True, exist_ok=True)


def _read_log(path: Path, upto: int) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]


def train(cfg: TrainConfig, data: Dataset, run_dir: str | Path, *, resume: bool = False,
          device: torch.device | str | None = None, progress: bool = True) -> TrainResult:
    """Train a denoiser on data into run_dir (config.json, checkpoint.safetensors, log.csv, samples.png, loss.png)."""
    run_dir, device = Path(run_dir), torch.device(device or default_device())
    _prepare(run_dir, cfg, data, resume)
    torch.manual_seed(cfg.seed)
    model = build_denoiser(cfg, data).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay)
    start = 0
    if resume:
        parts, meta = load_checkpoint(run_dir)
        model.load_state_dict(parts["model"])
        ema.model.load_state_dict(parts["ema"])
        restore_optimizer(opt, parts["optim"], meta)
        start = int(meta["step"])
    write_json(run_dir / CONFIG, run_config(cfg, data, model))
    rows = _read_log(run_dir / LOG, start)
    with (run_dir / LOG).open("w", newline="") as f:
        csv.DictWriter(f, LOG_FIELDS).writeheader()
        csv.DictWriter(f, LOG_FIELDS).writerows(rows)
    t0, step, last, window = time.monotonic(), start, math.nan, []
    bar = _progress(cfg, start, progress)
    model.train()
    while step < cfg.steps:
        if cfg.minutes and time.monotonic() - t0 > 60 * cfg.minutes:
            break
        loss, gnorm = train_step(model, opt, cfg, data, step, device)
        if not math.isfinite(loss):
            where = (f"the last good checkpoint in {run_dir} is kept" if (run_dir / CHECKPOINT).exists()
                     else "no checkpoint was written yet")
            raise TrainingDiverged(f"loss became {loss} at step {step}; {where}")
        ema.update(model, step)
        step, last = step + 1, loss
        window.append(loss)
        bar.update(min(round(time.monotonic() - t0, 1), bar.total) - bar.n if cfg.minutes else 1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            _log(run_dir, step, window, opt, gnorm, time.monotonic() - t0)
            bar.set_postfix(step=step, loss=f"{np.mean(window):.4f}")
            window = []
        if step % cfg.checkpoint_every == 0:
            save_checkpoint(run_dir, model, ema.model, opt, step)
        if cfg.sample_every and step % cfg.sample_every == 0:
            (run_dir / "samples").mkdir(exist_ok=True)
            preview(ema.model, data, cfg, run_dir / "samples" / f"step_{step:07d}.png")
    bar.close()
    if window:
        _log(run_dir, step, window, opt, gnorm, time.monotonic() - t0)
    save_checkpoint(run_dir, model, ema.model, opt, step)
    finish(run_dir, ema.model, data, cfg)
    return TrainResult(run_dir, step, last, time.monotonic() - t0)


def _progress(cfg: TrainConfig, start: int, enabled: bool) -> tqdm:
    """A bar over steps, or over seconds when the budget is wall-clock minutes."""
    if cfg.minutes:
        return tqdm(total=round(60 * cfg.minutes), disable=not enabled, desc="train", unit="s", dynamic_ncols=True,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s{postfix}")
    return tqdm(total=cfg.steps, initial=start, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)


def _log(run_dir: Path, step: int, window: list[float], opt: Any, gnorm: float, seconds: float) -> None:
    with (run_dir / LOG).open("a", newline="") as f:
        csv.DictWriter(f, LOG_FIELDS).writerow({"step": step, "loss": f"{np.mean(window):.6g}",
                                                "lr": f"{opt.param_groups[0]['lr']:.3g}",
                                                "grad_norm": f"{gnorm:.4g}", "seconds": f"{seconds:.1f}"})


def finish(run_dir: Path, ema_model: Denoiser, data: Dataset, cfg: TrainConfig) -> None:
    """Loss curve and final sample grid of a run."""
    rows = _read_log(run_dir / LOG, 10**12)
    if rows:
        save_loss_curve([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], run_dir / "loss.png")
    preview(ema_model, data, cfg, run_dir / "samples.png")
