"""Text conditioning of a dataset: every distinct caption encoded once, each example's caption(s) gathered per batch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..errors import UserError
from .captions import DIGIT_NAMES, captions, streamed_attributes
from .encoders import get_encoder


@dataclass(frozen=True)
class CaptionTable:
    """Distinct captions of a dataset, their encoder states [U, L, D] and masks [U, L], and each example's captions:
    ids[offsets[i]:offsets[i + 1]] index ``texts`` for example i (one or more)."""

    texts: list[str]
    states: Tensor
    mask: Tensor
    ids: Tensor
    offsets: Tensor

    def gather(self, idx: Tensor, u: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(context [B, L, D], context_mask [B, L]) of examples idx; an example with several captions takes the one
        that the uniform draw u [B] in [0, 1) picks (the first when u is None)."""
        idx = torch.as_tensor(idx).cpu()
        lo, n = self.offsets[idx], self.offsets[idx + 1] - self.offsets[idx]
        pick = lo if u is None else lo + (u.cpu() * n).long().clamp_max(n - 1)
        k = self.ids[pick]
        return self.states[k], self.mask[k]


def encode_prompts(prompts: Sequence[str], encoder: str) -> tuple[Tensor, Tensor]:
    """(states [B, L, D], mask [B, L]) of prompts with a frozen encoder by name."""
    with torch.no_grad():
        s, m = get_encoder(encoder).encode(list(prompts))
    return s.detach().float().cpu(), m.cpu()


def dataset_captions(data) -> tuple[list[tuple[str, ...]], bool]:
    """Each example's captions and whether they were made from digit labels: a captioned folder's own captions,
    else captions of grey labelled digits (:func:`captions`); a latent data set's come from its images."""
    if getattr(data, "captions", None) is not None:
        return list(data.captions), False
    pixels = getattr(data, "images", None)  # a LatentDataset: the captions of the images it encodes
    if pixels is not None:
        return dataset_captions(pixels)
    if data.kind == "image" and data.y is not None and data.shape[0] == 1 and 2 <= data.num_classes <= len(DIGIT_NAMES):
        return [(c,) for c in captions(streamed_attributes(data.batches()), data.y)], True
    raise UserError(f"text conditioning needs captions: an image folder with metadata.jsonl, metadata.csv or a .txt "
                    f"beside each image (docs/data.md), or grey labelled digits (digits, mnist:DIR); {data.spec} has none")


_TABLES: dict[tuple[str, tuple[str, ...]], tuple[Tensor, Tensor]] = {}


def caption_table(data, encoder: str) -> CaptionTable:
    """The caption table of a dataset under a text encoder (the encodings of each distinct caption list cached)."""
    per_example, _ = dataset_captions(data)
    uniq = sorted({c for caps in per_example for c in caps})
    where = {c: i for i, c in enumerate(uniq)}
    key = (encoder, tuple(uniq))
    if key not in _TABLES:
        _TABLES.clear()  # one data set at a time
        _TABLES[key] = encode_prompts(uniq, encoder)
    states, mask = _TABLES[key]
    ids = torch.tensor([where[c] for caps in per_example for c in caps], dtype=torch.long)
    offsets = torch.tensor([0] + [len(caps) for caps in per_example], dtype=torch.long).cumsum(0)
    return CaptionTable(uniq, states, mask, ids, offsets)


def class_prompts(num_classes: int = 10) -> list[str]:
    """The plain prompt of each class: "a zero", ..., "a nine"."""
    return [f"a {DIGIT_NAMES[k]}" for k in range(num_classes)]


__all__ = ["CaptionTable", "encode_prompts", "dataset_captions", "caption_table", "class_prompts"]
