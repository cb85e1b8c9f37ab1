"""difflab: denoising diffusion models, from DDPM to latent diffusion, as one library with a command line.

The top-level names are imported on first use, so ``import difflab`` (and the ``difflab`` command starting up)
changes nothing and loads torch only when a name that needs it is touched.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_NAMES = {
    "schedules": (".schedules", None), "likelihood": (".likelihood", None), "samplers": (".samplers", None),
    "guidance": (".guidance", None),
    "Denoiser": (".models.denoiser", "Denoiser"), "from_eps": (".models.denoiser", "from_eps"),
    "from_x0": (".models.denoiser", "from_x0"), "from_v": (".models.denoiser", "from_v"),
    "from_score": (".models.denoiser", "from_score"), "log_likelihood": (".likelihood", "log_likelihood"),
    "sample": (".samplers", "sample"), "ClassifierFreeGuidance": (".guidance", "ClassifierFreeGuidance"),
    "ClassifierGuidance": (".guidance", "ClassifierGuidance"), "ClipGuidance": (".guidance", "ClipGuidance"),
    "load": (".runs", "load"), "Run": (".runs", "Run"), "runs": (".runs", None),
    "DenoiserLike": (".models.protocol", "DenoiserLike"),
}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'difflab' has no attribute {name!r}")
    module, attr = _NAMES[name]
    mod = importlib.import_module(module, __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_NAMES])


__all__ = [*_NAMES, "__version__"]
