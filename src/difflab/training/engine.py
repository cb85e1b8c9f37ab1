"""The training engine: one ``fit`` loop that trains every model family.

A family is a small object that declares its named modules, which optimizer each belongs to, which get an
EMA, and its phases: functions of a batch returning named losses, one of which the phase's optimizer
minimises (a GAN has a discriminator phase and a generator phase; a diffusion model one phase).  The engine
owns the rest: budgets, warm-up and LR schedules, gradient accumulation, clipping, mixed precision, EMA,
log.csv, the progress bar, previews, the NaN halt, checkpoints of every module, exact resume, SIGTERM, and
several processes (``distributed.World``).

Every random draw of step k comes from generators seeded by (seed, k) and is made for the whole global batch
(:class:`difflab.utils.random.BatchRandom`), so a resumed run continues bitwise like an uninterrupted one, and N
processes or K accumulation micro-batches train like one process with the whole batch.
"""
from __future__ import annotations

import csv
import math
import signal
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..errors import CheckpointError, TrainingDiverged, UserError
from ..utils.config import ConfigError
from ..utils.images import save_loss_curve
from ..utils.random import BatchRandom
from .checkpoint import CHECKPOINT, CONFIG, load_checkpoint, restore_optimizer, save_checkpoint, write_json
from .config import FitConfig
from .distributed import World
from .ema import EMA, posthoc_for
from .monitor import open_logger

LOG = "log.csv"


@dataclass(frozen=True)
class OptimizerSpec:
    """An AdamW over the parameters of the named modules; lr and weight_decay default to the recipe's."""

    modules: tuple[str, ...]
    lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float | None = None


@dataclass
class Batch:
    """This process's part of step ``step``'s batch: dataset indices [n] and the batch's random draws."""

    step: int
    idx: Tensor
    rng: BatchRandom
    device: torch.device

    @property
    def n(self) -> int:
        return len(self.idx)


@dataclass(frozen=True)
class Phase:
    """One update of a step: ``loss(batch)`` returns named scalar losses; ``optimizer`` minimises ``minimize``."""

    optimizer: str
    loss: Callable[[Batch], dict[str, Tensor]]
    minimize: str = "loss"


class Family:
    """Base of a model family: fill ``modules``, ``optimizers``, ``ema`` and ``phases`` in ``__init__``."""

    modules: dict[str, nn.Module]
    optimizers: dict[str, OptimizerSpec]
    ema: tuple[str, ...] = ()
    phases: list[Phase]
    #: True if some parameters of a phase may receive no gradient in a step (DistributedDataParallel must look)
    unused_parameters: bool = False
    #: Sampling side, read by difflab.load (runs/): the registry name, the networks a sample uses, the
    #: likelihood methods (none: no ``nll``) and the trilemma plot's marker.
    name: str = ""
    sampling_modules: tuple[str, ...] = ()
    likelihood: tuple[str, ...] = ()
    marker: str = "o"

    @classmethod
    def samplers(cls, recipe: Any) -> tuple[str, ...]:
        """Sampler names a run of this family accepts (none: it has its own sampler only)."""
        return ()

    @classmethod
    def with_sampler(cls, recipe: Any, sampler: str | None, steps: int | None) -> Any:
        """The recipe sampling with ``sampler`` and ``steps`` (None: the recipe's own)."""
        return recipe

    @classmethod
    def label(cls, recipe: Any, nfe: int) -> str:
        """The run's name in a report table."""
        return cls.name

    def compile(self) -> None:
        """torch.compile the networks (in place, so checkpoints keep their keys)."""
        for m in self.modules.values():
            m.compile()

    def preview(self, ema: dict[str, nn.Module], path: Path) -> None:
        """Write a picture of what the model does now (rank 0 only); nothing by default."""

    def finish(self, run_dir: Path, ema: dict[str, nn.Module]) -> None:
        """After training (rank 0 only): the final pictures."""


@dataclass
class FitResult:
    run_dir: Path
    step: int
    losses: dict[str, float]  # the last step's named losses (mean over processes)
    seconds: float
    stopped: str = "done"  # done | budget | terminated

    @property
    def last_loss(self) -> float:
        return next(iter(self.losses.values()), math.nan)


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, step, stream)."""
    s = np.random.SeedSequence([seed, step, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(s) & 0x7FFF_FFFF_FFFF_FFFF)


def batch_indices(n: int, batch: int, seed: int, step: int) -> Tensor:
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


def _phase_stream(i: int) -> int:
    """Generator stream of phase i (stream 1 is the data permutation)."""
    return 0 if i == 0 else 100 + i


class _PhaseModule(nn.Module):
    """The modules a phase optimises, with the phase's loss as forward (what DistributedDataParallel wraps)."""

    def __init__(self, modules: dict[str, nn.Module], fn: Callable[[Batch], dict[str, Tensor]]):
        super().__init__()
        self.owned = nn.ModuleDict(modules)
        self.fn = fn
        self.batch: Batch | None = None

    def forward(self) -> dict[str, Tensor]:
        return self.fn(self.batch)


class _Terminate:
    """Remembers a SIGTERM (a scheduler's pre-emption) until the end of the current step."""

    def __init__(self) -> None:
        self.flag, self.previous = False, None

    def __enter__(self) -> "_Terminate":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.flag = True

    def __exit__(self, *exc: Any) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


def autocast(precision: str, device: torch.device) -> Any:
    """The autocast context of a precision: bf16 on CPU or CUDA, fp16 on CUDA only."""
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device (its grad scaler); use bf16 on the CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class _Log:
    """log.csv with one row per log interval: step, the named losses (window means), lr, gradient norms, seconds."""

    def __init__(self, path: Path, upto: int):
        self.path = path
        self.rows: list[dict[str, str]] = []
        self.fields: list[str] = []
        if path.is_file():
            with path.open() as f:
                reader = csv.DictReader(f)
                rows = list(reader)
            self.rows = [r for r in rows if int(r["step"]) <= upto]
            self.fields = list(reader.fieldnames or []) if self.rows else []
            if len(self.rows) < len(rows):  # rows after the checkpoint, of a killed run: drop them from the file
                self._write("w", self.rows)
        self.window: dict[str, list[float]] = {}

    def _write(self, mode: str, rows: list[dict[str, str]]) -> None:
        """Append rows (mode "a") or rewrite the file with its header ("w"); a failed write is a UserError."""
        try:
            with self.path.open(mode, newline="") as f:
                w = csv.DictWriter(f, self.fields, restval="")
                if mode == "w":
                    w.writeheader()
                w.writerows(rows)
        except OSError as e:
            kept = "the last checkpoint is kept" if (self.path.parent / CHECKPOINT).exists() else \
                "no checkpoint was written"
            raise UserError(f"could not write {self.path} ({e.strerror or e}); {kept}") from None

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.window.setdefault(k, []).append(v)

    def flush(self, step: int, lr: float, seconds: float) -> dict[str, float]:
        means = {k: float(np.mean(v)) for k, v in self.window.items()}
        self.window = {}
        row = {"step": str(step), **{k: f"{v:.6g}" for k, v in means.items()}, "lr": f"{lr:.3g}",
               "seconds": f"{seconds:.1f}"}
        self.rows.append(row)
        fields = list(dict.fromkeys([*self.fields, *row]))
        if fields != self.fields:  # new columns: rewrite the file with the full header
            self.fields = fields
            self._write("w", self.rows)
        else:
            self._write("a", [row])
        return means

    def close(self, step: int, lr: float, seconds: float) -> None:
        """Write the values of an unfinished log interval (the run stopped between rows)."""
        if self.window:
            self.flush(step, lr, seconds)

    def curve(self, out: Path) -> None:
        key = "loss" if "loss" in self.fields else next((f for f in self.fields if f not in ("step", "lr", "seconds")
                                                         and not f.startswith("grad_norm")), None)
        rows = [r for r in self.rows if r.get(key)]
        if key and rows:
            save_loss_curve([int(r["step"]) for r in rows], [float(r[key]) for r in rows], out)


def fit(family: Family, n_examples: int, cfg: FitConfig, run_dir: str | Path | None, *, world: World | None = None,
        resume: bool = False, progress: bool = True, sample_every: int = 0) -> FitResult:
    """Train ``family`` on ``n_examples`` into ``run_dir`` (checkpoint, log.csv, loss.png; None: in memory, no file);
    the caller has written its config.json (rank 0) and built the family identically on every process."""
    world = world or World()
    files = run_dir is not None and world.main
    run_dir = Path(run_dir) if run_dir is not None else None
    opts, params, scaler = _prepare(family, cfg, world)
    start, ck = _restore(run_dir, family, opts, scaler) if resume else (0, None)
    emas = _emas(family, cfg, ck, run_dir)
    posthoc = posthoc_for({n: family.modules[n] for n in family.ema}, cfg, run_dir, files, start if resume else None)
    if cfg.compile:
        family.compile()
    phases = _phases(family, world)
    opt0 = opts[phases[0][0].optimizer]  # its learning rate is the one logged

    def ema_modules() -> dict[str, nn.Module]:
        return {name: e.model for name, e in emas.items()}

    def checkpoint(step: int) -> None:
        if files:
            extra = {"grad_scaler": scaler.state_dict()} if scaler is not None else {}
            if posthoc is not None:  # first, so that a checkpoint of step s always has its snapshot
                posthoc.snapshot(step)
            save_checkpoint(run_dir, family.modules, ema_modules(), opts, step, extra)

    log = _Log(run_dir / LOG, start) if files else None
    board = open_logger(cfg.logger, run_dir if files else None)  # TensorBoard beside log.csv (training/monitor.py)
    t0, step, last, stopped = time.monotonic(), start, {}, "done"
    shown_at = (start, t0)
    bar = _progress(cfg, start, progress and world.main)
    with _Terminate() as term:
        while step < cfg.steps:
            values = _train_step(family, phases, opts, params, cfg, world, scaler, step,
                                 batch_indices(n_examples, cfg.batch_size, cfg.seed, step))
            means, stop = _reduce(world, values, cfg, t0, term.flag)
            _check_finite(means, scaler is not None, run_dir, step)
            _update_averages(family, emas, posthoc, step, cfg.checkpoint_every)
            step, last = step + 1, {k: v for k, v in means.items() if not k.startswith("grad_norm")}
            bar.update(min(round(time.monotonic() - t0, 1), bar.total) - bar.n if cfg.minutes else 1)
            if log is not None:
                shown = _log_step(log, bar, means, step, cfg, opt0, time.monotonic() - t0)
                if board is not None and shown is not None:
                    shown_at = _board_scalars(board, shown, step, shown_at, cfg.batch_size, opt0)
            if step % cfg.checkpoint_every == 0:
                checkpoint(step)
            if sample_every and step % sample_every == 0 and files:
                _preview(family, ema_modules(), run_dir, step, board)
            if stop:
                stopped = stop
                break
    _close_logs(bar, board, log, step, opt0, time.monotonic() - t0)
    checkpoint(step)
    if files and stopped != "terminated":
        log.curve(run_dir / "loss.png")
        family.finish(run_dir, ema_modules())
    world.barrier()
    return FitResult(run_dir, step, last, time.monotonic() - t0, stopped)


def _close_logs(bar: tqdm, board: Any, log: "_Log | None", step: int, opt: torch.optim.Optimizer, seconds: float) -> None:
    """The progress bar, TensorBoard and log.csv (its last partial window) closed at the end of training."""
    bar.close()
    if board is not None:
        board.close()
    if log is not None:
        log.close(step, opt.param_groups[0]["lr"], seconds)


def _emas(family: Family, cfg: FitConfig, ck: Any, run_dir: Path | None) -> dict[str, EMA]:
    """The EMA of each module the family averages, restored from checkpoint ``ck`` when resuming (ck not None)."""
    emas = {name: EMA(family.modules[name], getattr(cfg, "ema_decay", 0.999)) for name in family.ema}
    if ck is not None:
        try:
            for name, e in emas.items():
                e.model.load_state_dict(ck.ema[name])
        except (KeyError, RuntimeError) as e:
            raise CheckpointError(f"{run_dir / CHECKPOINT} does not match this model ({str(e).splitlines()[0]})") from None
    return emas


def _update_averages(family: Family, emas: dict[str, EMA], posthoc: Any, step: int, checkpoint_every: int) -> None:
    """After step ``step``: every EMA, and the post-hoc EMA profiles with their snapshot when one is due
    (a checkpoint step writes its own)."""
    for name, e in emas.items():
        e.update(family.modules[name], step)
    if posthoc is not None:
        posthoc.update(step + 1)
        if (step + 1) % posthoc.every == 0 and (step + 1) % checkpoint_every:
            posthoc.snapshot(step + 1)


def _prepare(family: Family, cfg: FitConfig, world: World) -> tuple[dict[str, torch.optim.Optimizer],
                                                                   dict[str, list[nn.Parameter]], Any]:
    """Check the batch split, move the modules to the device in train mode, build the optimizers and the fp16 grad scaler."""
    W, K, B = world.size, cfg.accumulate, cfg.batch_size
    if B % (W * K):
        raise ConfigError(f"batch_size {B} must be divisible by processes x accumulate = {W} x {K}")
    for mod in family.modules.values():
        mod.to(world.device).train()
    opts, params = _optimizers(family, cfg)
    autocast(cfg.precision, world.device)  # refuses fp16 without CUDA before anything is built
    return opts, params, torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None


def _phases(family: Family, world: World) -> list[tuple[Phase, Any]]:
    """Each phase with the modules its optimizer owns, wrapped for the processes (DDP when distributed)."""
    return [(ph, world.wrap(_PhaseModule({k: family.modules[k] for k in family.optimizers[ph.optimizer].modules},
                                         ph.loss), family.unused_parameters)) for ph in family.phases]


def _reduce(world: World, values: dict[str, float], cfg: FitConfig, t0: float,
            terminated: bool) -> tuple[dict[str, float], str]:
    """One collective per step: the values' means over processes and the stop decision ('terminated', 'budget' when
    rank 0's minutes are up, or ''), so that no process is left waiting."""
    time_up = bool(world.main and cfg.minutes and time.monotonic() - t0 > 60 * cfg.minutes)
    summed = world.sum([*values.values(), float(time_up), float(terminated)])
    means = {k: v / world.size for k, v in zip(values, summed)}
    return means, "terminated" if summed[-1] > 0 else ("budget" if summed[-2] > 0 else "")


def _optimizers(family: Family, cfg: FitConfig) -> tuple[dict[str, torch.optim.Optimizer], dict[str, list[nn.Parameter]]]:
    """AdamW per optimizer spec over the parameters of its modules (each once): (optimizers, their parameters)."""
    opts: dict[str, torch.optim.Optimizer] = {}
    params: dict[str, list[nn.Parameter]] = {}
    for name, spec in family.optimizers.items():
        ps = list(dict.fromkeys(p for mname in spec.modules for p in family.modules[mname].parameters()))
        params[name] = ps
        opts[name] = torch.optim.AdamW(ps, lr=spec.lr or cfg.lr, betas=spec.betas,
                                       weight_decay=cfg.weight_decay if spec.weight_decay is None else spec.weight_decay)
    return opts, params


def _restore(run_dir: Path, family: Family, opts: dict[str, torch.optim.Optimizer], scaler: Any) -> tuple[int, Any]:
    """Load the modules, optimizers and grad scaler of the run's checkpoint: (its step, the checkpoint)."""
    ck = load_checkpoint(run_dir)
    try:
        for name, mod in family.modules.items():
            mod.load_state_dict(ck.modules[name])
        for name, opt in opts.items():
            restore_optimizer(opt, ck, name)
    except (KeyError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{run_dir / CHECKPOINT} does not match this model ({str(e).splitlines()[0]})") from None
    if scaler is not None and "grad_scaler" in ck.meta:
        scaler.load_state_dict(ck.meta["grad_scaler"])
    return ck.step, ck


def _train_step(family: Family, phases: list[tuple[Phase, Any]], opts: dict[str, torch.optim.Optimizer],
                params: dict[str, list[nn.Parameter]], cfg: FitConfig, world: World, scaler: Any, step: int,
                idx: Tensor) -> dict[str, float]:
    """One optimisation step: each phase over this process's K micro-batches of the global batch ``idx``; the
    step's named values on this process (losses averaged over micro-batches, gradient norms)."""
    dev, K, B = world.device, cfg.accumulate, cfg.batch_size
    m = B // (world.size * K)
    values: dict[str, float] = {}
    for pi, (ph, wrapped) in enumerate(phases):
        opt = opts[ph.optimizer]
        for group in opt.param_groups:
            group["lr"] = (family.optimizers[ph.optimizer].lr or cfg.lr) * cfg.lr_at(step) / cfg.lr
        opt.zero_grad(set_to_none=True)
        for j in range(K):
            lo = (world.rank * K + j) * m
            g = step_generator(cfg.seed, step, _phase_stream(pi))
            inner = wrapped.module if world.distributed else wrapped
            inner.batch = Batch(step, idx[lo:lo + m], BatchRandom(g, lo, lo + m, B), dev)
            with world.no_sync(wrapped, j < K - 1):
                with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), autocast(cfg.precision, dev):
                    torch.manual_seed(int(step_generator(cfg.seed, step, 50 + pi).initial_seed()))  # dropout
                    out = wrapped()
                loss = out[ph.minimize].float() / K
                (scaler.scale(loss) if scaler is not None else loss).backward()
            for k, v in out.items():
                values[k] = values.get(k, 0.0) + float(v.detach()) / K
        values["grad_norm" if len(opts) == 1 else f"grad_norm_{ph.optimizer}"] = _apply(opt, params[ph.optimizer],
                                                                                       cfg, scaler)
    return values


def _apply(opt: torch.optim.Optimizer, params: list[nn.Parameter], cfg: FitConfig, scaler: Any) -> float:
    """Clip the gradients (unscaled first under fp16) and step the optimizer: the gradient norm before clipping."""
    if scaler is not None:
        scaler.unscale_(opt)
    gn = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    return float(gn)


def _check_finite(means: dict[str, float], scaled: bool, run_dir: Path | None, step: int) -> None:
    """TrainingDiverged on a non-finite loss or gradient norm (under fp16's grad scaler an overflow only skips the
    step, so there gradient norms are not fatal): the weights are spoiled, stop before they are checkpointed."""
    bad = [k for k, v in means.items() if not math.isfinite(v) and (not scaled or not k.startswith("grad_norm"))]
    if bad:
        where = (f"the last good checkpoint in {run_dir} is kept"
                 if run_dir is not None and (run_dir / CHECKPOINT).exists() else "no checkpoint was written yet")
        raise TrainingDiverged(f"{bad[0]} became {means[bad[0]]} at step {step}; {where}")


def _preview(family: Family, ema: dict[str, nn.Module], run_dir: Path, step: int, board: Any = None) -> None:
    """The family's preview of the EMA weights into RUN/samples/step_N.png (and TensorBoard's ``samples``)."""
    (run_dir / "samples").mkdir(exist_ok=True)
    path = run_dir / "samples" / f"step_{step:07d}.png"
    family.preview(ema, path)
    if board is not None and path.is_file():
        board.image(step, path)


def _board_scalars(board: Any, shown: dict[str, float], step: int, shown_at: tuple[int, float], batch: int,
                   opt: torch.optim.Optimizer) -> tuple[int, float]:
    """The logged row, the LR and samples/s since the last row to TensorBoard; returns the new (step, time) mark."""
    now = time.monotonic()
    rate = batch * (step - shown_at[0]) / max(now - shown_at[1], 1e-9)
    board.scalars(step, {**shown, "lr": opt.param_groups[0]["lr"], "samples_per_s": rate})
    return step, now


def _log_step(log: "_Log", bar: tqdm, means: dict[str, float], step: int, cfg: FitConfig,
              opt: torch.optim.Optimizer, seconds: float) -> dict[str, float] | None:
    """Add the step's values to the log window; write a row every log_every steps and show it on the bar (the row)."""
    log.add(means)
    if step % cfg.log_every == 0 or step == cfg.steps:
        shown = log.flush(step, opt.param_groups[0]["lr"], seconds)
        bar.set_postfix({k: f"{v:.4f}" for k, v in shown.items() if not k.startswith("grad_norm")})
        return shown
    return None


def fit_into(family: Family, n_examples: int, cfg: FitConfig, out: str | Path | None, config: dict[str, Any],
             progress: bool = False) -> FitResult:
    """Write out/config.json (when ``out`` is given), then :func:`fit` into ``out`` (one process)."""
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / CONFIG, config)
    return fit(family, n_examples, cfg, out, progress=progress)


def _progress(cfg: FitConfig, start: int, enabled: bool) -> tqdm:
    """A bar over steps, or over seconds when the budget is wall-clock minutes."""
    if cfg.minutes:
        return tqdm(total=round(60 * cfg.minutes), disable=not enabled, desc="train", unit="s", dynamic_ncols=True,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s{postfix}")
    return tqdm(total=cfg.steps, initial=start, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)


__all__ = ["Family", "Phase", "OptimizerSpec", "Batch", "FitResult", "fit", "fit_into", "step_generator", "batch_indices",
           "autocast", "LOG"]
