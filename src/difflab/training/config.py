"""Training recipes: the engine's fields shared by every family (FitConfig) and the diffusion recipe (TrainConfig).

Small frozen configs with a validated dict/JSON round-trip; the schedule and the network are typed sub-configs
whose JSON form stays flat (``{"kind": "linear", "T": 1000}``, ``{"channels": 32}``).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args

from ..losses import NoiseDistribution, Weighting
from ..models.denoiser import Prediction
from ..utils.config import Config, ConfigError, read_config_file, require
from .objectives import Objective

F = TypeVar("F", bound="FitConfig")

Precision = Literal["fp32", "bf16", "fp16"]
LRSchedule = Literal["constant", "cosine", "linear"]
ScheduleKind = Literal["linear", "cosine", "quadratic", "sigmoid", "vp", "subvp", "ve", "flow", "learned", "custom"]
NetworkKind = Literal["auto", "unet", "mlp"]
MAX_T = 100_000  # the longest DDPM table (training/checkpoint.py bounds a run's stored schedule the same way)
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(Config):
    """A noise schedule: its kind, T steps for a DDPM table (None: continuous time) and the kind's parameters."""

    kind: ScheduleKind = "cosine"
    T: int | None = 1000
    params: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        require(self.T is None or (isinstance(self.T, int) and not isinstance(self.T, bool) and 2 <= self.T <= MAX_T),
                f"schedule.T must be an integer in [2, {MAX_T}] or null (continuous time), got {self.T!r}")
        require(isinstance(self.params, dict), f"schedule parameters must be a mapping, got {self.params!r}")
        self.build()  # the parameters must make a schedule

    def build(self) -> Any:
        """The schedule object (difflab.schedules)."""
        from .. import schedules

        try:
            return schedules.from_config(self.to_dict())
        except (TypeError, ValueError, KeyError) as e:
            raise ConfigError(f"schedule {self.to_dict()!r}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **({} if self.T is None else {"T": self.T}), **self.params}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "") -> "ScheduleConfig":
        """From the flat JSON form; a continuous kind without T is continuous time."""
        if isinstance(d, ScheduleConfig):
            return d
        d = dict(d or {})
        name = where or "schedule"
        kind = d.pop("kind", None)
        if kind not in get_args(ScheduleKind):
            raise ConfigError(f"{name}.kind must be one of {', '.join(get_args(ScheduleKind))}, got {kind!r}")
        T = d.pop("T", None)
        return cls(kind=kind, T=T, params=d)


@dataclasses.dataclass(frozen=True)
class NetworkConfig(Config):
    """The network: ``kind`` (auto: a U-Net for images, an MLP for points) and overrides of its data-sized preset."""

    kind: NetworkKind = "auto"
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check(self) -> None:
        from ..models.mlp import MLPConfig
        from ..models.unet import UNetConfig

        require(isinstance(self.overrides, dict), f"network overrides must be a mapping, got {self.overrides!r}")
        classes = {"unet": [UNetConfig], "mlp": [MLPConfig], "auto": [UNetConfig, MLPConfig]}[self.kind]
        known = {f.name for c in classes for f in dataclasses.fields(c)}
        unknown = sorted(set(self.overrides) - known)
        require(not unknown, f"network: unknown key(s) {', '.join(unknown)} for a {self.kind} network; "
                             f"known: {', '.join(sorted(known))}")

    def to_dict(self) -> dict[str, Any]:
        return {**({} if self.kind == "auto" else {"kind": self.kind}), **self.overrides}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "") -> "NetworkConfig":
        if isinstance(d, NetworkConfig):
            return d
        d = dict(d or {})
        kind = d.pop("kind", "auto")
        if kind not in get_args(NetworkKind):
            raise ConfigError(f"{where or 'network'}.kind must be one of {', '.join(get_args(NetworkKind))}, got {kind!r}")
        return cls(kind=kind, overrides=d)


@dataclasses.dataclass(frozen=True)
class FitConfig(Config):
    """The engine's part of a recipe: batch and budget, AdamW, LR schedule, clipping, precision, checkpoints."""

    batch_size: int = 128  # the global batch: split across processes and accumulation steps
    steps: int = 100_000  # upper bound; a minutes budget usually stops earlier
    minutes: float = 0.0  # wall-clock budget of one invocation (0 = none)
    lr: float = 1e-3
    warmup_steps: int = 200
    lr_schedule: LRSchedule = "constant"  # after warm-up: constant, or cosine / linear decay to 0 at `steps`
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global gradient norm (0 = off)
    accumulate: int = 1  # micro-batches per step (gradient accumulation; same result as one K-times larger batch)
    precision: Precision = "fp32"  # bf16: autocast (CPU and CUDA); fp16: autocast with a grad scaler (CUDA)
    compile: bool = False  # torch.compile the networks
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 500
    logger: Literal["csv", "tensorboard"] = "csv"  # tensorboard: also RUN/tensorboard (training/monitor.py)

    def check(self) -> None:
        n = type(self).__name__
        self.require_ints(("batch_size", "steps", "log_every", "checkpoint_every", "accumulate"), 1)
        self.require_ints(("warmup_steps", "seed"), 0)
        require(self.seed <= MAX_SEED, f"{n}.seed must be at most 2**63 - 1, got {self.seed!r}")
        require(math.isfinite(self.lr) and self.lr > 0, f"{n}.lr must be > 0, got {self.lr!r}")
        require(self.minutes >= 0 and math.isfinite(self.minutes), f"{n}.minutes must be >= 0, got {self.minutes!r}")
        require(0 <= self.weight_decay < 1, f"{n}.weight_decay must lie in [0, 1), got {self.weight_decay!r}")
        require(self.grad_clip >= 0, f"{n}.grad_clip must be >= 0 (0 = off), got {self.grad_clip!r}")
        require(self.batch_size % self.accumulate == 0,
                f"{n}.batch_size {self.batch_size} must be divisible by accumulate {self.accumulate}")

    def lr_at(self, step: int) -> float:
        """Linear warm-up over warmup_steps, then constant or a cosine / linear decay reaching 0 at `steps`."""
        warm = min(1.0, (step + 1) / max(1, self.warmup_steps))
        if self.lr_schedule == "constant" or step < self.warmup_steps:
            return self.lr * warm
        frac = min(1.0, (step - self.warmup_steps) / max(1, self.steps - self.warmup_steps))
        decay = 0.5 * (1 + math.cos(math.pi * frac)) if self.lr_schedule == "cosine" else 1.0 - frac
        return self.lr * decay

    #: values that runs saved before a field existed trained with, where they differ from today's defaults
    saved_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def resumed(cls: type[F], stored: dict[str, Any], overrides: dict[str, Any], where: str = "",
                more_minutes: bool = False) -> F:
        """The recipe of a run continued from its config.json: its saved ``train`` fields (older runs completed with
        ``saved_defaults``, a built ``schedule`` taken as built), then ``overrides``; ``more_minutes`` keeps the
        step bound at least the default, so a --minutes budget adds time on top of what the run has done."""
        base = {**cls.saved_defaults, **dict(stored.get("train", {}))}
        if "schedule" in {f.name for f in dataclasses.fields(cls)} and isinstance(stored.get("schedule"), dict):
            base["schedule"] = stored["schedule"]  # the schedule as built, with every parameter it used
        if more_minutes:
            overrides = {**overrides, "steps": max(int(base.get("steps", 0)), cls.steps)}
        return cls.from_dict({**base, **overrides}, where=where)


@dataclasses.dataclass(frozen=True)
class NoisyModelConfig(FitConfig):
    """The recipe shared by the models trained on noised data for guidance (classifier, CLIP): the noise schedule
    and shorter defaults than a diffusion run (2000 steps, 100 warm-up steps, no clipping)."""

    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    steps: int = 2000
    warmup_steps: int = 100
    grad_clip: float = 0.0


@dataclasses.dataclass(frozen=True)
class TrainConfig(FitConfig):
    """Everything that defines a diffusion training run besides the data and the output folder."""

    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    network: NetworkConfig = dataclasses.field(default_factory=NetworkConfig)
    prediction: Prediction = "eps"
    objective: Objective = "simple"
    weighting: Weighting = "uniform"  # edm: Karras et al. 2022's lambda(sigma); soft_min_snr: k-diffusion's
    min_snr_gamma: float = 5.0
    noise: NoiseDistribution = "uniform"  # training t: uniform, lognormal (EDM) or logit_normal (SD3) in sigma
    noise_mean: float | None = None  # of log sigma (None: -1.2 for lognormal, 0 for logit_normal)
    noise_std: float | None = None  # of log sigma (None: 1.2 for lognormal, 1 for logit_normal)
    sigma_data: float = 0.5  # data std of EDM's preconditioning (prediction=edm) and of the edm / soft_min_snr weightings
    ema_decay: float = 0.999
    posthoc_ema: tuple[float, ...] = ()  # sigma_rel of power-function EMAs snapshotted for post-hoc EMA (Karras et al. 2024)
    posthoc_every: int = 100  # steps between post-hoc EMA snapshots (RUN/ema/)
    conditional: bool = False  # train on class labels (classifier-free: labels dropped with p_uncond)
    p_uncond: float = 0.1
    text_encoder: str = "none"  # small | minilm | clip:PATH; with conditional: caption cross-attention, not labels
    sample_every: int = 0  # preview grid every N steps (0 = only at the end)
    sampler: str = "ddim"  # for previews, the final grid and the default of `difflab sample` (the default recipe: heun 25)
    sample_steps: int = 50
    autoencoder: str = ""  # a difflab train-autoencoder folder: latent diffusion on its scaled latents ("" = pixels)
    task: Literal["generate", "superres", "inpaint", "colorize"] = "generate"  # superres: SR3; inpaint/colorize: Palette
    scale: int = 2  # task = superres: the integer down-sampling factor of the low-res condition
    noise_aug: bool = False  # task = superres: noise-conditioning augmentation of the condition (Ho et al. 2022)
    aug_blur: float = 0.5  # noise_aug: Gaussian blur std of the low-res condition at level 1 (low-res pixels)


    saved_defaults: ClassVar[dict[str, Any]] = {"aug_blur": 0.0}  # runs saved before the blur trained without it

    def check(self) -> None:
        super().check()
        n = "TrainConfig"
        self.require_ints(("sample_steps",), 1)
        self.require_ints(("sample_every",), 0)
        require(0 <= self.ema_decay < 1, f"{n}.ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        require(0 <= self.p_uncond < 1, f"{n}.p_uncond must lie in [0, 1), got {self.p_uncond!r}")
        if self.text_encoder != "none":
            from ..text import TextEncoderError, check_encoder_name

            try:
                check_encoder_name(self.text_encoder)
            except TextEncoderError as e:
                raise ConfigError(f"{n}.text_encoder: {e}") from None
        require(self.text_encoder == "none" or self.conditional,
                f"{n}.text_encoder={self.text_encoder!r} needs conditional=true (captions of the labelled data)")
        self.require_ints(("scale",), 2)
        require(not self.noise_aug or self.task == "superres", f"{n}.noise_aug needs task='superres'")
        require(self.aug_blur >= 0, f"{n}.aug_blur must be >= 0, got {self.aug_blur!r}")
        text_sr = self.task == "superres" and self.text_encoder != "none"
        require(self.task == "generate" or not self.conditional or text_sr,
                f"{n}.task={self.task!r} is conditioned on an image; it cannot also be conditional=true "
                f"(task='superres' may take a text_encoder: Imagen's text-conditional super-resolution)")
        require(not self.autoencoder or self.task == "generate",
                f"{n}.autoencoder: latent diffusion supports task='generate' only, not {self.task!r}")
        require(self.min_snr_gamma > 0, f"{n}.min_snr_gamma must be > 0, got {self.min_snr_gamma!r}")
        self._check_edm_flow(n)
        from ..samplers import SAMPLERS

        require(self.sampler in SAMPLERS, f"{n}.sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")

    def _check_edm_flow(self, n: str) -> None:
        """The noise distribution, sigma_data and post-hoc EMA fields; edm / noise only with the simple objective."""
        from ..training.ema import check_sigma_rels

        require(isinstance(self.sigma_data, (int, float)) and math.isfinite(self.sigma_data) and self.sigma_data > 0,
                f"{n}.sigma_data must be > 0, got {self.sigma_data!r}")
        for k in ("noise_mean", "noise_std"):
            v = getattr(self, k)
            require(v is None or (isinstance(v, (int, float)) and math.isfinite(v)), f"{n}.{k} must be a number or null, got {v!r}")
        require(self.noise_std is None or self.noise_std > 0, f"{n}.noise_std must be > 0, got {self.noise_std!r}")
        require(self.weighting != "uncertainty" or self.objective == "simple",
                f"{n}.weighting='uncertainty' needs objective='simple' (u(sigma) weights the denoising loss)")
        require(self.noise == "uniform" or self.objective == "simple",
                f"{n}.noise={self.noise!r} needs objective='simple' (the {self.objective!r} objective draws its own t)")
        require(self.prediction != "edm" or self.objective in ("simple", "vdm", "vdm_T"),
                f"{n}.prediction='edm' does not combine with the learned-variance objective {self.objective!r}")
        self.require_ints(("posthoc_every",), 1)
        try:
            check_sigma_rels(self.posthoc_ema)
        except ValueError as e:
            raise ConfigError(f"{n}.posthoc_ema: {e}") from None

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Read a JSON config file; ``overrides`` (not None) take precedence."""
        d = read_config_file(path)
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(d, where=str(path))


__all__ = ["FitConfig", "NoisyModelConfig", "TrainConfig", "ScheduleConfig", "NetworkConfig", "Precision", "LRSchedule"]
