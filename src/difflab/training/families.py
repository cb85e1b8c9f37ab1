"""The family registry: every model family by name (diffusion, gan, vae, ddgan, lsgm, cld), training one into a
run folder and loading the sampler of a run of the engine-only families.

A run folder holds config.json ({"format": RUN_FORMAT, "family": name, "data", "shape", "num_classes",
"train": recipe}) and checkpoint.safetensors with every named module and its EMA.  Folders written before the
registry ("difflab-family-run-1") keep loading.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..errors import CheckpointError, UserError
from .checkpoint import CHECKPOINT, CONFIG, load_checkpoint, load_weights, read_folder_config, read_json, stage_config
from .cld import CLDFamily
from .config import FitConfig
from .ddgan import DDGANFamily
from .diffusion import DiffusionFamily, train
from .distributed import World, default_device, init
from .engine import Family, FitResult, fit
from .gan import GANFamily
from .lsgm import LSGMFamily
from .run import RUN_FORMAT
from .vae import VAEFamily

FAMILY_RUN_FORMAT = RUN_FORMAT
FAMILY_RUN_FORMAT_1 = "difflab-family-run-1"  # gan / vae / ddgan / lsgm / cld runs written before the registry
#: Every model family by name: its module's Family class (recipe, networks, phases, sampling side).
FAMILIES: dict[str, type[Family]] = {"diffusion": DiffusionFamily, "gan": GANFamily, "vae": VAEFamily,
                                     "ddgan": DDGANFamily, "lsgm": LSGMFamily, "cld": CLDFamily}
DEFAULT_FAMILY = "diffusion"


def family_class(name: str) -> type[Family]:
    """The registered family called ``name``; a UserError listing the registry otherwise."""
    if name not in FAMILIES:
        raise UserError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def engine_families() -> dict[str, type[Family]]:
    """The families whose runs :func:`load_generator` opens (all but the denoiser family, opened by load_run)."""
    return {k: v for k, v in FAMILIES.items() if not issubclass(v, DiffusionFamily)}


def family_config(cls: type, cfg: FitConfig, data: Dataset, family: Any) -> dict[str, Any]:
    """The JSON written to RUN/config.json of a family run."""
    return {"format": FAMILY_RUN_FORMAT, "family": cls.name, "data": data.spec, "data_kind": data.kind,
            "shape": list(data.shape), "class_names": data.class_names,
            "num_classes": int(getattr(family, "num_classes", 0)), "train": cfg.to_dict()}


def train_family(name: str, cfg: FitConfig, data: Dataset, run_dir: str | Path | None, *, resume: bool = False,
                 progress: bool = True, world: World | None = None) -> FitResult:
    """Train family ``name`` with recipe ``cfg`` on ``data`` into ``run_dir`` (None: in memory) through the engine."""
    cls = family_class(name)
    world = world or init(None)
    if issubclass(cls, DiffusionFamily):  # its own run config (schedule, network, latent autoencoder record)
        return train(cfg, data, run_dir, resume=resume, progress=progress, world=world)
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None:
        if resume:
            if not (run_dir / CHECKPOINT).is_file():
                raise UserError(f"--resume: {run_dir} holds no checkpoint to resume from")
            stored = read_json(run_dir / CONFIG)
            if stored.get("family") != name or stored.get("data") != data.spec:
                raise UserError(f"--resume: {run_dir} is a {stored.get('family', 'diffusion')} run on "
                                f"{stored.get('data')!r}, not {name} on {data.spec!r}")
        elif (run_dir / CHECKPOINT).exists():
            raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    torch.manual_seed(cfg.seed)  # the same initial weights on every process
    family = cls(cfg, data)
    if run_dir is not None and world.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        stage_config(run_dir, family_config(cls, cfg, data, family))  # in place with the next checkpoint
    world.barrier()
    return fit(family, len(data), cfg, run_dir, world=world, resume=resume, progress=progress)


def is_family_run(run_dir: str | Path) -> bool:
    """True if run_dir's config.json is a run of an engine-only family (gan, vae, ddgan, lsgm, cld, or unknown)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return False
    rc = read_json(path)
    return rc.get("format") == FAMILY_RUN_FORMAT_1 or (
        rc.get("format") == RUN_FORMAT and not issubclass(FAMILIES.get(rc.get("family"), Family), DiffusionFamily))


@dataclass
class LoadedGenerator:
    """A trained family run ready to sample: ``sample(n, seed)`` draws n samples, ``nfe`` network calls each."""

    family: str
    config: dict[str, Any]
    recipe: FitConfig
    modules: dict[str, nn.Module]
    step: int
    measured_nfe: int | None = None  # network calls of the last sample() when the family's sampler is adaptive

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.config["shape"])

    @property
    def num_classes(self) -> int:
        return int(self.config.get("num_classes", 0))

    @property
    def nfe(self) -> int:
        return self.measured_nfe if self.measured_nfe is not None else FAMILIES[self.family].nfe(self.recipe)

    @property
    def num_params(self) -> int:
        """Parameters of the networks used for sampling (the generator, or the VAE's encoder and decoder)."""
        return sum(p.numel() for name in FAMILIES[self.family].sampling_modules for p in self.modules[name].parameters())

    def sample(self, n: int, seed: int = 0, labels: Tensor | None = None, batch_size: int = 500) -> Tensor:
        """n samples on the CPU; a conditional run draws classes in turn unless ``labels`` [n] are given."""
        if self.num_classes and labels is None:
            labels = torch.arange(n) % self.num_classes
        g = torch.Generator().manual_seed(seed)
        cls = FAMILIES[self.family]
        chunks = [cls.draw(self.modules, self.recipe, min(batch_size, n - i), g,
                           None if labels is None else labels[i:i + batch_size]) for i in range(0, n, batch_size)]
        if isinstance(chunks[0], tuple):  # (samples, network calls): an adaptive sampler (lsgm's dopri5)
            self.measured_nfe = max(c[1] for c in chunks)
            chunks = [c[0] for c in chunks]
        return torch.cat(chunks)

    def timed_sample(self, n: int, seed: int = 0) -> tuple[Tensor, float]:
        """(n samples, wall seconds)."""
        t0 = time.perf_counter()
        x = self.sample(n, seed)
        return x, time.perf_counter() - t0


def load_generator(run_dir: str | Path, ema: bool = True, device: torch.device | str | None = None) -> LoadedGenerator:
    """Rebuild a gan / vae / ddgan run folder (EMA weights by default) from its JSON and safetensors."""
    run_dir = Path(run_dir)
    rc = read_folder_config(run_dir, (FAMILY_RUN_FORMAT, FAMILY_RUN_FORMAT_1), "gan / vae / ddgan run",
                            " (a diffusion run? use load_run)")
    if rc.get("family") not in engine_families():  # e.g. a family added in a later version: one line naming the folder
        raise CheckpointError(f"{run_dir / CONFIG}: unknown family {rc.get('family')!r}; this version knows "
                              f"{', '.join(FAMILIES)}")
    cls = FAMILIES[rc["family"]]
    try:
        recipe = cls.recipe.from_dict(rc["train"], where=str(run_dir / CONFIG))
        modules = cls.build(recipe, tuple(rc["shape"]), int(rc.get("num_classes", 0)))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{run_dir / CONFIG}: cannot rebuild the {cls.name} networks ({e})") from None
    ck = load_checkpoint(run_dir)
    dev = torch.device(device) if device is not None else default_device()
    for name, m in modules.items():
        load_weights(m, ck, name, ema, run_dir)
        m.to(dev).eval().requires_grad_(False)
    return LoadedGenerator(cls.name, rc, recipe, modules, ck.step)


__all__ = ["FAMILIES", "FAMILY_RUN_FORMAT", "FAMILY_RUN_FORMAT_1", "DEFAULT_FAMILY", "train_family", "load_generator",
           "LoadedGenerator", "is_family_run", "family_class", "engine_families"]
