"""A run folder: config.json (data, network, schedule, recipe) + checkpoint.safetensors + log + pictures."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .. import schedules
from ..data import Dataset
from ..errors import CheckpointError, UserError
from ..likelihood.variance import LearnedVarianceDenoiser
from ..models.denoiser import ConsistencyDenoiser, Denoiser
from ..models.mlp import mlp_toy
from ..models.networks import build_network, network_spec, time_scale_for
from ..models.unet import unet_for_image
from ..utils.config import ConfigError
from ..errors import CheckpointError
from .checkpoint import CONFIG, load_folder, read_json
from .conditioning import Conditioning, conditioning_for, conditioning_of_run
from .config import TrainConfig
from .distributed import default_device
from .objectives import denoiser_kind

#: One format for every trained run: {"format": RUN_FORMAT, "family": NAME, "train": its typed recipe, "data", "shape", ...}
RUN_FORMAT = "difflab-run-2"
RUN_FORMAT_1 = "difflab-run-1"  # diffusion runs written before the family registry; read as before
RUN_FORMATS = (RUN_FORMAT, RUN_FORMAT_1)


def build_denoiser(cfg: TrainConfig, data: Dataset, conditioning: Conditioning | None = None) -> Denoiser:
    """The network sized for the data (preset + cfg.network overrides) and the conditioning, wrapped with the schedule."""
    sched = cfg.schedule.build()
    conditioning = conditioning if conditioning is not None else conditioning_for(cfg, data)
    overrides = {"time_scale": time_scale_for(sched), **conditioning.network_options(), **cfg.network.overrides}
    kind = denoiser_kind(cfg.objective)
    net_kind = cfg.network.kind if cfg.network.kind != "auto" else ("unet" if data.kind == "image" else "mlp")
    if net_kind == "unet":
        if data.kind != "image":
            raise UserError(f"a U-Net needs images; {data.spec} holds points")
        c, h, w = data.shape
        out = {"out_channels": 2 * c} if kind == "learned_variance" else {}
        net = build_network("unet", {**unet_for_image(max(h, w), c).to_dict(), **out, **overrides})
    elif kind == "learned_variance":
        raise UserError(f"objective {cfg.objective!r} (learned variances) needs image data; {data.spec} holds points")
    else:
        if data.kind != "points":
            raise UserError(f"an MLP network needs points; {data.spec} holds images")
        net = build_network("mlp", {**mlp_toy(dim=data.shape[0]).to_dict(), **overrides})
    try:
        return DENOISERS[kind](net, sched, cfg.prediction)
    except ValueError as e:
        raise ConfigError(f"objective {cfg.objective!r}: {e}") from None


#: How a run's network output is read: the plain prediction, or prediction + variance (Nichol & Dhariwal 2021).
DENOISERS: dict[str, type[Denoiser]] = {"plain": Denoiser, "learned_variance": LearnedVarianceDenoiser,
                                        "consistency": ConsistencyDenoiser}  # distilled students (training/distill.py)


def run_config(cfg: TrainConfig, data: Dataset, model: Denoiser, processes: int = 1) -> dict[str, Any]:
    """The JSON written to RUN/config.json."""
    return {"format": RUN_FORMAT, "family": "diffusion", "data": data.spec, "data_kind": data.kind, "shape": list(data.shape),
            "class_names": data.class_names, "train": cfg.to_dict(), "network": network_spec(model.net),
            "schedule": model.schedule.config(), "prediction": model.prediction,
            "denoiser": denoiser_kind(cfg.objective), "processes": processes}


@dataclass
class LoadedRun:
    """A trained run ready to sample from."""

    model: Denoiser  # EMA weights by default
    config: dict[str, Any]
    step: int
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None  # a latent run: latents -> images in [-1, 1]

    @property
    def latent(self) -> bool:
        """True for latent diffusion: ``shape`` is the latent's; clamp nothing while sampling, then ``to_data``."""
        return self.decode is not None

    def to_data(self, x: torch.Tensor) -> torch.Tensor:
        """Samples of the model -> data space (decoded images for a latent run, unchanged otherwise)."""
        return self.decode(x) if self.decode is not None else x

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape of one example of the data (the decoded image for a latent run)."""
        return tuple(self.config["autoencoder"]["shape"]) if self.latent else self.shape

    @property
    def conditioning(self) -> Conditioning:
        """The run's conditioning (labels, captions or none), rebuilt from its config."""
        try:
            return conditioning_of_run(self.config)
        except UserError:
            raise
        except (KeyError, TypeError, ValueError) as e:  # a config.json edited by hand
            raise CheckpointError(f"the run's config.json: cannot rebuild its conditioning ({e})") from None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.config["shape"])


def load_run(run_dir: str | Path, ema: bool = True, device: torch.device | str | None = None) -> LoadedRun:
    """Rebuild the denoiser of a run folder from its JSON and safetensors (no pickle)."""

    def build(rc: dict[str, Any]) -> Denoiser:
        if rc.get("family", "diffusion") != "diffusion":
            raise ValueError(f"family {rc['family']!r}: a {RUN_FORMAT} folder holds a diffusion run")
        net = build_network(rc["network"]["kind"], rc["network"]["config"])
        channels = getattr(net.config, "in_channels", getattr(net.config, "dim", None))
        if channels is not None and channels != rc["shape"][0]:
            raise ValueError(f"shape {rc['shape']} does not match the network's {channels} input channels")
        return DENOISERS[rc.get("denoiser", "plain")](net, schedules.from_config(rc["schedule"]), rc["prediction"])

    fam = read_json(Path(run_dir) / CONFIG).get("family", "diffusion") if Path(run_dir).is_dir() else "diffusion"
    if fam != "diffusion":
        raise CheckpointError(f"{Path(run_dir) / CONFIG} is a {fam} run, not a diffusion run (open it with difflab.load)")
    model, rc, meta = load_folder(run_dir, RUN_FORMATS, "run", build, ema=ema)
    decode = None
    if "autoencoder" in rc:  # latent diffusion: decode through the recorded (and checked) autoencoder
        from .latent import latent_decoder

        decode = latent_decoder(rc["autoencoder"], run_dir, device or default_device())
    return LoadedRun(model.to(device or default_device()), rc, int(meta.get("step", 0)), decode)
