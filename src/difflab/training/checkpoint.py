"""Checkpoints: one safetensors file (every named module, its EMA and optimizer, the step) plus a run config JSON,
written atomically (a temporary file renamed over the old one)."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from ..utils.config import read_json_object

CHECKPOINT = "checkpoint.safetensors"
CONFIG = "config.json"
FORMAT = "difflab-checkpoint-2"
FORMAT_1 = "difflab-checkpoint-1"  # one model, read for older runs


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) on a temporary file in path's folder, then rename it over path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes the file private; a run folder is as readable as the user's files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2)))


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object of a run's file (CheckpointError otherwise)."""
    return read_json_object(path, CheckpointError)


def _optimizer_tensors(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[Any]]:
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"optim.{name}.{pid}.{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous().cpu()
    return tensors, sd["param_groups"]


@dataclass
class Checkpoint:
    """A checkpoint's contents by module name: weights, EMA weights, flattened optimizer state, and metadata."""

    modules: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    ema: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    optim: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))


def save_checkpoint(run_dir: Path, modules: dict[str, nn.Module], ema: dict[str, nn.Module] | None = None,
                    optimizers: dict[str, torch.optim.Optimizer] | None = None, step: int = 0,
                    extra: dict[str, Any] | None = None) -> None:
    """Write run_dir/checkpoint.safetensors atomically: every named module, EMA and optimizer, and the step.

    A failed write (a full disk, a lost mount) raises CheckpointError naming the file; the previous checkpoint stays.
    A successful one removes the temporary files of writes that were killed (SIGKILL runs no cleanup).
    """
    tensors: dict[str, torch.Tensor] = {}
    for kind, group in (("module", modules), ("ema", ema or {})):
        for name, m in group.items():
            tensors.update({f"{kind}.{name}.{k}": v.detach().cpu().clone().contiguous() for k, v in m.state_dict().items()})
    groups = {}
    for name, opt in (optimizers or {}).items():
        ot, groups[name] = _optimizer_tensors(name, opt)
        tensors.update(ot)
    meta: dict[str, Any] = {"step": int(step), "optimizers": groups, **(extra or {})}
    metadata = {"format": FORMAT, "meta": json.dumps(meta)}
    path = Path(run_dir) / CHECKPOINT
    try:
        atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))
    except OSError as e:
        kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint was written"
        raise CheckpointError(f"could not write {path} ({e.strerror or e}); {kept}") from None
    for stale in path.parent.glob(f".{path.stem}.*{path.suffix}"):  # left by a writer killed mid-write
        stale.unlink(missing_ok=True)


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read run_dir/checkpoint.safetensors (this format or the single-model format 1); CheckpointError if damaged."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        flat = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({str(e).splitlines()[0]})") from None
    fmt = metadata.get("format")
    if fmt not in (FORMAT, FORMAT_1):
        raise CheckpointError(f"{path} is not a difflab checkpoint")
    meta = json.loads(metadata.get("meta", "{}"))
    ck = Checkpoint(meta=meta)
    if fmt == FORMAT_1:  # one module "model": model.*, ema.*, optim.<pid>.<key>
        meta["optimizers"] = {"model": meta.pop("param_groups")} if "param_groups" in meta else {}
        flat = {(f"module.{k}" if k.startswith("model.") else
                 f"ema.model.{k[4:]}" if k.startswith("ema.") else f"optim.model.{k[6:]}"): v for k, v in flat.items()}
    for k, v in flat.items():
        kind, name, rest = k.split(".", 2)
        getattr(ck, {"module": "modules", "ema": "ema", "optim": "optim"}[kind]).setdefault(name, {})[rest] = v
    return ck


def restore_optimizer(opt: torch.optim.Optimizer, ck: Checkpoint, name: str) -> None:
    """Load optimizer ``name`` of a checkpoint (inverse of the flattening in save_checkpoint)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in ck.optim.get(name, {}).items():
        pid, key = k.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": ck.meta["optimizers"][name]})


def read_folder_config(path: Path, fmt: str | tuple[str, ...], what: str, hint: str = "") -> dict[str, Any]:
    """folder/config.json, whose "format" must be fmt (or one of them); a CheckpointError naming the folder or file otherwise."""
    if not path.is_dir():
        raise CheckpointError(f"{what} folder {path} does not exist")
    rc = read_json(path / CONFIG)
    if rc.get("format") not in ((fmt,) if isinstance(fmt, str) else fmt):
        raise CheckpointError(f"{path / CONFIG} is not a difflab {what}{hint}")
    return rc


def load_folder(path: str | Path, fmt: str | tuple[str, ...], what: str, build: Callable[[dict[str, Any]], nn.Module],
                ema: bool = False, hint: str = "", module: str = "model") -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Rebuild a module saved as folder/config.json (whose "format" must be fmt) + checkpoint.safetensors.

    ``build(config)`` makes the module from the JSON; the checkpoint's module ``module`` is loaded, its EMA
    weights when ``ema`` and present.
    Returns (module in eval mode without gradients, config, checkpoint metadata); every failure is a
    CheckpointError naming the file.
    """
    path = Path(path)
    rc = read_folder_config(path, fmt, what, hint)
    name = module
    try:
        net = build(rc)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG}: cannot rebuild the {what} ({e})") from None
    ck = load_checkpoint(path)
    load_weights(net, ck, name, ema, path)
    return net.eval().requires_grad_(False), rc, ck.meta


def load_weights(module: nn.Module, ck: Checkpoint, name: str, ema: bool, run_dir: Path) -> None:
    """Load checkpoint module ``name`` (its EMA when ``ema`` and present) into ``module``; CheckpointError otherwise."""
    weights = ck.ema.get(name) if ema and ck.ema.get(name) else ck.modules.get(name)
    if weights is None:
        raise CheckpointError(f"{Path(run_dir) / CHECKPOINT} holds no module {name!r}")
    try:
        module.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{run_dir}: weights do not match the config ({str(e).splitlines()[0]})") from None
