"""DINOv2 CLS features for FD-DINOv2 (Stein et al. 2023, "Exposing flaws of generative model evaluation metrics").

A compact DINOv2 ViT (Oquab et al. 2023) without registers: 14 x 14 patches, a CLS token, learned position
embeddings (interpolated bicubically to the input's grid as the official code does: scale factor (g + 0.1) / G,
no antialiasing), pre-norm blocks with layer scale (``ls1``, ``ls2``), a GELU MLP (ViT-S/B/L) or a SwiGLU MLP
(ViT-g), and the CLS token after the final LayerNorm as the features.  The size (S/14 384, B/14 768, L/14 1024,
g/14 1536 wide; depth; MLP kind) is read from the weights' shapes; heads are width / 64.  Images are prepared as
dgm-eval does: [-1, 1] -> [0, 1], grey repeated to RGB, resized to 224 x 224 bicubically (antialiased, as
Pillow), ImageNet mean/std normalisation.  Parameter names follow the official state dict (``blocks.N.attn.qkv``,
``ls1.gamma``, ...), so ``dinov2_vitl14_pretrain.pth`` loads as it is (torch.load with weights_only); a Hugging Face
``Dinov2Model`` state dict (e.g. its model.safetensors) is mapped to those names.  Weights come only from a local
file (``--dinov2-weights PATH`` or ``DIFFLAB_DINOV2_WEIGHTS``), never downloaded.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import EvaluationError

ENV = "DIFFLAB_DINOV2_WEIGHTS"
SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
HEAD_DIM = 64


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (the official ``attn.qkv`` / ``attn.proj``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (ViT-S/B/L)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """w12 -> (x1, x2) -> silu(x1) * x2 -> w3 (ViT-g; Shazeer 2020)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    """x * gamma, a learned per-channel scale of each residual branch (Touvron et al. 2021, CaiT)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """x + ls1(attn(norm1(x))), then + ls2(mlp(norm2(x))); LayerNorm eps 1e-6."""

    def __init__(self, dim: int, heads: int, hidden: int, swiglu: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.mlp = SwiGLU(dim, hidden) if swiglu else Mlp(dim, hidden)
        self.ls1, self.ls2 = LayerScale(dim), LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DINOv2(nn.Module):
    """Images [N, C, H, W] in [-1, 1] (C = 1 or 3, any size) -> CLS features [N, dim] (float32)."""

    input_shape = None  # any size: resized to 224 x 224

    def __init__(self, dim: int = 1024, depth: int = 24, hidden: int = 4096, grid: int = 37, patch: int = 14,
                 swiglu: bool = False, heads: int | None = None):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # used only in pre-training; kept so the file loads whole
        self.blocks = nn.ModuleList(Block(dim, heads or dim // HEAD_DIM, hidden, swiglu) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.patch, self.grid = patch, grid

    @staticmethod
    def prepare(x: Tensor) -> Tensor:
        """[-1, 1] -> [0, 1], grey -> RGB, bicubic 224 x 224 (antialiased), ImageNet normalisation (dgm-eval)."""
        x = (x.float() + 1) / 2
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        mean, std = torch.tensor(MEAN, device=x.device), torch.tensor(STD, device=x.device)
        return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    def position(self, h: int, w: int) -> Tensor:
        """Position embeddings [1, 1 + h w, dim] for an h x w patch grid: the official bicubic interpolation
        (scale factor (h + 0.1) / G, no antialiasing) of the stored G x G grid."""
        if h == w == self.grid:
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        d = grid.shape[-1]
        grid = grid.reshape(1, self.grid, self.grid, d).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, scale_factor=((w + 0.1) / self.grid, (h + 0.1) / self.grid), mode="bicubic",
                             align_corners=False)
        if grid.shape[-2:] != (w, h):
            raise EvaluationError(f"DINOv2 position interpolation gave {tuple(grid.shape[-2:])}, not {(w, h)}")
        return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, w * h, d).to(cls.dtype)], 1)

    def features(self, x: Tensor) -> Tensor:
        """Prepared images [N, 3, H, W] -> CLS token after the final norm [N, dim]."""
        x = self.patch_embed.proj(x)
        h, w = x.shape[-2:]
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x.flatten(2).transpose(1, 2)], 1) + self.position(h, w)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise EvaluationError(f"DINOv2 features need images [N, 1 or 3, H, W], got {tuple(x.shape)}")
        return self.features(self.prepare(x.to(self.cls_token.device)))


# --- Weights ---------------------------------------------------------------------------------------------------------

_HF = [  # Hugging Face Dinov2Model names (transformers 4 and 5) -> the official ones
    (r"^embeddings\.cls_token$", "cls_token"), (r"^embeddings\.mask_token$", "mask_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.(attention\.output\.dense|attention\.o_proj)\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
    (r"^encoder\.layer\.(\d+)\.mlp\.weights_in\.", r"blocks.\1.mlp.w12."),
    (r"^encoder\.layer\.(\d+)\.mlp\.(weights_out|down_proj)\.", r"blocks.\1.mlp.w3."),
    (r"^layernorm\.", "norm."),
]
_FUSED = {  # parts concatenated along the output dimension into one official Linear
    "attn.qkv": [("attention.attention.query", "attention.attention.key", "attention.attention.value"),
                 ("attention.q_proj", "attention.k_proj", "attention.v_proj")],
    "mlp.w12": [("mlp.gate_proj", "mlp.up_proj")],
}


def official_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A DINOv2 state dict with the official parameter names: official files as they are (chunked ``blocks.C.N``
    names flattened), Hugging Face ``Dinov2Model`` files mapped (q, k, v fused into qkv; gate and up into w12)."""
    state = {re.sub(r"^(backbone\.|module\.|dinov2\.)", "", k): v for k, v in state.items()}
    if not any(k.startswith("embeddings.") for k in state):
        return {re.sub(r"^blocks\.\d+\.(\d+)\.", r"blocks.\1.", k): v for k, v in state.items()}
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        for pattern, repl in _HF:
            if re.match(pattern, k):
                out[re.sub(pattern, repl, k)] = v
                break
    layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"^encoder\.layer\.(\d+)\.", k))})
    for i in layers:
        for name, variants in _FUSED.items():
            for parts in variants:
                for kind in ("weight", "bias"):
                    keys = [f"encoder.layer.{i}.{p}.{kind}" for p in parts]
                    if all(k in state for k in keys):
                        out[f"blocks.{i}.{name}.{kind}"] = torch.cat([state[k] for k in keys], 0)
    return out


def from_state_dict(state: dict[str, Tensor], where: str = "DINOv2 weights") -> DINOv2:
    """A DINOv2 of the size the (official or Hugging Face) state dict describes, with those weights loaded."""
    state = official_names(state)
    try:
        dim = state["cls_token"].shape[-1]
        patch = state["patch_embed.proj.weight"].shape[-1]
        grid = round((state["pos_embed"].shape[1] - 1) ** 0.5)
        depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k)))
        swiglu = "blocks.0.mlp.w12.weight" in state
        hidden = state["blocks.0.mlp.w3.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[1 if swiglu else 0]
    except (KeyError, ValueError, IndexError) as e:
        raise EvaluationError(f"{where} are not a DINOv2 ViT state dict (missing {e})") from None
    if any(k.startswith("register_tokens") for k in state):
        raise EvaluationError(f"{where} hold register tokens (a '_reg' model); FD-DINOv2 uses the register-free ViT")
    if dim % HEAD_DIM:
        raise EvaluationError(f"{where}: width {dim} is not a multiple of the 64-wide DINOv2 heads")
    net = DINOv2(dim, depth, hidden, grid, patch, swiglu)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        lines = str(e).splitlines()
        raise EvaluationError(f"{where} do not fit a DINOv2 ViT ({(lines[1] if len(lines) > 1 else e).strip()[:200]})"
                              ) from None
    return net


def weights_path(path: str | Path | None = None) -> Path:
    """The weights file: ``path``, else $DIFFLAB_DINOV2_WEIGHTS; a missing one is an EvaluationError."""
    path = path or os.environ.get(ENV)
    if not path:
        raise EvaluationError(f"--features dinov2 needs DINOv2 ViT weights as a local file: pass --dinov2-weights PATH "
                              f"(e.g. dinov2_vitl14_pretrain.pth or a Dinov2Model model.safetensors) or set {ENV}")
    p = Path(path)
    if not p.is_file():
        raise EvaluationError(f"DINOv2 weights {p} do not exist (--dinov2-weights or {ENV})")
    return p


def load_dinov2(path: str | Path | None = None, device: torch.device | str | None = None) -> DINOv2:
    """DINOv2 with the weights of a local file (see :func:`weights_path`), in eval mode."""
    from .inception import read_state_dict

    p = weights_path(path)
    state = read_state_dict(p, "DINOv2 weights")
    return from_state_dict(state, f"DINOv2 weights {p}").eval().to(device or "cpu")


__all__ = ["DINOv2", "load_dinov2", "from_state_dict", "official_names", "weights_path", "ENV"]
