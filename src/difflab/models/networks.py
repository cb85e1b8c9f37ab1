"""Network registry: rebuild a network from (kind, config dict), as stored in a checkpoint's JSON."""
from __future__ import annotations

from typing import Any, Literal, Mapping, get_args

from torch import nn

from ..utils.config import ConfigError
from .mlp import MLP, MLPConfig
from .unet import UNet, UNetConfig

NetworkKind = Literal["unet", "mlp"]
NETWORK_KINDS: tuple[str, ...] = get_args(NetworkKind)
_CLASSES: dict[str, tuple[type[nn.Module], type]] = {"unet": (UNet, UNetConfig), "mlp": (MLP, MLPConfig)}


def build_network(kind: NetworkKind, config: Mapping[str, Any] | None = None) -> nn.Module:
    """A fresh network of the given kind from its config dict (missing keys take the config defaults)."""
    if kind not in _CLASSES:
        raise ConfigError(f"unknown network kind {kind!r}; choose one of {', '.join(NETWORK_KINDS)}")
    cls, cfg_cls = _CLASSES[kind]
    return cls(cfg_cls.from_dict(dict(config or {})))


def network_kind(module: nn.Module) -> NetworkKind:
    """The registry name of a network built by :func:`build_network` (``network_kind(build_network(k, c)) == k``)."""
    for kind, (cls, _) in _CLASSES.items():
        if isinstance(module, cls):
            return kind  # type: ignore[return-value]
    raise ValueError(f"{type(module).__name__} is not a registered network ({', '.join(NETWORK_KINDS)})")


def network_spec(module: nn.Module) -> dict[str, Any]:
    """{"kind": ..., "config": {...}}: the JSON-serialisable recipe that :func:`build_network` inverts."""
    return {"kind": network_kind(module), "config": module.config.to_dict()}


def time_scale_for(schedule: Any) -> float:
    """time_scale mapping a schedule's time range [0, t_max] onto [0, 1000], so every schedule feeds the embedding alike.

    A schedule with a ``time_span`` (the flow path, defined on [0, 1] and cut at t_max < 1 for a finite log-SNR) maps
    [0, time_span] instead: a flow network sees 1000 t = 1000 sigma, the timestep of diffusers' flow models."""
    return 1000.0 / float(getattr(schedule, "time_span", None) or schedule.t_max)


__all__ = ["NetworkKind", "NETWORK_KINDS", "build_network", "network_kind", "network_spec", "time_scale_for"]
