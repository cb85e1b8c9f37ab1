"""Text alignment of samples with their prompts: prompt accuracy where a prompt names a digit and/or a colour ("a
seven", "a red seven"), judged by a digit classifier and the nearest named colour, and a CLIP-score-like alignment,
the mean cosine similarity of image and prompt embeddings of a contrastive model (Hessel et al. 2021's CLIPScore
without its 2.5 w and clipping at 0; Radford et al. 2021), here difflab's own noisy CLIP at its least noisy time."""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..text.captions import DIGIT_NAMES

#: Colour words a prompt may name and their RGB (those of benchmarks/text_to_image.py for the first four).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 48, 48), "green": (48, 224, 48), "blue": (64, 96, 255), "yellow": (255, 224, 32),
    "orange": (255, 140, 0), "purple": (160, 64, 255), "cyan": (0, 224, 224), "magenta": (255, 0, 255),
    "white": (255, 255, 255)}


def prompt_targets(prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """(digit [N], colour [N]) each prompt names: the index of a digit word ("seven") or numeral ("7") and of a
    :data:`COLOURS` word; -1 where it names none (the first one named counts)."""
    names = list(COLOURS)
    digits, colours = [], []
    for p in prompts:
        words = re.findall(r"[a-z]+|[0-9]", p.lower())
        d = [DIGIT_NAMES.index(w) if w in DIGIT_NAMES else int(w) for w in words if w in DIGIT_NAMES or w.isdigit()]
        c = [names.index(w) for w in words if w in COLOURS]
        digits.append(d[0] if d else -1)
        colours.append(c[0] if c else -1)
    return torch.tensor(digits, dtype=torch.long), torch.tensor(colours, dtype=torch.long)


def ink(x: Tensor) -> Tensor:
    """Grey images [N, 1, H, W] of images in [-1, 1]: themselves, or the brightest channel of colour images (the ink
    of a digit painted on black)."""
    return x if x.shape[1] == 1 else x.amax(1, keepdim=True)


def nearest_colour(x: Tensor, candidates: Sequence[int]) -> Tensor:
    """Index into :data:`COLOURS` of the candidate nearest in chromaticity (unit RGB direction) to the ink-weighted
    mean colour of images x [N, 3, H, W] in [-1, 1]."""
    u = (x.float().clamp(-1, 1) + 1) / 2
    w = u.amax(1, keepdim=True)
    mean = (u * w).sum((2, 3)) / w.sum((2, 3)).clamp_min(1e-6)
    rgb = torch.tensor([list(COLOURS.values())[k] for k in candidates], dtype=torch.float32) / 255
    unit = lambda v: v / v.norm(dim=-1, keepdim=True).clamp_min(1e-6)  # noqa: E731
    best = (unit(mean)[:, None] - unit(rgb)[None]).norm(dim=-1).argmin(1)
    return torch.tensor(list(candidates), dtype=torch.long)[best]


def prompt_accuracy(x: Tensor, prompts: Sequence[str], classify: Callable[[Tensor], Tensor] | None) -> dict[str, float]:
    """Over samples x [N, C, H, W] asked for ``prompts``: ``digit_acc`` (``classify`` of the grey images = the named
    digit), ``colour_acc`` (nearest of the colours the prompts name = the named one; colour images) and
    ``prompt_acc`` (everything the prompt names is right), each over the samples whose prompt names it; keys
    absent where no prompt names anything judgeable."""
    digit, colour = prompt_targets(prompts)
    right = torch.ones(len(x), dtype=torch.bool)
    judged = torch.zeros(len(x), dtype=torch.bool)
    out: dict[str, float] = {}
    if classify is not None and bool((digit >= 0).any()):
        ok = classify(ink(x)).cpu().long() == digit
        has = digit >= 0
        out["digit_acc"] = float(ok[has].float().mean())
        right &= ok | ~has
        judged |= has
    if x.shape[1] == 3 and bool((colour >= 0).any()):
        has = colour >= 0
        ok = nearest_colour(x, sorted(set(colour[has].tolist()))) == colour
        out["colour_acc"] = float(ok[has].float().mean())
        right &= ok | ~has
        judged |= has
    if bool(judged.any()):
        out["prompt_acc"] = float(right[judged].float().mean())
    return out


@torch.no_grad()
def clip_alignment(clip: Any, t: float, x: Tensor, prompts: Sequence[str], batch_size: int = 500) -> Tensor:
    """Cosine similarity [N] of the image embeddings f(x, t) of samples x [N, C, H, W] and the text embeddings g(c) of
    their prompts under a contrastive model (``image_features`` / ``text_features``, unit vectors)."""
    if len(prompts) != len(x):
        raise ValueError(f"{len(prompts)} prompts for {len(x)} images")
    dev = next(clip.parameters()).device
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].float().to(dev)
        f = clip.image_features(xb, torch.full((len(xb),), float(t), device=dev))
        g = clip.text_features(list(prompts[i:i + batch_size]))
        out.append((f * g).sum(1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def pair_alignment(clip: Any, sched: Any, data: Any, num: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Mean cosine of clean images and their own first captions, and of the same images with the captions shuffled
    (a seeded permutation), over the first ``num`` examples: a trained model scores the real pairs higher."""
    from ..text import dataset_captions

    n = min(num, len(data))
    texts = [c[0] for c in dataset_captions(data)[0][:n]]
    x = data.batch(torch.arange(n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    real = clip_alignment(clip, sched.t_min, x, texts).mean()
    shuffled = clip_alignment(clip, sched.t_min, x, [texts[i] for i in perm]).mean()
    return float(real), float(shuffled)


__all__ = ["COLOURS", "prompt_targets", "ink", "nearest_colour", "prompt_accuracy", "clip_alignment", "pair_alignment"]
