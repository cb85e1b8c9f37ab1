"""The diffusion family: one denoiser trained with an objective of the static table (Ho et al. 2020, Alg. 1, and
its relatives), its EMA, previews sampled from the schedule's prior, and ``train``, the call behind ``difflab train``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..errors import UserError
from ..losses import UncertaintyWeight
from ..models.denoiser import Clamped, Denoiser
from ..utils.images import save_image_grid, save_scatter
from .checkpoint import CHECKPOINT, CONFIG, read_json, stage_config
from .conditioning import Conditioning, conditioning_for
from .config import TrainConfig
from .distributed import World, init
from .engine import Batch, Family, FitResult, OptimizerSpec, Phase, fit
from .objectives import OBJECTIVES
from .run import build_denoiser, run_config


class DiffusionFamily(Family):
    """A denoiser D(x_t, t, cond) -> x0 with an EMA; one phase minimising the configured objective."""

    name = "diffusion"
    recipe = TrainConfig
    sampling_modules = ("model",)
    likelihood = ("elbo", "ode")

    @classmethod
    def samplers(cls, recipe: TrainConfig) -> tuple[str, ...]:
        from ..samplers import names

        return tuple(names())

    def __init__(self, cfg: TrainConfig, data: Dataset, decode: Callable[[Tensor], Tensor] | None = None):
        self.cfg, self.data, self.decode = cfg, data, decode  # decode: latents -> images (latent diffusion)
        self.conditioning: Conditioning = conditioning_for(cfg, data)
        self.model: Denoiser = build_denoiser(cfg, data, self.conditioning)
        if self.model.prediction == "edm":  # EDM's preconditioning for data of std sigma_data (saved as a buffer)
            self.model.sigma_data.fill_(cfg.sigma_data)
        self.modules: dict[str, nn.Module] = {"model": self.model}
        if cfg.weighting == "uncertainty":  # EDM2's u(sigma): trained with the network, saved in the checkpoint
            self.modules["uncertainty"] = UncertaintyWeight()
        self.optimizers = {"model": OptimizerSpec(tuple(self.modules))}
        self.ema = ("model",)
        self.phases = [Phase("model", self.loss)]

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        x0 = self.data.batch(batch.idx).to(batch.device)
        cond = self.conditioning.draw(batch.idx, batch.rng, batch.device)
        extra = {"uncertainty": self.modules["uncertainty"]} if "uncertainty" in self.modules else {}
        return {"loss": OBJECTIVES[self.cfg.objective](self.model, x0, cond, batch.rng, self.cfg, **extra)}

    def compile(self) -> None:
        net = self.model.net
        if isinstance(net, nn.Module):
            net.compile()

    def preview(self, ema: dict[str, nn.Module], path: Path) -> None:
        preview(ema["model"], self.data, self.cfg, path, self.conditioning, decode=self.decode)

    def finish(self, run_dir: Path, ema: dict[str, nn.Module]) -> None:
        self.preview(ema, run_dir / "samples.png")


def preview(model: Denoiser, data: Dataset, cfg: TrainConfig, path: Path, conditioning: Conditioning,
            num: int = 64, decode: Callable[[Tensor], Tensor] | None = None) -> None:
    """A grid (images) or scatter plot (points) sampled from the schedule's prior with the configured sampler;
    with ``decode`` (a latent run) the latents are sampled unclamped and decoded to the grid's images."""
    from ..samplers import sample

    g = torch.Generator().manual_seed(cfg.seed)
    n = num if data.kind == "image" else 2000
    device = next(model.parameters()).device
    cond = conditioning.preview(n, device)
    x_T = model.schedule.sample_prior((n, *data.shape), generator=g, device=device)
    if data.kind == "image" and decode is None:
        model = Clamped(model)  # images live in [-1, 1]; latents are not clamped
    was_training = model.training
    model.eval()
    with torch.no_grad():
        x = sample(model, x_T, sampler=cfg.sampler, steps=cfg.sample_steps, cond=cond, generator=g)
    model.train(was_training)
    if decode is not None:
        x = decode(x)
    if data.kind == "image":
        save_image_grid(x, path, nrow=conditioning.num_classes if conditioning.num_classes and n % 10 == 0 else None)
    else:
        save_scatter(x, path, reference=data.batch(torch.arange(min(2000, len(data)))),
                     title=f"{data.spec}, {cfg.sampler} {cfg.sample_steps} steps")


def prepare_run(run_dir: Path, data: Dataset, resume: bool, cfg: TrainConfig | None = None) -> None:
    """Refuse to overwrite a run, or to resume one trained on other data or under another noise schedule."""
    if resume:
        if not (run_dir / CHECKPOINT).is_file():
            raise UserError(f"--resume: {run_dir} holds no checkpoint to resume from")
        stored = read_json(run_dir / CONFIG)
        if stored.get("data") != data.spec:
            raise UserError(f"--resume: {run_dir} was trained on {stored.get('data')!r}, not {data.spec!r}")
        if cfg is not None and "schedule" in stored and stored["schedule"] != cfg.schedule.build().config():
            raise UserError(f"--resume: {run_dir} was trained with schedule {stored['schedule']!r}, "
                            f"not {cfg.schedule.build().config()!r}")
    elif (run_dir / CHECKPOINT).exists():
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")


def train(cfg: TrainConfig, data: Dataset, run_dir: str | Path, *, resume: bool = False,
          device: torch.device | str | None = None, progress: bool = True, world: World | None = None) -> FitResult:
    """Train a denoiser on data into run_dir (config.json, checkpoint.safetensors, log.csv, samples.png, loss.png).

    Under torchrun every process calls this with the same arguments; rank 0 writes the files.
    """
    run_dir = Path(run_dir)
    world = world or init(device)
    prepare_run(run_dir, data, resume, cfg)
    ae = None
    if cfg.autoencoder:  # latent diffusion: the data become the autoencoder's scaled latents, encoded once
        from .autoencoder import load_autoencoder
        from .latent import autoencoder_record, encode_dataset

        ae = load_autoencoder(cfg.autoencoder, device=world.device)
        data = encode_dataset(ae, data)
    if resume:
        from .latent import check_resume

        check_resume(read_json(run_dir / CONFIG), ae, run_dir)
    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    family = DiffusionFamily(cfg, data, decode=ae.decode if ae is not None else None)
    if world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        rc = {**run_config(cfg, data, family.model, world.size), "conditioning": family.conditioning.config()}
        if ae is not None:
            rc["autoencoder"] = autoencoder_record(ae)
            from .latent import SIGMA_MAX_WARN, sigma_max

            top = sigma_max(family.model.schedule)
            if top > SIGMA_MAX_WARN and family.model.prediction == "eps":
                import warnings

                warnings.warn(f"latent run with sigma_max = {top:.3g} and eps prediction: unclamped x0 estimates "
                              "amplify the eps error by sigma_max at the top of the grid; LDM's table (training/latent.py "
                              "LATENT_SCHEDULE, sigma_max 14.6: eps latent runs without a given schedule) or the "
                              "default flow recipe avoids this", stacklevel=2)
        stage_config(run_dir, rc)  # config.json changes only once a checkpoint matches it
    world.barrier()
    return fit(family, len(data), cfg, run_dir, world=world, resume=resume, progress=progress,
               sample_every=cfg.sample_every)


__all__ = ["DiffusionFamily", "train", "preview", "prepare_run"]

