"""Conditioning as one object per run: it sizes the network's conditioning inputs, draws a batch's condition (with
the dropout that classifier-free guidance needs), gives the null condition and the conditions of previews and
samples.  Training, previews, ``sample`` and ``report`` all use the same object, rebuilt from the run config.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import UserError
from ..utils.random import BatchRandom

Cond = dict[str, Tensor] | None


class Conditioning:
    """No condition (unconditional runs); the base of the conditional kinds."""

    kind = "none"
    num_classes = 0

    def network_options(self) -> dict[str, Any]:
        """Config fields of the network that this conditioning needs."""
        return {}

    def draw(self, idx: Tensor, rng: BatchRandom, device: torch.device | str) -> Cond:
        """The training condition of examples idx, each replaced by the null condition with probability p_uncond."""
        return None

    def null(self, n: int, device: torch.device | str) -> Cond:
        """The unconditional condition of n samples."""
        return None

    def preview(self, n: int, device: torch.device | str) -> Cond:
        """The condition of a preview grid: the classes in turn."""
        return None

    def labels(self, y: Tensor, device: torch.device | str) -> Cond:
        """The condition asking for classes y [n]."""
        raise UserError("this run is not class-conditional")

    def prompts(self, texts: Sequence[str], device: torch.device | str) -> Cond:
        """The condition asking for captions texts (one, or one per sample)."""
        raise UserError("this run is not text-conditional")


class LabelConditioning(Conditioning):
    """Class labels {"y": [B]}; label ``num_classes`` is the null label (Ho & Salimans 2021)."""

    kind = "labels"

    def __init__(self, num_classes: int, p_uncond: float, y: Tensor | None = None):
        if num_classes < 2:
            raise UserError(f"class-conditional training needs labelled data with at least 2 classes, got {num_classes}")
        self.num_classes, self.p_uncond, self.y = int(num_classes), float(p_uncond), y

    def network_options(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes}

    def draw(self, idx: Tensor, rng: BatchRandom, device: torch.device | str) -> Cond:
        y = self.y[idx].clone()
        y[rng.rand(len(idx), torch.float32) < self.p_uncond] = self.num_classes
        return {"y": y.to(device)}

    def null(self, n: int, device: torch.device | str) -> Cond:
        return {"y": torch.full((n,), self.num_classes, dtype=torch.long, device=device)}

    def preview(self, n: int, device: torch.device | str) -> Cond:
        return self.labels(torch.arange(n) % self.num_classes, device)

    def labels(self, y: Tensor, device: torch.device | str) -> Cond:
        y = torch.as_tensor(y, dtype=torch.long)
        if bool(((y < 0) | (y >= self.num_classes)).any()):
            raise UserError(f"label {int(y[(y < 0) | (y >= self.num_classes)][0])} is out of range: "
                            f"this run has classes 0..{self.num_classes - 1}")
        return {"y": y.to(device)}


class CaptionConditioning(Conditioning):
    """Caption token states through a frozen text encoder, cross-attended ({"context", "context_mask"}); the
    null condition is the empty prompt (no context tokens)."""

    kind = "captions"

    def __init__(self, encoder: str, p_uncond: float, num_classes: int, table: Any = None):
        self.encoder, self.p_uncond, self.num_classes, self.table = encoder, float(p_uncond), num_classes, table

    def network_options(self) -> dict[str, Any]:
        from ..text import encoder_dim

        return {"num_classes": 0, "context_dim": encoder_dim(self.encoder)}

    def draw(self, idx: Tensor, rng: BatchRandom, device: torch.device | str) -> Cond:
        ctx, mask = self.table.gather(idx)
        keep = rng.rand(len(idx), torch.float32) >= self.p_uncond
        return {"context": (ctx * keep[:, None, None]).to(device), "context_mask": (mask & keep[:, None]).to(device)}

    def null(self, n: int, device: torch.device | str) -> Cond:
        ctx, mask = self.prompts([""], device)
        return {"context": torch.zeros_like(ctx).expand(n, -1, -1), "context_mask": torch.zeros_like(mask).expand(n, -1)}

    def preview(self, n: int, device: torch.device | str) -> Cond:
        from ..text import class_prompts

        prompts = class_prompts(self.num_classes or 10)
        return self.prompts([prompts[k % len(prompts)] for k in range(n)], device)

    def prompts(self, texts: Sequence[str], device: torch.device | str) -> Cond:
        from ..text import encode_prompts

        ctx, mask = encode_prompts(list(texts), self.encoder)
        return {"context": ctx.to(device), "context_mask": mask.to(device)}


def conditioning_for(cfg: Any, data: Any) -> Conditioning:
    """The conditioning a diffusion recipe trains with on this data (labels and captions are read from it)."""
    if not cfg.conditional:
        return Conditioning()
    if cfg.text_encoder != "none":
        from ..text import caption_table

        if data.kind != "image":
            raise UserError(f"text conditioning needs images; {data.spec} holds points")
        return CaptionConditioning(cfg.text_encoder, cfg.p_uncond, data.num_classes,
                                   caption_table(data, cfg.text_encoder))
    if data.y is None or data.num_classes < 2:
        raise UserError(f"--conditional needs labelled data; {data.spec} has {data.num_classes} classes")
    return LabelConditioning(data.num_classes, cfg.p_uncond, data.y)


def conditioning_of_run(run_config: dict[str, Any]) -> Conditioning:
    """The conditioning of a saved run, for sampling (from its config.json; no data needed)."""
    train = run_config.get("train", {})
    net = run_config.get("network", {}).get("config", {})
    p = float(train.get("p_uncond", 0.1))
    if int(net.get("context_dim", 0)) > 0 and train.get("text_encoder", "none") != "none":
        return CaptionConditioning(train["text_encoder"], p, len(run_config.get("class_names") or []))
    if int(net.get("num_classes", 0)) > 0:
        return LabelConditioning(int(net["num_classes"]), p)
    return Conditioning()


__all__ = ["Conditioning", "LabelConditioning", "CaptionConditioning", "conditioning_for", "conditioning_of_run", "Cond"]
