"""Exponential moving averages of weights: the classic EMA, and EDM2's power-function EMAs with snapshots from
which any EMA length is reconstructed after training (Karras et al. 2024, "Analyzing and improving the training
dynamics of diffusion models", sec. 3)."""
from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, UserError


class EMA:
    """theta_ema <- d theta_ema + (1 - d) theta, with warm-up d_k = min(decay, (1 + k) / (10 + k))."""

    def __init__(self, model: nn.Module, decay: float = 0.999):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


# ---- post-hoc EMA ----
EMA_DIR = "ema"
SNAPSHOT_FORMAT = "difflab-posthoc-ema-1"
_SNAPSHOT = re.compile(r"snapshot-(\d{8,})\.safetensors")
#: sigma_rel of the largest power-function EMA, gamma = 0 (the plain average of all iterates): sqrt(1/12)
SIGMA_REL_MAX = math.sqrt(1.0 / 12.0)


def gamma_from_sigma_rel(sigma_rel: float) -> float:
    """Exponent gamma of the power-function EMA of relative std sigma_rel: the largest root of
    sigma_rel^2 (gamma + 2)^2 (gamma + 3) = gamma + 1 (Karras et al. 2024, eq. 4)."""
    check_sigma_rels([sigma_rel])
    q = 1.0 / sigma_rel**2
    return float(np.roots([1.0, 7.0, 16.0 - q, 12.0 - q]).real.max())


def sigma_rel_from_gamma(gamma: float) -> float:
    """sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) (Karras et al. 2024, eq. 4)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def check_sigma_rels(values: Sequence[float]) -> None:
    """ValueError unless every sigma_rel lies in (0, sqrt(1/12)), the range of power-function EMAs with gamma > 0."""
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < SIGMA_REL_MAX:
            raise ValueError(f"an EMA length sigma_rel must lie in (0, {SIGMA_REL_MAX:.4f}), got {v!r}")


def power_profile(gamma: float, t: int, upto: int | None = None, start: int = 1) -> np.ndarray:
    """Weights w[tau - start], tau = start..upto, of the iterates in the power EMA after t updates (0 beyond t):
    w(tau) = (tau^(gamma+1) - (tau-1)^(gamma+1)) / t^(gamma+1), the unrolled beta_t = (1 - 1/t)^(gamma+1); sums to 1."""
    tau = np.arange(start, (upto or t) + 1, dtype=np.float64)
    return (np.minimum(tau, t) / t) ** (gamma + 1) - (np.minimum(tau - 1, t) / t) ** (gamma + 1)


def fit_posthoc(snapshots: Sequence[tuple[int, float]], step: int, gamma: float,
                chunk: int = 1 << 16) -> tuple[np.ndarray, float]:
    """(x, r): coefficients x [n] with sum_i x_i profile(gamma_i, t_i) closest in least squares to w = profile(gamma,
    step), for snapshots (t_i, gamma_i) (Karras et al. 2024, sec. 3.2 and app. C.3), and the relative residual
    r = ||W^T x - w|| / ||w||.  x = lstsq(A, b) with A = W W^T, b = W w accumulated over chunks of iterations."""
    T = max(step, *(t for t, _ in snapshots))
    n = len(snapshots)
    A, b, ww = np.zeros((n, n)), np.zeros(n), 0.0
    for lo in range(1, T + 1, chunk):
        hi = min(T, lo + chunk - 1)
        W = np.stack([power_profile(g, t, hi, lo) for t, g in snapshots])
        w = power_profile(gamma, step, hi, lo)
        A, b, ww = A + W @ W.T, b + W @ w, ww + float(w @ w)
    x, *_ = np.linalg.lstsq(A, b, rcond=None)
    return x, math.sqrt(max(0.0, float(x @ A @ x - 2 * x @ b) + ww) / ww)


def solve_posthoc(snapshots: Sequence[tuple[int, float]], step: int, gamma: float) -> np.ndarray:
    """The coefficients of :func:`fit_posthoc`."""
    return fit_posthoc(snapshots, step, gamma)[0]


class PostHocResult(NamedTuple):
    """A reconstructed EMA: {module: state_dict} (float64), its step, and the profile fit's relative residual."""

    weights: dict[str, dict[str, torch.Tensor]]
    step: int
    residual: float


class PowerEMA:
    """theta_hat_t = beta_t theta_hat_(t-1) + (1 - beta_t) theta_t with beta_t = (1 - 1/t)^(gamma + 1), t = 1, 2, ...
    (Karras et al. 2024, eq. 3): an average of all iterates with weights growing as tau^gamma, of length sigma_rel."""

    def __init__(self, model: nn.Module, sigma_rel: float):
        self.sigma_rel, self.gamma = float(sigma_rel), gamma_from_sigma_rel(sigma_rel)
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, t: int) -> None:
        """Fold in the weights after update t (t >= 1; beta_1 = 0 copies them)."""
        beta = (1.0 - 1.0 / t) ** (self.gamma + 1)
        for k, v in model.state_dict().items():
            e = self.state[k]
            if e.is_floating_point():
                e.lerp_(v.detach(), 1.0 - beta)
            else:
                e.copy_(v)


class PostHocEMA:
    """Power-function EMAs of named modules at several sigma_rel, snapshotted to RUN/ema/snapshot-<step>.safetensors
    every ``every`` steps and at every checkpoint, so that any EMA length can be reconstructed after training."""

    def __init__(self, modules: dict[str, nn.Module], sigma_rels: Sequence[float], every: int,
                 folder: Path | None = None, write: bool = True):
        check_sigma_rels(sigma_rels)
        self.modules, self.every, self.folder, self.write = modules, int(every), folder, write
        self.emas = [{name: PowerEMA(m, r) for name, m in modules.items()} for r in sigma_rels]

    def update(self, t: int) -> None:
        """Fold in the modules' weights after update t (1-based)."""
        for profile in self.emas:
            for name, e in profile.items():
                e.update(self.modules[name], t)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every profile's weights, keyed '<profile index>.<module>.<parameter>'."""
        return {f"{i}.{name}.{k}": v.detach().cpu().contiguous() for i, profile in enumerate(self.emas)
                for name, e in profile.items() for k, v in e.state.items()}

    def snapshot(self, step: int) -> None:
        """Write the snapshot of ``step`` (rank 0 of a run with a folder; atomically)."""
        if self.folder is None or not self.write:
            return
        from .checkpoint import atomic_write

        heads = [next(iter(profile.values())) for profile in self.emas]
        meta = {"format": SNAPSHOT_FORMAT, "step": str(step), "sigma_rel": json.dumps([e.sigma_rel for e in heads]),
                "gamma": json.dumps([e.gamma for e in heads])}
        path = self.folder / EMA_DIR / f"snapshot-{step:08d}.safetensors"
        try:
            atomic_write(path, lambda p: save_file(self.tensors(), str(p), metadata=meta))
        except OSError as e:
            raise CheckpointError(f"could not write {path} ({e.strerror or e})") from None

    def resume(self, step: int) -> None:
        """Restore the EMAs from the snapshot of ``step`` (the checkpoint's) and drop later snapshots of a killed run."""
        snaps = list_snapshots(self.folder) if self.folder is not None else {}
        if step not in snaps:
            raise CheckpointError(f"--resume: {self.folder / EMA_DIR} holds no post-hoc EMA snapshot of step {step}")
        flat, _ = read_snapshot(snaps[step])
        for i, profile in enumerate(self.emas):
            for name, e in profile.items():
                for k in e.state:
                    key = f"{i}.{name}.{k}"
                    if key not in flat:
                        raise CheckpointError(f"{snaps[step]} does not match this model (no {key})")
                    e.state[k].copy_(flat[key])
        if self.write:
            for s, path in snaps.items():
                if s > step:
                    path.unlink(missing_ok=True)


def posthoc_for(modules: dict[str, nn.Module], cfg: Any, run_dir: Path | None, write: bool,
                resume_step: int | None) -> PostHocEMA | None:
    """The engine's post-hoc EMA tracker of a recipe with ``posthoc_ema`` sigma_rels (None without), resumed if asked."""
    rels = tuple(getattr(cfg, "posthoc_ema", ()) or ())
    if not rels or not modules:
        return None
    tracker = PostHocEMA(modules, rels, getattr(cfg, "posthoc_every", 100), run_dir, write)
    if resume_step is not None and run_dir is not None:
        tracker.resume(resume_step)
    return tracker


def list_snapshots(run_dir: Path) -> dict[int, Path]:
    """{step: path} of the post-hoc EMA snapshots in RUN/ema/."""
    folder = Path(run_dir) / EMA_DIR
    found = {}
    for p in sorted(folder.glob("snapshot-*.safetensors")) if folder.is_dir() else []:
        m = _SNAPSHOT.fullmatch(p.name)
        if m:
            found[int(m.group(1))] = p
    return found


def read_snapshot(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, {"step", "sigma_rel", "gamma"}) of one snapshot file; CheckpointError if it is damaged or foreign."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        flat = load_file(str(path))
        if meta.get("format") != SNAPSHOT_FORMAT:
            raise ValueError("not a difflab post-hoc EMA snapshot")
        info = {"step": int(meta["step"]), "sigma_rel": json.loads(meta["sigma_rel"]), "gamma": json.loads(meta["gamma"])}
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{path} is corrupt or not a post-hoc EMA snapshot ({str(e).splitlines()[0]})") from None
    return flat, info


def _snapshot_info(path: Path) -> dict[str, Any]:
    """The metadata of a snapshot without its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != SNAPSHOT_FORMAT:
            raise ValueError("not a difflab post-hoc EMA snapshot")
        return {"step": int(meta["step"]), "gamma": json.loads(meta["gamma"])}
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path} is corrupt or not a post-hoc EMA snapshot ({str(e).splitlines()[0]})") from None


def reconstruct(run_dir: str | Path, sigma_rel: float, step: int | None = None) -> PostHocResult:
    """The power EMA of length ``sigma_rel`` at ``step`` (default: the last snapshot), as the least-squares
    combination of the run's snapshots up to that step (Karras et al. 2024, sec. 3.2)."""
    try:
        check_sigma_rels([sigma_rel])
    except ValueError as e:
        raise UserError(f"--length: {e}") from None
    snaps = list_snapshots(Path(run_dir))
    if not snaps:
        raise UserError(f"{run_dir} holds no post-hoc EMA snapshots in {EMA_DIR}/ (train with posthoc_ema, "
                        "e.g. difflab train --posthoc-ema 0.05 0.1)")
    step = max(snaps) if step is None else int(step)
    use = {s: p for s, p in snaps.items() if s <= step}
    if not use:
        raise UserError(f"--step {step}: the first post-hoc EMA snapshot of {run_dir} is at step {min(snaps)}")
    entries = [(s, i, g) for s, p in use.items() for i, g in enumerate(_snapshot_info(p)["gamma"])]
    x, residual = fit_posthoc([(s, g) for s, _, g in entries], step, gamma_from_sigma_rel(sigma_rel))
    acc: dict[str, torch.Tensor] = {}
    for s, path in use.items():
        flat, _ = read_snapshot(path)
        for (es, i, _), xi in zip(entries, x):
            if es != s:
                continue
            for key, v in flat.items():
                idx, name = key.split(".", 1)
                if int(idx) == i:
                    acc[name] = acc.get(name, 0) + float(xi) * v.double() if v.is_floating_point() else v
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, v in acc.items():
        module, k = name.split(".", 1)
        out.setdefault(module, {})[k] = v
    return PostHocResult(out, step, residual)


def write_posthoc_run(run_dir: str | Path, sigma_rel: float, out: str | Path | None = None,
                      step: int | None = None) -> tuple[Path, PostHocResult]:
    """Copy RUN to ``out`` (default RUN-ema<sigma_rel>) with its EMA weights replaced by the post-hoc EMA of length
    ``sigma_rel``; config.json records it.  The source run is left as it is; an existing run at ``out`` is refused.
    Returns the folder and the reconstruction."""
    from .checkpoint import CHECKPOINT, CONFIG, atomic_write, read_json, write_json

    run_dir = Path(run_dir)
    if not (run_dir / CHECKPOINT).is_file() or not (run_dir / CONFIG).is_file():
        raise UserError(f"--run: {run_dir} is not a run folder (no {CHECKPOINT} or {CONFIG})")
    out = Path(out) if out is not None else run_dir.with_name(f"{run_dir.name}-ema{sigma_rel:g}")
    if (out / CHECKPOINT).exists() or (out / CONFIG).exists():
        raise UserError(f"--out: {out} already holds a run; choose another folder")
    result = reconstruct(run_dir, sigma_rel, step)
    from safetensors import safe_open

    with safe_open(str(run_dir / CHECKPOINT), "pt") as f:
        metadata = f.metadata() or {}
    flat = load_file(str(run_dir / CHECKPOINT))
    for module, sd in result.weights.items():
        for k, v in sd.items():
            key = f"ema.{module}.{k}"
            if key not in flat:
                raise CheckpointError(f"{run_dir / CHECKPOINT} has no {key}: the snapshots belong to another model")
            flat[key] = v.to(flat[key].dtype).contiguous()
    config = read_json(run_dir / CONFIG)
    config["posthoc_ema"] = {"sigma_rel": float(sigma_rel), "step": result.step, "residual": result.residual,
                             "source": str(run_dir)}
    atomic_write(out / CHECKPOINT, lambda p: save_file(flat, str(p), metadata=metadata))
    write_json(out / CONFIG, config)
    return out, result
