"""Checkpoints: one safetensors file (model, EMA, optimizer, step) plus a run config JSON, written atomically."""
from __future__ import annotations

import json
import os
import tempfile
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
FORMAT = "difflab-checkpoint-1"


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path) on a temporary file in path's folder, then rename it over path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=2)))


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object of a run's file (CheckpointError otherwise)."""
    return read_json_object(path, CheckpointError)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"optim.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    return tensors, {"param_groups": sd["param_groups"]}


def save_checkpoint(run_dir: Path, model: nn.Module, ema: nn.Module | None, opt: torch.optim.Optimizer | None,
                    step: int, extra: dict[str, Any] | None = None) -> None:
    """Write run_dir/checkpoint.safetensors atomically (metadata: step, optimizer hyper-parameters)."""
    tensors = {f"model.{k}": v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().cpu().clone() for k, v in ema.state_dict().items()})
    meta: dict[str, Any] = {"step": step, **(extra or {})}
    if opt is not None:
        ot, groups = _optimizer_tensors(opt)
        tensors.update({k: v.contiguous().cpu() for k, v in ot.items()})
        meta.update(groups)
    metadata = {"format": FORMAT, "meta": json.dumps(meta)}
    atomic_write(run_dir / CHECKPOINT, lambda p: save_file(tensors, str(p), metadata=metadata))


def load_checkpoint(run_dir: Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read the checkpoint: ({"model": sd, "ema": sd, "optim": flat}, meta); raises CheckpointError if damaged."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
        flat = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({str(e).splitlines()[0]})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a difflab checkpoint")
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "ema": {}, "optim": {}}
    for k, v in flat.items():
        head, _, rest = k.partition(".")
        parts.setdefault(head, {})[rest] = v
    return parts, json.loads(metadata.get("meta", "{}"))


def restore_optimizer(opt: torch.optim.Optimizer, flat: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of the optimizer flattening in save_checkpoint."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def load_folder(path: str | Path, fmt: str, what: str, build: Callable[[dict[str, Any]], nn.Module],
                ema: bool = False, hint: str = "") -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Rebuild a module saved as folder/config.json (whose "format" must be fmt) + checkpoint.safetensors.

    ``build(config)`` makes the module from the JSON; the EMA weights are loaded when ``ema`` and present.
    Returns (module in eval mode without gradients, config, checkpoint metadata); every failure is a
    CheckpointError naming the file.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{what} folder {path} does not exist")
    rc = read_json(path / CONFIG)
    if rc.get("format") != fmt:
        raise CheckpointError(f"{path / CONFIG} is not a difflab {what}{hint}")
    try:
        module = build(rc)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / CONFIG}: cannot rebuild the {what} ({e})") from None
    parts, meta = load_checkpoint(path)
    try:
        module.load_state_dict(parts["ema"] if ema and parts["ema"] else parts["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the config ({str(e).splitlines()[0]})") from None
    return module.eval().requires_grad_(False), rc, meta
