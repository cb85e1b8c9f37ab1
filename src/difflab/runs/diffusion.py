"""A run of the denoiser family (diffusion, latent diffusion, distilled students): any registered sampler."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, UserError
from ..models.protocol import DenoiserLike
from ..tasks.registry import tasks_for
from ..training.families import DEFAULT_FAMILY, FAMILIES
from ..training.run import LoadedRun, load_run
from .base import Callback, Cond, ConditioningKind, Run

#: The run's conditioning (training/conditioning.py kinds) as the protocol names it.
CONDITIONING_KINDS: dict[str, ConditioningKind] = {"none": "none", "labels": "labels", "captions": "text",
                                                    "superres": "image", "colorize": "image", "inpaint": "image"}
#: Conditioning kinds whose runs generate from noise (the others need an input image: tasks/registry.py).
GENERATES = ("none", "labels", "captions")
DEFAULT_SAMPLER, DEFAULT_STEPS = "ddim", 50


class DiffusionRun(Run):
    """A loaded denoiser run: its samplers are the registry's; images are clamped while sampling, latents never."""

    def __init__(self, path: Path, loaded: LoadedRun):
        self.path, self.loaded = path, loaded
        self.family = loaded.config.get("family", DEFAULT_FAMILY)
        self.cls = FAMILIES[self.family]
        self.config, self.step = loaded.config, loaded.step
        self.domain = "latents" if loaded.latent else ("images" if len(loaded.shape) == 3 else "points")
        kind = loaded.conditioning.kind
        self.conditioning_kind = CONDITIONING_KINDS.get(kind, "image")
        self.tasks = (("generate",) if kind in GENERATES else ()) + (tasks_for(kind) if self.domain == "images" else ())
        net_config = getattr(getattr(loaded.model, "net", None), "config", None)
        self.num_classes = int(getattr(net_config, "num_classes", 0) or 0)
        self.samplers = tuple(self.cls.samplers(None))
        self.default_sampler, self.default_steps = student_defaults(loaded.config.get("distillation"),
                                                                    loaded.config.get("train"), path / "config.json")
        if self.default_sampler not in self.samplers:
            raise CheckpointError(f"{path / 'config.json'}: train.sampler {self.default_sampler!r} is not a sampler of "
                                  f"this run; choose one of {', '.join(self.samplers)}")
        self.likelihood = ("elbo",) if loaded.latent else tuple(self.cls.likelihood)  # latent: through the encoder
        self.marker = self.cls.marker

    @property
    def model(self) -> DenoiserLike:
        return self.loaded.model

    @property
    def conditioning(self) -> Any:
        return self.loaded.conditioning

    @property
    def data_shape(self) -> tuple[int, ...]:
        return self.loaded.data_shape

    @property
    def nfe(self) -> int:
        return int(self.last_nfe if self.last_nfe is not None else self.default_steps)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.loaded.model.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.loaded.model.parameters()).device

    def denoiser(self, model: DenoiserLike | None = None, clip: bool = True, threshold: float | None = None) -> DenoiserLike:
        """The denoiser to sample (``model``: a guided wrapper of it) as its data domain uses it (images clamped or
        thresholded, latents and points never); an imported diffusers run keeps its pipeline's clipping."""
        from ..data.domain import domain_of

        model = model if model is not None else self.loaded.model
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise UserError(f"--threshold must lie in (0, 1], got {threshold}")
        domain = domain_of(self.loaded)
        imported = self.config.get("imported")
        if clip and threshold is None and domain.clamps and isinstance(imported, dict):  # docs/interop.md
            from ..interop.diffusers import clipped_as_imported

            return clipped_as_imported(model, imported)
        try:
            return domain.denoiser(model, no_clip=not clip, threshold=threshold)
        except UserError as e:
            raise UserError(f"{e} ({self.path} samples {self.domain})") from None

    def grid(self, sampler: str, steps: int, clip: bool = True, threshold: float | None = None) -> Tensor | None:
        """The run's stored grid (``difflab tune-steps`` or a distilled student's) for this sampler and budget, if any."""
        from ..data.domain import domain_of
        from ..samplers.tuned import run_grid

        return run_grid(self.path, sampler, steps, domain_of(self.loaded).denoised_mode(not clip, threshold))

    def sampling_grid(self, sampler: str, steps: int, clip: bool = True, threshold: float | None = None,
                      grid: str | Tensor | None = None, tuned: bool = True) -> str | Tensor | None:
        """The grid a draw uses: ``grid`` (a name or levels) if given, else a grid stored for this sampler and budget
        (``tuned``), else None (the sampler's own)."""
        if grid is None and tuned:
            grid = self.grid(sampler, steps, clip, threshold)
        return grid

    def check_grid(self, grid: str | None) -> None:
        """A named grid (``--grid``, one of :data:`difflab.samplers.grids.GRIDS`) for the scalar samplers; CLD's
        samplers keep their own."""
        from ..samplers import process_name

        if grid is None:
            return
        if process_name(self.loaded.model) != "scalar":
            raise UserError(f"--grid {grid}: {self.path} is a {process_name(self.loaded.model)} run, whose samplers "
                            "use their own time grid")

    def check_nll(self, method: str | None = None) -> None:
        if self.domain == "latents" and method not in (None, *self.likelihood):
            raise UserError(f"--nll-method {method}: a latent run {self.path} has only the bound through its encoder "
                            "(--nll-method elbo; docs/latent.md)")
        super().check_nll(method)

    def condition(self, cond: Cond, n: int, start: int) -> Any:
        """The condition of samples start..start+n: the classes in turn (None), a label, labels [N] or a function."""
        c, dev = self.loaded.conditioning, self.device
        if cond is None:
            return c.preview(n, dev)
        if callable(cond):
            return cond(n, dev)
        if isinstance(cond, int):
            self.check_label(cond)
            return c.labels(torch.full((n,), cond, dtype=torch.long), dev)
        if isinstance(cond, Tensor):
            return c.labels(cond[start:start + n].long(), dev)
        raise UserError(f"cond: expected None, a label, labels [n] or a function, got {type(cond).__name__}")

    def _draw(self, n: int, seed: int, cond: Cond, sampler: str | None, steps: int | None,
              callback: Callback | None, batch_size: int, *, grid: Any = None, model: DenoiserLike | None = None,
              clip: bool = True, threshold: float | None = None, progress: bool = False, tuned: bool = True,
              **options: Any) -> Tensor:
        """Batches from the schedule's prior x_T through the sampler (a seed per sample; the run's stored grid unless
        ``grid`` is given or ``tuned`` is False), decoded to images for a latent run."""
        from ..samplers import sample_batches

        model = self.denoiser(model, clip, threshold)
        sampler, steps = sampler or self.default_sampler, steps or self.default_steps
        grid = self.sampling_grid(sampler, steps, clip, threshold, grid, tuned)
        self.last_tuned = grid is not None and not isinstance(grid, str)
        starts = iter(range(0, n, batch_size))
        x, self.last_nfe = sample_batches(model, self.shape, n, sampler, steps, seed=seed, batch_size=batch_size,
                                          grid=grid, cond=lambda b, dev: self.condition(cond, b, next(starts)),
                                          progress=progress, callback=callback, **options)
        return self.loaded.to_data(x)

    def _nll(self, x: Tensor, seed: int, method: str, num_t: int | None = None, **options: Any) -> dict[str, Any]:
        """The variational bound (Ho et al. 2020, eq. 5; VDM) or the probability-flow ODE likelihood of test data x."""
        from ..likelihood import evaluate_nll
        from ..likelihood.variance import LearnedVarianceDenoiser
        from ..schedules import DiscreteSchedule

        model = self.loaded.model
        discrete = isinstance(model.schedule, DiscreteSchedule)
        if self.loaded.latent:  # the bound on the images through the autoencoder (docs/latent.md)
            from ..training.latent import latent_nll, open_autoencoder

            ae = open_autoencoder(self.config["autoencoder"], self.path, self.device)
            return latent_nll(model, ae, x, seed=seed, num_t=num_t if discrete else None)
        if method == "elbo" and discrete:
            options["num_t"] = num_t
            if isinstance(model, LearnedVarianceDenoiser):
                options["variance"] = "learned"
        return evaluate_nll(model, x.to(self.device), method=method, seed=seed, **options)


def student_defaults(distillation: dict[str, Any] | None, config: dict[str, Any] | None = None,
                     where: Path | str = "config.json") -> tuple[str, int]:
    """The sampler and steps a run is drawn with by default: a distilled student's own (progressive: DDIM in its
    step count, Salimans & Ho 2022; consistency: one call, Song et al. 2023), else the run's training config's
    ``sampler`` / ``sample_steps`` (those of its previews: Heun in 25 calls for the default image recipe), DDIM in
    50 steps for a config without them."""
    if not distillation:
        config = config if isinstance(config, dict) else {}
        sampler, steps = config.get("sampler", DEFAULT_SAMPLER), config.get("sample_steps", DEFAULT_STEPS)
        if not isinstance(sampler, str) or isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise CheckpointError(f"{where}: train.sampler must be a sampler name and train.sample_steps a positive "
                                  f"integer, got {sampler!r} and {steps!r}")
        return sampler, steps
    if distillation.get("method") == "consistency":
        return "consistency", 1
    return DEFAULT_SAMPLER, int(distillation.get("steps", DEFAULT_STEPS))


def open_diffusion_run(path: Path, ema: bool = True, device: torch.device | str | None = None) -> DiffusionRun:
    return DiffusionRun(path, load_run(path, ema=ema, device=device))


__all__ = ["DiffusionRun", "open_diffusion_run", "CONDITIONING_KINDS", "GENERATES"]
