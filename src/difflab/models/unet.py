"""A U-Net for diffusion (Ho et al. 2020; Nichol & Dhariwal 2021; Dhariwal & Nichol 2021), sized for CPUs by default.

ResNet blocks with GroupNorm + SiLU, multi-head self-attention (optionally cross-attention to a context)
at chosen levels, strided-conv down / nearest+conv up sampling with skip connections, dropout and
zero-initialised output layers.  Time (and an optional class label) enters every ResNet block by addition
or by adaptive group norm (scale-shift).  Inputs of any size are padded to a multiple of 2^(levels-1) and
cropped back.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Mapping, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.config import Config, ConfigError, require
from .embeddings import check_time_fields, Dropout, LabelEmbedding, TimeEmbedding, TimeEmbeddingKind, batch_time, check_cond, zero_

TimeInjection = Literal["add", "adagn"]


@dataclasses.dataclass(frozen=True)
class UNetConfig(Config):
    """U-Net architecture.  Level i works at resolution H / 2^i with ``channels * channel_mult[i]`` channels."""

    in_channels: int = 1
    out_channels: int = 1
    channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 2
    attention_levels: tuple[int, ...] = (1,)  # levels (0 = full resolution) with attention after each ResNet block
    num_heads: int = 4
    dropout: float = 0.1
    groups: int = 8  # GroupNorm groups; must divide every level's width
    time_embedding: TimeEmbeddingKind = "sinusoidal"
    time_injection: TimeInjection = "adagn"
    time_scale: float = 1.0  # the embedding sees time_scale * t; set to 1000 / schedule.t_max
    fourier_scale: float = 16.0  # std of the random Fourier frequencies (time_embedding="fourier")
    num_classes: int = 0  # > 0: class-conditional; label num_classes is the null label
    cond_channels: int = 0  # > 0: cond["image"] [B, cond_channels, H, W] is concatenated to the input
    context_dim: int = 0  # > 0: cross-attention to cond["context"] [B, L, context_dim] in attention blocks
    input_fourier: tuple[int, ...] = ()  # exponents n: append sin/cos(2^n 2 pi x_t) to the input (Kingma et al. 2021)
    patch: int = 1  # > 1: a pixel-unshuffle stem; the U-Net works on (H/patch, W/patch) with patch^2 x the channels

    def check(self) -> None:
        n = "UNetConfig"
        self.require_ints(("in_channels", "out_channels", "channels", "num_res_blocks", "num_heads", "groups", "patch"), 1)
        self.require_ints(("num_classes", "cond_channels", "context_dim"), 0)
        require(len(self.channel_mult) >= 1 and all(isinstance(m, int) and m >= 1 for m in self.channel_mult),
                f"{n}.channel_mult must be a non-empty list of integers >= 1, got {self.channel_mult!r}")
        require(all(isinstance(k, int) and 0 <= k <= 16 for k in self.input_fourier),
                f"{n}.input_fourier must be a list of integer exponents in 0..16, got {self.input_fourier!r}")
        levels = len(self.channel_mult)
        require(all(isinstance(a, int) and 0 <= a < levels for a in self.attention_levels)
                and len(set(self.attention_levels)) == len(self.attention_levels),
                f"{n}.attention_levels must be distinct levels in 0..{levels - 1}, got {self.attention_levels!r}")
        for m in self.channel_mult:
            w = self.channels * m
            require(w % self.groups == 0, f"{n}.groups={self.groups} must divide every level width, not {w}")
            require(w % self.num_heads == 0, f"{n}.num_heads={self.num_heads} must divide every level width, not {w}")
        check_time_fields(self)
        require(self.time_injection in get_args(TimeInjection),
                f"{n}.time_injection must be one of {get_args(TimeInjection)}, got {self.time_injection!r}")

    @property
    def multiple(self) -> int:
        """Input sizes are padded to a multiple of this (patch * 2^(levels-1))."""
        return self.patch * 2 ** (len(self.channel_mult) - 1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with the embedding added, or as AdaGN scale-shift (Dhariwal & Nichol 2021, sec. 3); [B, c_in, H, W] -> [B, c_out, H, W]."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float, adagn: bool):
        super().__init__()
        self.adagn = adagn
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out if adagn else c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = Dropout(dropout)
        self.conv2 = zero_(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x [B, c_in, H, W], emb [B, emb_dim] (already passed through SiLU)."""
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb(emb)[:, :, None, None]
        if self.adagn:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1.0 + scale)
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions (Vaswani et al. 2017; Ho et al. 2020), then optional cross-attention to a context (Rombach et al. 2022)."""

    def __init__(self, c: int, heads: int, groups: int, context_dim: int = 0):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, c)
        self.qkv = nn.Linear(c, 3 * c)
        self.proj = zero_(nn.Linear(c, c))
        self.cross = context_dim > 0
        if self.cross:
            self.norm_cross = nn.LayerNorm(c)
            self.q = nn.Linear(c, c)
            self.kv = nn.Linear(context_dim, 2 * c)
            self.proj_cross = zero_(nn.Linear(c, c))

    def _heads(self, x: Tensor) -> Tensor:
        """[B, N, C] -> [B, heads, N, C/heads]."""
        B, N, C = x.shape
        return x.view(B, N, self.heads, C // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """x [B, C, H, W]; context [B, L, context_dim]; mask [B, L] bool (True = attend)."""
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [B, HW, C]
        q, k, v = self.qkv(self.norm(x).flatten(2).transpose(1, 2)).chunk(3, dim=2)
        a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))
        tokens = tokens + self.proj(a.transpose(1, 2).reshape(B, H * W, C))
        if self.cross and context is not None:
            q = self._heads(self.q(self.norm_cross(tokens)))
            k, v = (self._heads(z) for z in self.kv(context).chunk(2, dim=2))
            attn_mask, keep = None, None
            if mask is not None:
                keep = mask.any(dim=1)  # an element with no context tokens gets no cross-attention update
                attn_mask = (mask | ~keep[:, None])[:, None, None, :]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            out = self.proj_cross(a.transpose(1, 2).reshape(B, H * W, C))
            tokens = tokens + (out if keep is None else out * keep[:, None, None].to(out.dtype))
        return tokens.transpose(1, 2).reshape(B, C, H, W)


class Downsample(nn.Module):
    """3x3 convolution with stride 2: [B, C, H, W] -> [B, C, H/2, W/2]."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then 3x3 convolution: [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Stage(nn.Module):
    """A ResNet block, optionally followed by attention."""

    def __init__(self, res: ResBlock, attn: AttentionBlock | None):
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, h: Tensor, emb: Tensor, context: Tensor | None, mask: Tensor | None) -> Tensor:
        h = self.res(h, emb)
        return h if self.attn is None else self.attn(h, context, mask)


class UNet(nn.Module):
    """eps/x0/v network net(x_t, t, cond) -> [B, out_channels, H, W] for x_t [B, in_channels, H, W] and t [B] in schedule time.

    ``cond`` is None or a mapping with optional keys ``"y"`` (LongTensor [B], labels 0..num_classes, the last
    being the null label; missing = null), ``"image"`` ([B, cond_channels, H, W]; missing = zeros),
    ``"context"`` ([B, L, context_dim]; missing = no cross-attention) and ``"context_mask"`` ([B, L] bool).
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        cfg = config if config is not None else UNetConfig()
        if not isinstance(cfg, UNetConfig):
            raise ConfigError(f"UNet needs a UNetConfig, got {type(cfg).__name__}")
        self.config = cfg
        ch, groups, adagn = cfg.channels, cfg.groups, cfg.time_injection == "adagn"
        emb_dim = 4 * ch
        self.time_embed = TimeEmbedding(cfg.time_embedding, ch, emb_dim, cfg.time_scale, cfg.fourier_scale)
        self.label_embed = LabelEmbedding(cfg.num_classes, emb_dim) if cfg.num_classes > 0 else None
        self._cond_keys = {k for k, on in (("y", cfg.num_classes), ("image", cfg.cond_channels),
                                           ("context", cfg.context_dim), ("context_mask", cfg.context_dim)) if on}

        def stage(c_in: int, c_out: int, level: int) -> Stage:
            attn = (AttentionBlock(c_out, cfg.num_heads, groups, cfg.context_dim)
                    if level in cfg.attention_levels else None)
            return Stage(ResBlock(c_in, c_out, emb_dim, groups, cfg.dropout, adagn), attn)

        extra = 2 * len(cfg.input_fourier) * cfg.in_channels
        p2 = cfg.patch * cfg.patch
        self.input_conv = nn.Conv2d((cfg.in_channels + extra + cfg.cond_channels) * p2, ch, 3, padding=1)
        widths = [ch * m for m in cfg.channel_mult]
        skips = [ch]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = ch
        for level, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                self.down.append(stage(c, w, level))
                c = w
                skips.append(c)
            if level < len(widths) - 1:
                self.downsample.append(Downsample(c))
                skips.append(c)
        last = len(widths) - 1
        self.mid = nn.ModuleList([
            Stage(ResBlock(c, c, emb_dim, groups, cfg.dropout, adagn),
                  AttentionBlock(c, cfg.num_heads, groups, cfg.context_dim)),
            Stage(ResBlock(c, c, emb_dim, groups, cfg.dropout, adagn), None),
        ])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in range(last, -1, -1):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(stage(c + skips.pop(), widths[level], level))
                c = widths[level]
            if level > 0:
                self.upsample.append(Upsample(c))
        self.out_norm = nn.GroupNorm(groups, c)
        self.out_conv = zero_(nn.Conv2d(c, cfg.out_channels * p2, 3, padding=1))

    @classmethod
    def from_config(cls, config: UNetConfig | Mapping[str, Any]) -> "UNet":
        """Build from a UNetConfig or its dict form."""
        return cls(config if isinstance(config, UNetConfig) else UNetConfig.from_dict(dict(config)))

    def _inputs(self, x: Tensor, cond: Mapping[str, Any]) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Concatenate the conditioning image and validate the context; returns (x, context, mask)."""
        cfg = self.config
        B, _, H, W = x.shape
        if cfg.cond_channels:
            img = cond.get("image")
            if img is None:
                img = x.new_zeros(B, cfg.cond_channels, H, W)
            elif tuple(img.shape) != (B, cfg.cond_channels, H, W):
                raise ValueError(f"cond['image'] must have shape {(B, cfg.cond_channels, H, W)}, got {tuple(img.shape)}")
            x = torch.cat([x, img.to(x.dtype)], dim=1)
        context, mask = cond.get("context"), cond.get("context_mask")
        if context is not None:
            if context.ndim != 3 or context.shape[0] != B or context.shape[2] != cfg.context_dim:
                raise ValueError(f"cond['context'] must have shape [{B}, L, {cfg.context_dim}], got {tuple(context.shape)}")
            context = context.to(x.dtype)
            if mask is not None:
                if tuple(mask.shape) != tuple(context.shape[:2]):
                    raise ValueError(f"cond['context_mask'] must have shape {tuple(context.shape[:2])}, got {tuple(mask.shape)}")
                mask = mask.bool()
        return x, context, mask

    def forward(self, x: Tensor, t: Tensor | float, cond: Mapping[str, Any] | None = None) -> Tensor:
        """x [B, in_channels, H, W], t [B] (or scalar) -> [B, out_channels, H, W]."""
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"UNet expects x of shape [B, {cfg.in_channels}, H, W], got {tuple(x.shape)}")
        c = check_cond(cond, self._cond_keys, "UNet")
        B, _, H, W = x.shape
        emb = self.time_embed(batch_time(t, x))
        if self.label_embed is not None:
            emb = emb + self.label_embed(c.get("y"), B)
        emb = F.silu(emb)  # every block applies SiLU then its own linear map: do the SiLU once
        if cfg.input_fourier:
            x = torch.cat([x, fourier_features(x, cfg.input_fourier)], dim=1)
        x, context, mask = self._inputs(x, c)

        m = cfg.multiple
        ph, pw = (-H) % m, (-W) % m
        if ph or pw:
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="replicate")

        if cfg.patch > 1:
            x = F.pixel_unshuffle(x, cfg.patch)
        h = self.input_conv(x)
        hs = [h]
        blocks, downs = iter(self.down), iter(self.downsample)
        for level in range(len(cfg.channel_mult)):
            for _ in range(cfg.num_res_blocks):
                h = next(blocks)(h, emb, context, mask)
                hs.append(h)
            if level < len(cfg.channel_mult) - 1:
                h = next(downs)(h)
                hs.append(h)
        for s in self.mid:
            h = s(h, emb, context, mask)
        blocks, ups = iter(self.up), iter(self.upsample)
        for level in range(len(cfg.channel_mult) - 1, -1, -1):
            for _ in range(cfg.num_res_blocks + 1):
                h = next(blocks)(torch.cat([h, hs.pop()], dim=1), emb, context, mask)
            if level > 0:
                h = next(ups)(h)
        h = self.out_conv(F.silu(self.out_norm(h)))
        if cfg.patch > 1:
            h = F.pixel_shuffle(h, cfg.patch)
        if ph or pw:
            h = h[:, :, ph // 2: ph // 2 + H, pw // 2: pw // 2 + W]
        return h


def fourier_features(x: Tensor, exponents: tuple[int, ...] = (7, 8)) -> Tensor:
    """[sin(2^n 2 pi x), cos(2^n 2 pi x)] per exponent n on the channel dim: [B, C, ...] -> [B, 2 C len(n), ...] (Kingma et al. 2021, appendix C)."""
    freqs = torch.tensor([2.0**k * 2.0 * math.pi for k in exponents], dtype=x.dtype, device=x.device)
    h = x.unsqueeze(2) * freqs.view(1, 1, -1, *([1] * (x.ndim - 2)))  # [B, C, F, ...]
    return torch.cat([torch.sin(h), torch.cos(h)], dim=2).flatten(1, 2)


# ---- presets -------------------------------------------------------------------------------------------
def unet_digits(**changes: Any) -> UNetConfig:
    """8x8x1 (scikit-learn digits): 2 levels (8, 4), 32/64 channels, attention at 4x4."""
    return UNetConfig(in_channels=1, out_channels=1, channels=32, channel_mult=(1, 2), num_res_blocks=2,
                      attention_levels=(1,), num_heads=4, dropout=0.1, groups=8).replace(**changes)


def unet_mnist(**changes: Any) -> UNetConfig:
    """28x28x1 (MNIST): 3 levels (28, 14, 7), 32/64/64 channels, one ResNet block per level, attention at 7x7."""
    return UNetConfig(in_channels=1, out_channels=1, channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
                      attention_levels=(2,), num_heads=4, dropout=0.1, groups=8).replace(**changes)


UNET_PRESETS = {"digits": unet_digits, "mnist": unet_mnist}


def unet_for_image(size: int, channels: int, **changes: Any) -> UNetConfig:
    """A CPU-sized config for square-ish images of side ``size`` with ``channels`` channels."""
    base = unet_digits if size <= 16 else unet_mnist
    return base(in_channels=channels, out_channels=channels, **changes)


__all__ = ["UNet", "UNetConfig", "TimeInjection", "fourier_features", "ResBlock", "AttentionBlock", "unet_digits", "unet_mnist",
           "unet_for_image", "UNET_PRESETS"]
