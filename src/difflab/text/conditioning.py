"""Text conditioning of a dataset: every example's caption encoded once per distinct caption, gathered per batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..errors import UserError
from .captions import DIGIT_NAMES, captions
from .encoders import get_encoder


@dataclass(frozen=True)
class CaptionTable:
    """Distinct captions of a dataset, their encoder states [U, L, D] and masks [U, L], and each example's caption id [N]."""

    texts: list[str]
    states: Tensor
    mask: Tensor
    ids: Tensor

    def gather(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """(context [B, L, D], context_mask [B, L]) of examples idx."""
        u = self.ids[idx]
        return self.states[u], self.mask[u]


def encode_prompts(prompts: Sequence[str], encoder: str) -> tuple[Tensor, Tensor]:
    """(states [B, L, D], mask [B, L]) of prompts with a frozen encoder by name."""
    with torch.no_grad():
        s, m = get_encoder(encoder).encode(list(prompts))
    return s.detach().float().cpu(), m.cpu()


_TABLES: dict[tuple[str, int, str], CaptionTable] = {}


def caption_table(data, encoder: str) -> CaptionTable:
    """The (cached) caption table of a labelled digit dataset under a text encoder."""
    key = (data.spec, len(data), encoder)
    if key not in _TABLES:
        if data.kind != "image" or data.y is None or data.x.shape[1] != 1 or data.num_classes > len(DIGIT_NAMES):
            raise UserError(f"text conditioning needs grey labelled digit images (digits, MNIST); {data.spec} is not")
        texts = captions(data.x, data.y)
        uniq = sorted(set(texts))
        where = {c: i for i, c in enumerate(uniq)}
        states, mask = encode_prompts(uniq, encoder)
        _TABLES[key] = CaptionTable(uniq, states, mask, torch.tensor([where[c] for c in texts], dtype=torch.long))
    return _TABLES[key]


def class_prompts(num_classes: int = 10) -> list[str]:
    """The plain prompt of each class: "a zero", ..., "a nine"."""
    return [f"a {DIGIT_NAMES[k]}" for k in range(num_classes)]


__all__ = ["CaptionTable", "encode_prompts", "caption_table", "class_prompts"]
