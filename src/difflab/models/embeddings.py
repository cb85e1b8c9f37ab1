"""Pieces shared by the networks: time embeddings, label embeddings and the conditioning-mapping check."""
from __future__ import annotations

import math
from typing import Any, Literal, Mapping, get_args

import torch
from torch import Tensor, nn

TimeEmbeddingKind = Literal["sinusoidal", "fourier"]
TIME_EMBEDDINGS: tuple[str, ...] = get_args(TimeEmbeddingKind)

#: Reference range of the scaled time ``time_scale * t``: [0, TIME_RANGE] (the DDPM step index range).
TIME_RANGE = 1000.0


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Transformer position encoding of a [B] time, [B, dim] = [cos(t w_k), sin(t w_k)] (Vaswani et al. 2017; Ho et al. 2020)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return emb if dim % 2 == 0 else torch.nn.functional.pad(emb, (0, 1))


class SinusoidalEmbedding(nn.Module):
    """Fixed sinusoidal features of the scaled time, [B] -> [B, dim]."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        return sinusoidal_embedding(t, self.dim)


class FourierEmbedding(nn.Module):
    """Random Fourier features [sin(2 pi w t'), cos(2 pi w t')], w ~ N(0, scale^2), t' = t / TIME_RANGE (Tancik et al. 2020; Song et al. 2021).

    The frequencies are a fixed (non-trained) buffer saved with the weights, so a checkpoint reproduces them.
    """

    def __init__(self, dim: int, scale: float = 16.0):
        super().__init__()
        self.dim = dim
        self.register_buffer("freqs", torch.randn(dim // 2) * scale)

    def forward(self, t: Tensor) -> Tensor:
        args = (2.0 * math.pi / TIME_RANGE) * t.float()[:, None] * self.freqs[None]
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
        return emb if self.dim % 2 == 0 else torch.nn.functional.pad(emb, (0, 1))


class TimeEmbedding(nn.Module):
    """t [B] (schedule time) -> [B, out_dim]: features of ``time_scale * t`` followed by a 2-layer SiLU MLP (Ho et al. 2020)."""

    def __init__(self, kind: TimeEmbeddingKind, base_dim: int, out_dim: int, time_scale: float = 1.0,
                 fourier_scale: float = 16.0):
        super().__init__()
        if kind == "sinusoidal":
            self.features: nn.Module = SinusoidalEmbedding(base_dim)
        elif kind == "fourier":
            self.features = FourierEmbedding(base_dim, fourier_scale)
        else:
            raise ValueError(f"unknown time embedding {kind!r}; choose one of {', '.join(TIME_EMBEDDINGS)}")
        self.time_scale = float(time_scale)
        self.mlp = nn.Sequential(nn.Linear(base_dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        feats = self.features(t.float() * self.time_scale)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class LabelEmbedding(nn.Module):
    """Class label y in {0..num_classes} -> [B, dim]; index ``num_classes`` is the null label of classifier-free guidance (Ho & Salimans 2022)."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: Tensor | None, batch: int) -> Tensor:
        if y is None:  # no label given: the null (unconditional) label
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=self.table.weight.device)
        y = torch.as_tensor(y, device=self.table.weight.device)
        if y.shape != (batch,) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"cond['y'] must be an integer tensor of shape [{batch}], got {tuple(y.shape)} {y.dtype}")
        if bool(((y < 0) | (y > self.num_classes)).any()):
            raise ValueError(f"cond['y'] must lie in 0..{self.num_classes} ({self.num_classes} = null label)")
        return self.table(y.long())


def check_time_fields(cfg: Any) -> None:
    """Validate the fields every network config shares: dropout, time_scale, fourier_scale, time_embedding."""
    from ..utils.config import require

    n = type(cfg).__name__
    require(0.0 <= cfg.dropout < 1.0, f"{n}.dropout must lie in [0, 1), got {cfg.dropout!r}")
    require(math.isfinite(cfg.time_scale) and cfg.time_scale > 0,
            f"{n}.time_scale must be a finite number > 0, got {cfg.time_scale!r}")
    require(math.isfinite(cfg.fourier_scale) and cfg.fourier_scale > 0,
            f"{n}.fourier_scale must be a finite number > 0, got {cfg.fourier_scale!r}")
    require(cfg.time_embedding in get_args(TimeEmbeddingKind),
            f"{n}.time_embedding must be one of {get_args(TimeEmbeddingKind)}, got {cfg.time_embedding!r}")


def batch_time(t: Tensor | float, x: Tensor) -> Tensor:
    """Time as a float [B] tensor on x's device (a scalar is broadcast over the batch)."""
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape [{x.shape[0]}], got {tuple(t.shape)}")
    return t.float()


def check_cond(cond: Mapping[str, Any] | None, allowed: set[str], net: str) -> Mapping[str, Any]:
    """Return ``cond`` as a mapping (None -> {}), raising ValueError for keys this network does not use."""
    if cond is None:
        return {}
    if not isinstance(cond, Mapping):
        raise ValueError(f"{net}: cond must be None or a mapping with keys among {sorted(allowed)}, got {type(cond).__name__}")
    unknown = sorted(k for k, v in cond.items() if k not in allowed and v is not None)
    if unknown:
        raise ValueError(f"{net}: conditioning key(s) {', '.join(unknown)} not enabled in its config "
                         f"(usable: {', '.join(sorted(allowed)) or 'none'})")
    return cond


class Dropout(nn.Module):
    """Inverted dropout (Srivastava et al. 2014) with the mask drawn as uniform >= p: same law as nn.Dropout, faster on CPU than bernoulli_."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * torch.rand_like(x).ge_(self.p).div_(1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def zero_(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer's parameters (output layers start as the identity residual; Dhariwal & Nichol 2021)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


__all__ = ["TimeEmbeddingKind", "TIME_EMBEDDINGS", "TIME_RANGE", "sinusoidal_embedding", "SinusoidalEmbedding",
           "FourierEmbedding", "TimeEmbedding", "LabelEmbedding", "Dropout", "batch_time", "check_cond", "zero_"]
