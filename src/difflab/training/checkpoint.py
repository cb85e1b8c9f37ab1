"""Checkpoints: one safetensors file (every named module, its EMA and optimizer, the step) plus a run config JSON,
written atomically (a temporary file renamed over the old one)."""
from __future__ import annotations

import json
import math
import os
import shutil
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


def atomic_folder(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp_dir) on a new temporary folder beside path, then rename it to path (which must be absent or an
    empty folder): a failed write leaves no half-written folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes the folder private
        if path.is_dir():
            path.rmdir()  # empty, checked by the caller; OSError if something appeared meanwhile
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    """Write obj as JSON atomically; non-finite floats become null (strict JSON, readable by any parser)."""
    atomic_write(path, lambda p: p.write_text(json.dumps(_finite(obj), indent=2, allow_nan=False)))


def _finite(obj: Any) -> Any:
    """obj with every NaN or infinite float replaced by None (JSON null)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


PENDING = ".config.pending.json"


def stage_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Write a run's config.json; when the run already has a checkpoint (a resume), hold the new config beside it
    until the next checkpoint is written (:func:`save_checkpoint` renames it into place), so a failed first
    checkpoint leaves the old config.json with the old checkpoint it describes."""
    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINT).exists():
        write_json(run_dir / PENDING, config)
    else:
        write_json(run_dir / CONFIG, config)


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object of a run's file (CheckpointError otherwise); a folder's config.json is checked by
    :func:`check_record` as well."""
    d = read_json_object(path, CheckpointError)
    if Path(path).name == CONFIG:
        check_record(d, Path(path))
    return d


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
    except (OSError, SafetensorError) as e:  # safetensors reports a full disk or a size limit as SafetensorError
        kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint was written"
        reason = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"could not write {path} ({reason}); {kept}") from None
    pending = path.parent / PENDING
    if pending.exists():  # the config of a resumed run, now described by this checkpoint
        os.replace(pending, path.parent / CONFIG)
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


#: Bounds on what a folder's config.json may ask for, checked before anything is allocated.
MAX_SIDE = 8192  # pixels per image side, or dimensions of a point
MAX_ELEMENTS = 2**25  # values in one example (3 x 2048 x 2048 fits)
MAX_T = 100_000  # steps of a DDPM table


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_record(rc: dict[str, Any], where: Path) -> None:
    """CheckpointError naming the file and field unless the common fields of a folder's config.json have sane types
    and sizes: shape (1 to 3 bounded integers), data, family, train, network, schedule (bounded T), class_names."""
    def bad(field: str, msg: str) -> CheckpointError:
        return CheckpointError(f"{where}: \"{field}\" {msg}, got {json.dumps(rc.get(field))[:80]}")

    for field, kind in (("data", str), ("family", str), ("prediction", str), ("denoiser", str), ("train", dict),
                        ("network", dict), ("schedule", dict), ("class_names", list)):
        if rc.get(field) is not None and not isinstance(rc[field], kind):
            raise bad(field, f"must be {'a string' if kind is str else 'a list' if kind is list else 'a mapping'}")
    if "shape" in rc:
        shape = rc["shape"]
        if not (isinstance(shape, list) and 1 <= len(shape) <= 3 and all(_is_int(v) and 1 <= v <= MAX_SIDE for v in shape)):
            raise bad("shape", f"must be a list of 1 to 3 integers in [1, {MAX_SIDE}]")
        if math.prod(shape) > MAX_ELEMENTS:
            raise bad("shape", f"holds more than {MAX_ELEMENTS} values per example")
        known = data_shape(rc["data"]) if isinstance(rc.get("data"), str) and "autoencoder" not in rc else None
        if known is not None and (len(known) != len(shape) or any(k is not None and k != v for k, v in zip(known, shape))):
            raise bad("shape", f"does not match the data {rc['data']!r}, whose examples are "
                               f"{'x'.join('?' if k is None else str(k) for k in known)}")
    if isinstance(rc.get("schedule"), dict) and "T" in rc["schedule"]:
        T = rc["schedule"]["T"]
        if T is not None and not (_is_int(T) and 2 <= T <= MAX_T):
            raise CheckpointError(f"{where}: schedule \"T\" must be an integer in [2, {MAX_T}], got {json.dumps(T)[:40]}")
    if isinstance(rc.get("class_names"), list) and not all(isinstance(c, str) for c in rc["class_names"]):
        raise bad("class_names", "must be a list of strings")
    if isinstance(rc.get("network"), dict) and "config" in rc["network"] and not isinstance(rc["network"]["config"], dict):
        raise CheckpointError(f"{where}: \"network\".\"config\" must be a mapping")


def data_shape(spec: str) -> tuple[int | None, ...] | None:
    """The example shape of a built-in data spec, known without loading it (None entries: any; None: unknown)."""
    if spec == "digits":
        return (1, 8, 8)
    if spec == "mnist" or spec.startswith("mnist:"):
        return (1, 28, 28)
    if spec.startswith("toy:"):
        return (2,)
    if spec.startswith("color:"):
        inner = data_shape(spec[6:])
        return (3, *inner[1:]) if inner is not None and len(inner) == 3 else None
    if spec.startswith("size:"):
        n, _, rest = spec[5:].partition(":")
        inner = data_shape(rest)
        side = int(n) if n.isascii() and n.isdigit() and len(n) < 6 else None
        return (inner[0] if inner is not None and len(inner) == 3 else None, side, side)
    return None


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
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # a config.json edited by hand
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
