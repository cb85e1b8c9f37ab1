"""A run folder: config.json (data, network, schedule, recipe) + checkpoint.safetensors + log + pictures."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import schedules
from ..data import Dataset
from ..errors import UserError
from ..likelihood.objectives import LEARNED_VARIANCE_OBJECTIVES
from ..likelihood.variance import LearnedVarianceDenoiser
from ..models.denoiser import Denoiser
from ..models.mlp import mlp_toy
from ..models.networks import build_network, network_spec, time_scale_for
from ..models.unet import unet_for_image
from ..utils.config import ConfigError
from .checkpoint import load_folder
from .config import TrainConfig

RUN_FORMAT = "difflab-run-1"


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_denoiser(cfg: TrainConfig, data: Dataset) -> Denoiser:
    """The network sized for the data (preset + cfg.network overrides) wrapped with the schedule."""
    try:
        sched = schedules.from_config(cfg.schedule)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"TrainConfig.schedule {cfg.schedule!r}: {e}") from None
    labels = data.num_classes if cfg.conditional else 0
    if cfg.conditional and labels < 2:
        raise UserError(f"--conditional needs labelled data; {data.spec} has {labels} classes")
    text = {}
    if cfg.text_encoder != "none":  # caption cross-attention instead of a label embedding
        from ..text import encoder_dim

        labels, text = 0, {"context_dim": encoder_dim(cfg.text_encoder)}
        if data.kind != "image":
            raise UserError(f"text conditioning needs images; {data.spec} holds points")
    overrides = {"time_scale": time_scale_for(sched), "num_classes": labels, **text, **cfg.network}
    kind = denoiser_kind(cfg.objective)
    if data.kind == "image":
        c, h, w = data.shape
        out = {"out_channels": 2 * c} if kind == "learned_variance" else {}
        net = build_network("unet", {**unet_for_image(max(h, w), c).to_dict(), **out, **overrides})
    elif kind == "learned_variance":
        raise UserError(f"objective {cfg.objective!r} (learned variances) needs image data; {data.spec} holds points")
    else:
        net = build_network("mlp", {**mlp_toy(dim=data.shape[0]).to_dict(), **overrides})
    try:
        return DENOISERS[kind](net, sched, cfg.prediction)
    except ValueError as e:
        raise ConfigError(f"objective {cfg.objective!r}: {e}") from None


#: How a run's network output is read: the plain prediction, or prediction + variance (Nichol & Dhariwal 2021).
DENOISERS: dict[str, type[Denoiser]] = {"plain": Denoiser, "learned_variance": LearnedVarianceDenoiser}


def denoiser_kind(objective: str) -> str:
    """The denoiser class an objective trains."""
    return "learned_variance" if objective in LEARNED_VARIANCE_OBJECTIVES else "plain"


def run_config(cfg: TrainConfig, data: Dataset, model: Denoiser) -> dict[str, Any]:
    """The JSON written to RUN/config.json."""
    return {"format": RUN_FORMAT, "data": data.spec, "data_kind": data.kind, "shape": list(data.shape),
            "class_names": data.class_names, "train": cfg.to_dict(), "network": network_spec(model.net),
            "schedule": model.schedule.config(), "prediction": model.prediction,
            "denoiser": denoiser_kind(cfg.objective)}


@dataclass
class LoadedRun:
    """A trained run ready to sample from."""

    model: Denoiser  # EMA weights by default
    config: dict[str, Any]
    step: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.config["shape"])


def load_run(run_dir: str | Path, ema: bool = True, device: torch.device | str | None = None) -> LoadedRun:
    """Rebuild the denoiser of a run folder from its JSON and safetensors (no pickle)."""

    def build(rc: dict[str, Any]) -> Denoiser:
        net = build_network(rc["network"]["kind"], rc["network"]["config"])
        return DENOISERS[rc.get("denoiser", "plain")](net, schedules.from_config(rc["schedule"]), rc["prediction"])

    model, rc, meta = load_folder(run_dir, RUN_FORMAT, "run", build, ema=ema)
    return LoadedRun(model.to(device or default_device()), rc, int(meta.get("step", 0)))
