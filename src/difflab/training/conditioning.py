"""Conditioning as one object per run: it sizes the network's conditioning inputs, draws a batch's condition (with
the dropout that classifier-free guidance needs), gives the null condition and the conditions of previews and
samples.  Training, previews, ``sample`` and ``report`` all use the same object, rebuilt from the run config.
"""
from __future__ import annotations

import json

from typing import Any, Sequence

import torch
from torch import Tensor

from ..errors import UserError
from ..utils.random import BatchRandom

Cond = dict[str, Tensor] | None


class Conditioning:
    """No condition (unconditional runs); the base of the conditional kinds."""

    kind = "none"

    def config(self) -> dict[str, Any]:
        """The tagged config written to a run's config.json (``conditioning``); :func:`conditioning_from_config` reads it."""
        return {"kind": self.kind}
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

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_classes": self.num_classes, "p_uncond": self.p_uncond}

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


PREVIEW_CAPTIONS = 10


def spread_captions(texts: Sequence[str], k: int = PREVIEW_CAPTIONS) -> list[str]:
    """Up to k of the sorted distinct captions ``texts``, evenly spaced over the list (first and last included)."""
    texts = list(texts)
    if len(texts) <= k:
        return texts
    return [texts[round(i * (len(texts) - 1) / (k - 1))] for i in range(k)] if k > 1 else texts[:1]


class CaptionConditioning(Conditioning):
    """Caption token states through a frozen text encoder, cross-attended ({"context", "context_mask"}); the
    null condition is the empty prompt (no context tokens), drawn with probability p_uncond in training (caption
    dropout for classifier-free guidance); an example with several captions takes one at random per step.
    Previews (and ``difflab sample`` without --prompt) ask for the class prompts of digit captions ("a zero", ...),
    else for up to ``PREVIEW_CAPTIONS`` of the data's distinct captions, spread over their sorted list and stored in
    the run's config (``captions``); a run saved before them falls back to the empty caption."""

    kind = "captions"

    def __init__(self, encoder: str, p_uncond: float, num_classes: int, table: Any = None,
                 captions: Sequence[str] | None = None):
        self.encoder, self.p_uncond, self.num_classes, self.table = encoder, float(p_uncond), num_classes, table
        if captions is None and table is not None and not num_classes:
            captions = spread_captions(table.texts)
        self.captions = [str(c) for c in captions] if captions else []

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "encoder": self.encoder, "p_uncond": self.p_uncond, "num_classes": int(self.num_classes),
                **({"captions": self.captions} if self.captions else {})}

    def network_options(self) -> dict[str, Any]:
        from ..text import encoder_dim

        return {"num_classes": 0, "context_dim": encoder_dim(self.encoder)}

    def draw(self, idx: Tensor, rng: BatchRandom, device: torch.device | str) -> Cond:
        keep = rng.rand(len(idx), torch.float32) >= self.p_uncond
        several = len(self.table.ids) > len(self.table.offsets) - 1  # some example has more than one caption
        ctx, mask = self.table.gather(idx, rng.rand(len(idx), torch.float32) if several else None)
        return {"context": (ctx * keep[:, None, None]).to(device), "context_mask": (mask & keep[:, None]).to(device)}

    def null(self, n: int, device: torch.device | str) -> Cond:
        c = self.prompts([""], device)  # the empty caption: zero states, no tokens
        return {"context": torch.zeros_like(c["context"]).expand(n, -1, -1),
                "context_mask": torch.zeros_like(c["context_mask"]).expand(n, -1)}

    def preview_prompts(self) -> list[str]:
        """The prompts previews ask for in turn: the class prompts of digit captions, else the stored captions (none
        for a run saved before they were stored)."""
        from ..text import class_prompts

        return class_prompts(self.num_classes) if self.num_classes else list(self.captions)

    def preview(self, n: int, device: torch.device | str) -> Cond:
        prompts = self.preview_prompts()
        if not prompts:  # a run saved before its captions were stored: the empty caption
            return self.null(n, device)
        return self.prompts([prompts[k % len(prompts)] for k in range(n)], device)

    def negative(self, prompt: str, cond_fn: Any) -> tuple[Any, Any]:
        """A negative prompt for classifier-free guidance: (the condition function ``cond_fn`` (n, device) padded to
        the negative prompt's length, the map of a condition to the negative prompt's), so the unconditional
        branch of CFG asks for ``prompt`` instead of the empty caption.  Padding adds masked tokens only."""
        neg = self.prompts([prompt], "cpu")
        neg_ctx, neg_mask = neg["context"], neg["context_mask"]
        L = neg_ctx.shape[1]

        def padded(c: dict[str, Tensor], length: int) -> dict[str, Tensor]:
            extra = length - c["context"].shape[1]
            if extra <= 0:
                return c
            return {**c, "context": torch.nn.functional.pad(c["context"], (0, 0, 0, extra)),
                    "context_mask": torch.nn.functional.pad(c["context_mask"], (0, extra), value=False)}

        def uncond(c: dict[str, Tensor]) -> dict[str, Tensor]:
            b, dev = c["context"].shape[0], c["context"].device
            neg = padded({"context": neg_ctx.to(dev), "context_mask": neg_mask.to(dev)}, c["context"].shape[1])
            return {**c, "context": neg["context"].expand(b, -1, -1), "context_mask": neg["context_mask"].expand(b, -1)}

        return (lambda n, device: padded(cond_fn(n, device), L)), uncond

    def prompts(self, texts: Sequence[str], device: torch.device | str) -> Cond:
        from ..text import encode_prompts

        ctx, mask = encode_prompts(list(texts), self.encoder)
        return {"context": ctx.to(device), "context_mask": mask.to(device)}


def upsampled(low: Tensor, scale: int) -> Tensor:
    """The SR3 condition: the low-res image [B, C, h, w] upsampled bicubically by ``scale`` (Saharia et al. 2021, sec. 2.3)."""
    return torch.nn.functional.interpolate(low, scale_factor=scale, mode="bicubic", align_corners=False)


def downsampled(x: Tensor, scale: int) -> Tensor:
    """The low-res image of x: the mean of each scale x scale block (what SR3 is trained to invert)."""
    return torch.nn.functional.avg_pool2d(x, scale)


def gaussian_blur(x: Tensor, std: Tensor) -> Tensor:
    """x [B, C, h, w] blurred by a separable Gaussian of per-example standard deviation std [B] (pixels); std 0 is
    the identity exactly.  Taps out to 3 max(std); edges replicated (the blur of cascaded diffusion's
    conditioning augmentation, Ho et al. 2022, sec. 4.3)."""
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(-1)
    r = int(torch.ceil(3 * std.max()).item()) if len(std) and float(std.max()) > 0 else 0
    if r == 0:
        return x
    k = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    w = torch.exp(-0.5 * k[None] ** 2 / std.clamp_min(1e-6)[:, None] ** 2)  # std 0: exactly 1 at k = 0, 0 elsewhere
    w = (w / w.sum(1, keepdim=True))[:, :, None, None, None]  # [B, K, 1, 1, 1]
    h, wd = x.shape[-2:]
    xp = torch.nn.functional.pad(x, (r, r, 0, 0), mode="replicate")
    x = sum(w[:, i] * xp[..., i:i + wd] for i in range(2 * r + 1))
    xp = torch.nn.functional.pad(x, (0, 0, r, r), mode="replicate")
    return sum(w[:, i] * xp[..., i:i + h, :] for i in range(2 * r + 1))


class SuperResConditioning(Conditioning):
    """SR3's condition {"image": upsampled low-res} concatenated to the network input (Saharia et al. 2021).

    With ``augment`` (noise-conditioning augmentation, Ho et al. 2022, sec. 3.2 and 4.3) the low-res image is
    blurred by a Gaussian of std ``blur`` s (low-res pixels), upsampled and noised to cos(pi s / 2) up +
    sin(pi s / 2) z, at a level s ~ U(0, 1) in training; s is one more input channel; at sampling s is chosen
    (``level``).  Level 0 is the plain SR3 condition (plus the level channel).
    """

    kind = "superres"

    def __init__(self, scale: int, channels: int, data: Any = None, augment: bool = False, blur: float = 0.0):
        self.scale, self.channels, self.data, self.augment = int(scale), int(channels), data, bool(augment)
        self.blur = float(blur) if augment else 0.0

    def config(self) -> dict[str, Any]:
        text = getattr(self, "text", None)
        return {"kind": self.kind, "scale": self.scale, "channels": self.channels, "augment": self.augment,
                "blur": self.blur, **({"text": text.config()} if text is not None else {})}

    def network_options(self) -> dict[str, Any]:
        return {"cond_channels": self.channels + int(self.augment)}

    def _augmented(self, up: Tensor, level: Tensor, z: Tensor) -> Tensor:
        """[cos(pi s/2) up + sin(pi s/2) z, s] for per-example levels s [B]."""
        a, b = (torch.cos(0.5 * torch.pi * level), torch.sin(0.5 * torch.pi * level))
        noisy = a[:, None, None, None] * up + b[:, None, None, None] * z
        return torch.cat([noisy, level[:, None, None, None].expand(-1, 1, *up.shape[-2:])], 1)

    def augment_low(self, low: Tensor, level: Tensor, z: Tensor) -> Tensor:
        """The augmented condition of low-res images [B, C, h, w] at levels [B] with noise z like the upsampled image:
        blur(low, blur s), upsampled, noised to s, and the level channel (:meth:`_augmented`)."""
        blurred = gaussian_blur(low, self.blur * level.to(low.dtype)) if self.blur else low
        return self._augmented(upsampled(blurred, self.scale), level.to(low.dtype), z)

    def of_low(self, low: Tensor, device: torch.device | str, level: float = 0.0,
               generator: torch.Generator | None = None) -> Cond:
        """The condition asking for the high-res version of low-res images ``low`` [B, C, h, w] (augmented to ``level``)."""
        if low.ndim != 4 or low.shape[1] != self.channels:
            raise UserError(f"low-res images must be [B, {self.channels}, h, w], got {list(low.shape)}")
        if not 0.0 <= level <= 1.0:
            raise UserError(f"the augmentation level must lie in [0, 1], got {level}")
        if level and not self.augment:
            raise UserError("this super-resolution run was trained without noise-conditioning augmentation")
        low = low.float().cpu()
        if not self.augment:
            return {"image": upsampled(low, self.scale).to(device)}
        shape = (low.shape[0], low.shape[1], low.shape[2] * self.scale, low.shape[3] * self.scale)
        z = torch.randn(shape, generator=generator) if level else torch.zeros(shape)
        return {"image": self.augment_low(low, torch.full((len(low),), float(level)), z).to(device)}

    def draw(self, idx: Tensor, rng: BatchRandom, device: torch.device | str) -> Cond:
        low = downsampled(self.data.batch(idx), self.scale)
        if not self.augment:
            return {"image": upsampled(low, self.scale).to(device)}
        level = rng.rand(len(idx))
        h, w = low.shape[-2] * self.scale, low.shape[-1] * self.scale
        return {"image": self.augment_low(low, level, rng.randn((len(idx), low.shape[1], h, w))).to(device)}

    def null(self, n: int, device: torch.device | str) -> Cond:
        raise UserError("a super-resolution run needs low-res images: use difflab edit superres")

    def preview(self, n: int, device: torch.device | str) -> Cond:
        """The low-res versions of the first n training images, not augmented (at training time only)."""
        if self.data is None:
            raise UserError("a super-resolution run samples from low-res images: use difflab edit superres")
        x = self.data.batch(torch.arange(n) % len(self.data))
        return self.of_low(downsampled(x, self.scale), device)


class TextSuperResConditioning(SuperResConditioning):
    """Imagen's text-conditional super-resolution (Saharia et al. 2022, sec. 2.5): SR3's low-res condition (with
    noise-conditioning augmentation if asked) and the caption's states cross-attended, the caption dropped with
    p_uncond for classifier-free guidance.  ``text`` is the caption conditioning; ``of_low`` takes the prompts."""

    def __init__(self, scale: int, channels: int, text: CaptionConditioning, data: Any = None, augment: bool = False,
                 blur: float = 0.0):
        super().__init__(scale, channels, data, augment, blur)
        self.text = text

    def network_options(self) -> dict[str, Any]:
        return {**super().network_options(), **self.text.network_options()}

    def of_low(self, low: Tensor, device: torch.device | str, level: float = 0.0,
               generator: torch.Generator | None = None, prompts: Sequence[str] | None = None) -> Cond:
        """The SR condition of ``low`` asking for captions ``prompts`` (one per image; None: the empty caption)."""
        cond = super().of_low(low, device, level, generator)
        words = self.text.prompts(list(prompts), device) if prompts is not None else self.text.null(len(low), device)
        return {**cond, **words}

    def draw(self, idx: Tensor, rng: BatchRandom, device: torch.device | str) -> Cond:
        return {**super().draw(idx, rng, device), **self.text.draw(idx, rng, device)}

    def preview(self, n: int, device: torch.device | str) -> Cond:
        """The low-res versions of the first n training images and their (first) captions (at training time only)."""
        cond = super().preview(n, device)
        ctx, mask = self.text.table.gather(torch.arange(n) % len(self.data))
        return {**cond, "context": ctx.to(device), "context_mask": mask.to(device)}

    def prompts(self, texts: Sequence[str], device: torch.device | str) -> Cond:
        return self.text.prompts(texts, device)


def training_masks(rng: BatchRandom, n: int, h: int, w: int) -> Tensor:
    """Palette's training masks [n, 1, h, w] (1 = keep): a random box, two brush strokes or a half, one kind each
    in turn at random (Saharia et al. 2022, sec. 4); a fixed number of draws per row whatever its kind."""
    kind = rng.randint(3, n)
    u = rng.rand((n, 8))
    ys = torch.arange(h, dtype=torch.float32)[None, :, None] + 0.5
    xs = torch.arange(w, dtype=torch.float32)[None, None, :] + 0.5
    # box: side h/4..h/2, anywhere inside
    bh, bw = (h / 4 + u[:, 0] * h / 4).ceil(), (w / 4 + u[:, 1] * w / 4).ceil()
    y0, x0 = (u[:, 2] * (h - bh + 1)).floor(), (u[:, 3] * (w - bw + 1)).floor()
    box = ((ys >= y0[:, None, None]) & (ys < (y0 + bh)[:, None, None])
           & (xs >= x0[:, None, None]) & (xs < (x0 + bw)[:, None, None]))
    # two strokes: segments between random points, width max(h, w) / 8
    strokes = torch.zeros(n, h, w, dtype=torch.bool)
    radius = max(h, w) / 8
    for k in (4, 6):
        p0 = torch.stack([u[:, k] * h, u[:, k + 1] * w], 1)
        p1 = torch.stack([u[:, (k + 2) % 8] * h, u[:, (k + 3) % 8] * w], 1)
        d = p1 - p0
        along = ((ys - p0[:, 0, None, None]) * d[:, 0, None, None] + (xs - p0[:, 1, None, None]) * d[:, 1, None, None])
        along = (along / (d.pow(2).sum(1)[:, None, None] + 1e-6)).clamp(0, 1)
        dy = ys - (p0[:, 0, None, None] + along * d[:, 0, None, None])
        dx = xs - (p0[:, 1, None, None] + along * d[:, 1, None, None])
        strokes |= dy**2 + dx**2 <= radius**2
    # half: left, right, top or bottom
    side = (u[:, 4] * 4).floor()
    half = torch.where(side[:, None, None] == 0, xs < w / 2, torch.where(side[:, None, None] == 1, xs >= w / 2,
                       torch.where(side[:, None, None] == 2, ys < h / 2, ys >= h / 2)))
    hole = torch.where(kind[:, None, None] == 0, box, torch.where(kind[:, None, None] == 1, strokes, half))
    return (~hole).float()[:, None]


class InpaintConditioning(Conditioning):
    """Palette's inpainting condition {"image": [masked image, mask]} concatenated to the input (Saharia et al. 2022);
    the masked image is 0 in the hole, the mask channel 1 = keep."""

    kind = "inpaint"

    def __init__(self, channels: int, data: Any = None):
        self.channels, self.data = int(channels), data

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "channels": self.channels}

    def network_options(self) -> dict[str, Any]:
        return {"cond_channels": self.channels + 1}

    def of_masked(self, image: Tensor, mask: Tensor, device: torch.device | str) -> Cond:
        """The condition asking to fill ``image`` [B, C, H, W] where ``mask`` (broadcastable to [B, 1, H, W]) is 0."""
        m = torch.as_tensor(mask, dtype=image.dtype).to(image.device).expand(image.shape[0], 1, *image.shape[-2:])
        return {"image": torch.cat([image * m, m], 1).to(device)}

    def draw(self, idx: Tensor, rng: BatchRandom, device: torch.device | str) -> Cond:
        x = self.data.batch(idx)
        return self.of_masked(x, training_masks(rng, len(idx), *x.shape[-2:]), device)

    def null(self, n: int, device: torch.device | str) -> Cond:
        raise UserError("a mask-conditioned inpainting run needs images and masks: use difflab edit inpaint")

    def preview(self, n: int, device: torch.device | str) -> Cond:
        """The first n training images with their centre quarter removed (at training time only)."""
        if self.data is None:
            raise UserError("a mask-conditioned inpainting run needs images and masks: use difflab edit inpaint")
        x = self.data.batch(torch.arange(n) % len(self.data))
        h, w = x.shape[-2:]
        m = torch.ones(1, 1, h, w)
        m[..., h // 4: h // 4 + h // 2, w // 4: w // 4 + w // 2] = 0
        return self.of_masked(x, m, device)


def grayscale(x: Tensor) -> Tensor:
    """Luma [B, 1, H, W] of RGB images [B, 3, H, W]: 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601)."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x * w[None, :, None, None]).sum(1, keepdim=True)


class ColorizeConditioning(Conditioning):
    """Colorization's condition {"image": luma of the colour image} concatenated to the input (Saharia et al. 2022)."""

    kind = "colorize"

    def __init__(self, data: Any = None):
        self.data = data

    def network_options(self) -> dict[str, Any]:
        return {"cond_channels": 1}

    def of_gray(self, gray: Tensor, device: torch.device | str) -> Cond:
        """The condition asking for colour versions of grayscale images ``gray`` [B, 1, H, W] in [-1, 1]."""
        if gray.ndim != 4 or gray.shape[1] != 1:
            raise UserError(f"grayscale images must be [B, 1, H, W], got {list(gray.shape)}")
        return {"image": gray.float().to(device)}

    def draw(self, idx: Tensor, rng: BatchRandom, device: torch.device | str) -> Cond:
        return self.of_gray(grayscale(self.data.batch(idx)), device)

    def null(self, n: int, device: torch.device | str) -> Cond:
        raise UserError("a colorization run needs grayscale images: use difflab edit colorize")

    def preview(self, n: int, device: torch.device | str) -> Cond:
        """The grayscale versions of the first n training images (at training time only)."""
        if self.data is None:
            raise UserError("a colorization run needs grayscale images: use difflab edit colorize")
        return self.draw(torch.arange(n) % len(self.data), None, device)  # type: ignore[arg-type]


def conditioning_for(cfg: Any, data: Any) -> Conditioning:
    """The conditioning a diffusion recipe trains with on this data (labels and captions are read from it)."""
    if getattr(cfg, "task", "generate") == "superres":
        if data.kind != "image":
            raise UserError(f"--task superres needs images; {data.spec} holds points")
        c, h, w = data.shape
        if h % cfg.scale or w % cfg.scale:
            raise UserError(f"--scale {cfg.scale} does not divide the {h}x{w} images of {data.spec}")
        if cfg.text_encoder != "none":  # Imagen's text-conditional super-resolution
            from ..text import caption_table

            text = CaptionConditioning(cfg.text_encoder, cfg.p_uncond, 0, caption_table(data, cfg.text_encoder))
            return TextSuperResConditioning(cfg.scale, c, text, data, augment=cfg.noise_aug, blur=cfg.aug_blur)
        return SuperResConditioning(cfg.scale, c, data, augment=cfg.noise_aug, blur=cfg.aug_blur)
    if getattr(cfg, "task", "generate") == "colorize":
        if data.kind != "image" or data.shape[0] != 3:
            raise UserError(f"--task colorize needs colour images; {data.spec} has shape {list(data.shape)} "
                            f"(try color:{data.spec})")
        return ColorizeConditioning(data)
    if getattr(cfg, "task", "generate") == "inpaint":
        if data.kind != "image":
            raise UserError(f"--task inpaint needs images; {data.spec} holds points")
        return InpaintConditioning(data.shape[0], data)
    if not cfg.conditional:
        return Conditioning()
    if cfg.text_encoder != "none":
        from ..text import caption_table, dataset_captions

        if data.kind != "image":
            raise UserError(f"text conditioning needs images; {data.spec} holds points")
        digits = dataset_captions(data)[1]  # captions made from digit labels: previews ask for each class
        return CaptionConditioning(cfg.text_encoder, cfg.p_uncond, data.num_classes if digits else 0,
                                   caption_table(data, cfg.text_encoder))
    if data.y is None or data.num_classes < 2:
        raise UserError(f"--conditional needs labelled data; {data.spec} has {data.num_classes} classes")
    return LabelConditioning(data.num_classes, cfg.p_uncond, data.y)


def with_negative_prompt(model: Any, conditioning: Conditioning, prompt: str, cond_fn: Any) -> Any:
    """Make the classifier-free guidance inside ``model`` (a wrapper chain) take ``prompt`` as its unconditional
    branch (negative prompting); returns the condition function to sample with (:meth:`CaptionConditioning.negative`)."""
    from ..guidance import ClassifierFreeGuidance

    if not isinstance(conditioning, CaptionConditioning):
        raise UserError("--negative-prompt: this run is not text-conditional (train it with --text-encoder)")
    m = model
    while not isinstance(m, ClassifierFreeGuidance) and hasattr(m, "model"):
        m = m.model
    if not isinstance(m, ClassifierFreeGuidance) or m.scale <= 0:
        raise UserError("--negative-prompt needs --prompt and --guidance-scale W > 0: it replaces the empty caption "
                        "of classifier-free guidance")
    cond_fn, m.uncond = conditioning.negative(prompt, cond_fn)
    return cond_fn


def conditioning_from_config(c: dict[str, Any]) -> Conditioning:
    """The conditioning of a tagged config (:meth:`Conditioning.config`), without data: for sampling a saved run."""
    args = {k: v for k, v in c.items() if k not in ("kind", "text")}
    try:
        if c.get("kind") == "superres" and "text" in c:
            text = conditioning_from_config(c["text"])
            return TextSuperResConditioning(text=text, **args)
        return CONDITIONINGS[c["kind"]](**args)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"cannot rebuild the run's conditioning from {json.dumps(c)[:120]} ({e})") from None


def conditioning_of_run(run_config: dict[str, Any]) -> Conditioning:
    """The conditioning of a saved run, for sampling (from its config.json; no data needed): its tagged
    ``conditioning`` config, or, for runs written before it, the recipe and network fields."""
    if isinstance(run_config.get("conditioning"), dict):
        return conditioning_from_config(run_config["conditioning"])
    train = run_config.get("train", {})
    net = run_config.get("network", {}).get("config", {})
    p = float(train.get("p_uncond", 0.1))
    if train.get("task", "generate") == "superres" and int(net.get("context_dim", 0)) > 0:
        return TextSuperResConditioning(int(train.get("scale", 2)), int(run_config["shape"][0]),
                                        CaptionConditioning(train["text_encoder"], p, 0),
                                        augment=bool(train.get("noise_aug", False)), blur=float(train.get("aug_blur", 0.0)))
    if train.get("task", "generate") == "superres":
        return SuperResConditioning(int(train.get("scale", 2)), int(run_config["shape"][0]),
                                    augment=bool(train.get("noise_aug", False)),
                                    blur=float(train.get("aug_blur", 0.0)))  # runs saved before the blur: none
    if train.get("task", "generate") == "colorize":
        return ColorizeConditioning()
    if train.get("task", "generate") == "inpaint":
        return InpaintConditioning(int(run_config["shape"][0]))
    if int(net.get("context_dim", 0)) > 0 and train.get("text_encoder", "none") != "none":
        digits = run_config.get("class_names") == [str(k) for k in range(10)]  # captions made from digit labels
        return CaptionConditioning(train["text_encoder"], p, 10 if digits else 0)
    if int(net.get("num_classes", 0)) > 0:
        return LabelConditioning(int(net["num_classes"]), p)
    return Conditioning()


#: Conditioning classes by their tagged ``kind`` (TextSuperResConditioning is a superres config with "text").
CONDITIONINGS: dict[str, type[Conditioning]] = {c.kind: c for c in (
    Conditioning, LabelConditioning, CaptionConditioning, SuperResConditioning, InpaintConditioning, ColorizeConditioning)}

__all__ = ["conditioning_from_config", "CONDITIONINGS", "Conditioning", "LabelConditioning", "CaptionConditioning", "with_negative_prompt", "SuperResConditioning",
           "TextSuperResConditioning", "InpaintConditioning", "ColorizeConditioning", "grayscale",
           "training_masks", "gaussian_blur", "upsampled", "downsampled", "conditioning_for", "conditioning_of_run", "Cond",
           "spread_captions", "PREVIEW_CAPTIONS"]
