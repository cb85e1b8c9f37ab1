"""Noise schedules: continuous-time objects exposing alpha(t), sigma(t), log_snr(t); DDPM tables are a view.

``get(name, T=...)`` gives the discrete DDPM schedule with T steps (time = step index 0..T-1);
``get(name)`` without T gives the continuous-time schedule on [0, 1].
"""
from __future__ import annotations

from typing import Any

from . import discrete as _d
from .base import Schedule, append_dims, as_tensor
from .cld import CLD
from .continuous import VE, VP, Cosine, Flow, GeometricVP, SubVP
from .discrete import DiscreteSchedule
from .learned import LearnedSchedule
from .process import ForwardProcess, ScalarProcess, as_process, is_scalar, require_scalar

_DISCRETE = {"linear": _d.linear, "cosine": _d.cosine, "quadratic": _d.quadratic, "sigmoid": _d.sigmoid}
_CONTINUOUS = {"vp": VP, "linear": VP, "subvp": SubVP, "sub-vp": SubVP, "ve": VE, "cosine": Cosine, "geometric_vp": GeometricVP,
               "learned": LearnedSchedule, "flow": Flow}


def names(discrete: bool | None = None) -> list[str]:
    """Names accepted by :func:`get` (discrete ones need T)."""
    if discrete is None:
        return sorted(set(_DISCRETE) | set(_CONTINUOUS))
    return sorted(_DISCRETE if discrete else _CONTINUOUS)


def get(name: str, T: int | None = None, **kwargs: Any) -> Schedule:
    """Build a schedule by name: ``get("linear", T=1000)`` (DDPM, t = 0..T-1) or ``get("vp")`` (continuous, t in [0, 1]).

    A continuous schedule given T is discretised to its T-step DDPM view.
    """
    key = name.lower()
    if T is not None:
        if key in _DISCRETE:
            return _DISCRETE[key](int(T), **kwargs)
        if key in _CONTINUOUS:
            return _CONTINUOUS[key](**kwargs).discretize(int(T))
    elif key in _CONTINUOUS:
        return _CONTINUOUS[key](**kwargs)
    elif key in _DISCRETE:
        raise ValueError(f"schedule {name!r} is discrete: give the number of steps T")
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(names())}")


def from_config(cfg: dict[str, Any]) -> Schedule:
    """Inverse of ``Schedule.config()``."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    if kind == "custom":
        return DiscreteSchedule(cfg["betas"])
    if kind is None:
        raise ValueError("schedule config needs a 'kind'")
    if kind in _CONTINUOUS and "T" not in cfg:
        return _CONTINUOUS[kind](**cfg)
    return get(kind, **cfg)


__all__ = ["Schedule", "DiscreteSchedule", "VP", "SubVP", "VE", "Cosine", "Flow", "LearnedSchedule", "get", "from_config", "names",
           "append_dims", "as_tensor", "CLD", "ForwardProcess", "ScalarProcess", "as_process", "is_scalar",
           "require_scalar"]
