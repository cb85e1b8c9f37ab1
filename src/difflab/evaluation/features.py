"""Feature networks for image metrics: compact CNN classifiers that difflab trains itself, and a plug-in interface.

A feature extractor maps images [N, C, H, W] in [-1, 1] to features [N, F] and optionally logits [N, K]. The
classifier-feature analogue of FID ("Fréchet classifier distance") uses the penultimate layer of a classifier
trained on the data itself instead of Inception-v3 (Heusel et al. 2017); any torch module or callable plugs in
through :class:`Extractor`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..utils.config import Config, require
from . import metrics

NetName = Literal["digits", "mnist"]


class EvaluationError(UserError, ValueError):
    """Images or features that a metric or feature network cannot take (wrong shape, range or size)."""


# --- Network and recipe ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureNetConfig(Config):
    """Architecture and deterministic training recipe of a feature classifier."""

    name: str = "digits"
    image_size: int = 8
    in_channels: int = 1
    channels: tuple[int, ...] = (32, 64)  # one conv3x3 + ReLU + 2x2 max-pool block per entry
    feature_dim: int = 128
    num_classes: int = 10
    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 1  # random translation augmentation, in pixels
    seed: int = 0

    def check(self) -> None:
        require(self.image_size >= 2 ** len(self.channels), f"image_size {self.image_size} too small for {len(self.channels)} pooling blocks")
        require(len(self.channels) >= 1 and all(c > 0 for c in self.channels), "channels must be positive")
        require(self.epochs >= 0 and self.batch_size > 0 and self.lr > 0, "epochs, batch_size and lr must be positive")


RECIPES: dict[str, FeatureNetConfig] = {
    "digits": FeatureNetConfig(),
    "mnist": FeatureNetConfig(name="mnist", image_size=28, channels=(16, 32, 64), epochs=3, batch_size=128, lr=2e-3, max_shift=2),
}


class FeatureNet(nn.Module):
    """Conv blocks -> flatten -> Linear -> ReLU (features [N, feature_dim]) -> Linear (logits [N, num_classes])."""

    def __init__(self, cfg: FeatureNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in, size = cfg.in_channels, cfg.image_size
        for c in cfg.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in, size = c, size // 2
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(c_in * size * size, cfg.feature_dim)
        self.head = nn.Linear(cfg.feature_dim, cfg.num_classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.cfg.in_channels, self.cfg.image_size, self.cfg.image_size)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images [N, C, H, W] in [-1, 1] -> (features [N, F], logits [N, K])."""
        h = F.relu(self.fc(self.body(x)))
        return h, self.head(h)


@contextlib.contextmanager
def deterministic(seed: int) -> Iterator[torch.Generator]:
    """One CPU thread and a private, seeded RNG (global torch RNG restored afterwards) for reproducible training."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield torch.Generator().manual_seed(seed)
    finally:
        torch.set_num_threads(threads)


def _random_shift(x: Tensor, max_shift: int, gen: torch.Generator) -> Tensor:
    """Translate each image by up to max_shift pixels, filling with the background value -1."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx, dy = (torch.randint(0, 2 * max_shift + 1, (2, n), generator=gen)).tolist()
    return torch.stack([pad[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


@torch.no_grad()
def accuracy(net: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of a (features, logits) network on images x [N, C, H, W] with labels y [N]."""
    net.eval()
    correct = sum(int((net(x[i : i + batch_size])[1].argmax(1) == y[i : i + batch_size]).sum()) for i in range(0, len(x), batch_size))
    return correct / len(x)


def train_feature_net(
    cfg: FeatureNetConfig, x: Tensor, y: Tensor, max_steps: int | None = None
) -> FeatureNet:
    """Train a FeatureNet with AdamW and cosine decay, deterministically (seeded init, order and augmentation; 1 thread)."""
    with deterministic(cfg.seed) as gen:
        net = FeatureNet(cfg)
        steps_per_epoch = -(-len(x) // cfg.batch_size)
        total = steps_per_epoch * cfg.epochs if max_steps is None else min(max_steps, steps_per_epoch * cfg.epochs)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(total, 1))
        net.train()
        step = 0
        while step < total:
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), cfg.batch_size):
                if step >= total:
                    break
                idx = perm[i : i + cfg.batch_size]
                loss = F.cross_entropy(net(_random_shift(x[idx], cfg.max_shift, gen))[1], y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
        net.eval()
    return net


# --- Data for the built-in nets ----------------------------------------------------------------------------------


def net_data(name: NetName, split: Literal["train", "test"], mnist_dir: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """Images [N, 1, H, W] in [-1, 1] and labels of the split a built-in net is trained/tested on (difflab.data splits)."""
    from .. import data

    if name == "digits":
        ds = data.load("digits", split)
    else:
        directory = mnist_dir or os.environ.get("DIFFLAB_MNIST")
        if not directory:
            raise EvaluationError("training the MNIST feature net needs the MNIST IDX directory (mnist_dir=... or $DIFFLAB_MNIST)")
        ds = data.load(f"mnist:{directory}", split)
    assert ds.y is not None
    return ds.x.float(), ds.y.long()


SPLITS = {
    "digits": "difflab.data.load('digits', split): sklearn load_digits, seeded permutation (numpy default_rng(0)), first 1/6 (300) held out",
    "mnist": "difflab.data.load('mnist:DIR', split): the official 60000 train / 10000 t10k IDX files",
}


# --- Saving, loading, caching ------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where trained feature nets are cached: $DIFFLAB_CACHE or ~/.cache/difflab."""
    return Path(os.environ.get("DIFFLAB_CACHE") or Path.home() / ".cache" / "difflab") / "feature_nets"


def assets_dir() -> Path:
    """Package folder holding shipped feature-net weights."""
    return Path(str(resources.files("difflab") / "assets"))


def weights_digest(net: nn.Module) -> str:
    """SHA-256 over the raw bytes of all parameters in state-dict order (identifies a trained net)."""
    h = hashlib.sha256()
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_feature_net(net: FeatureNet, directory: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``feature_net_<name>.safetensors`` and ``.json`` (config, recipe, split, accuracy) into directory."""
    from safetensors.torch import save_file

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    stem = d / f"feature_net_{net.cfg.name}"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(stem) + ".safetensors")
    info = {"config": net.cfg.to_dict(), "sha256": weights_digest(net), **(meta or {})}
    Path(str(stem) + ".json").write_text(json.dumps(info, indent=2) + "\n")
    return stem.with_suffix(".safetensors")


def load_feature_net_file(path: str | Path) -> tuple[FeatureNet, dict[str, Any]]:
    """Load a FeatureNet from ``X.safetensors`` with its ``X.json`` beside it."""
    from safetensors.torch import load_file

    p = Path(path)
    info = json.loads(p.with_suffix(".json").read_text())
    net = FeatureNet(FeatureNetConfig.from_dict(info["config"]))
    net.load_state_dict(load_file(str(p)))
    net.eval()
    return net, info


def build_feature_net(name: NetName, mnist_dir: str | Path | None = None, verbose: bool = False) -> tuple[FeatureNet, dict[str, Any]]:
    """Train a built-in feature net by its recipe and measure held-out accuracy; returns (net, metadata)."""
    cfg = RECIPES[name]
    x, y = net_data(name, "train", mnist_dir)
    xt, yt = net_data(name, "test", mnist_dir)
    t0 = time.perf_counter()
    net = train_feature_net(cfg, x, y)
    seconds = time.perf_counter() - t0
    acc = accuracy(net, xt, yt)
    if verbose:
        print(f"feature net {name}: held-out accuracy {acc:.4f} ({len(xt)} images), trained in {seconds:.1f} s")
    meta = {
        "recipe": "AdamW + cosine decay, cross-entropy, random translations filled with -1; 1 CPU thread, seeded",
        "split": SPLITS[name],
        "num_train": len(x),
        "num_test": len(xt),
        "heldout_accuracy": acc,
        "train_seconds": round(seconds, 1),
        "torch_version": torch.__version__,
    }
    return net, meta


def load_feature_net(name: NetName, mnist_dir: str | Path | None = None, train_if_missing: bool = True) -> FeatureNet:
    """A built-in feature net: shipped weights, else the user cache, else trained now and cached."""
    if name not in RECIPES:
        raise EvaluationError(f"unknown feature net {name!r}; built-in: {', '.join(RECIPES)}")
    for d in (assets_dir(), cache_dir()):
        p = d / f"feature_net_{name}.safetensors"
        if p.is_file():
            return load_feature_net_file(p)[0]
    if not train_if_missing:
        raise EvaluationError(f"no trained feature net {name!r} in {assets_dir()} or {cache_dir()}")
    net, meta = build_feature_net(name, mnist_dir)
    save_feature_net(net, cache_dir(), meta)
    return net


# --- Generic extractor interface ---------------------------------------------------------------------------------


@dataclass
class Features:
    """Features [N, F] and optional logits [N, K] of a set of images (numpy float64); memoises k-NN radii."""

    features: np.ndarray
    logits: np.ndarray | None = None
    _radii: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.features)

    def knn_radii(self, k: int) -> np.ndarray:
        """Distance of each feature vector to its k-th nearest neighbour in the set (cached per k)."""
        if k not in self._radii:
            self._radii[k] = metrics.knn_radii(self.features, k)
        return self._radii[k]


class Extractor:
    """Wraps any callable images [N, C, H, W] in [-1, 1] -> features [N, F] or (features, logits).

    ``input_shape`` (C, H, W), when known, is enforced: images larger by the same integer factor in H and W are
    area-downsampled (average pooling, the way the 8x8 digits were made from 32x32 bitmaps); anything else raises.
    """

    def __init__(self, fn: Callable[[Tensor], Any], input_shape: tuple[int, int, int] | None = None, name: str = "custom") -> None:
        self.fn, self.input_shape, self.name = fn, input_shape, name

    def prepare(self, x: Tensor) -> Tensor:
        """Check shape/range and area-downsample by an integer factor when that is the only difference."""
        if x.dtype == torch.uint8:
            raise EvaluationError("images must be floats in [-1, 1], got uint8 (use difflab.data.to_unit)")
        if x.ndim != 4:
            raise EvaluationError(f"images must be [N, C, H, W], got shape {tuple(x.shape)}")
        x = x.float().clamp(-1.0, 1.0)
        if self.input_shape is None or tuple(x.shape[1:]) == tuple(self.input_shape):
            return x
        c, h, w = self.input_shape
        _, xc, xh, xw = x.shape
        if xc == c and xh % h == 0 and xw % w == 0 and xh // h == xw // w:
            return F.avg_pool2d(x, xh // h)
        raise EvaluationError(
            f"feature net {self.name!r} expects images [N, {c}, {h}, {w}] in [-1, 1]; got [N, {xc}, {xh}, {xw}] "
            f"(only integer-factor downsampling with matching channels is done automatically)"
        )

    @torch.no_grad()
    def __call__(self, images: Any, batch_size: int = 500) -> Features:
        """Features (and logits if the wrapped callable returns them) of images, in batches."""
        x = self.prepare(torch.as_tensor(np.asarray(images)) if not isinstance(images, Tensor) else images.detach().cpu())
        feats, logits = [], []
        for i in range(0, len(x), batch_size):
            out = self.fn(x[i : i + batch_size])
            f, lg = out if isinstance(out, (tuple, list)) else (out, None)
            feats.append(torch.as_tensor(f).reshape(len(f), -1).double().numpy())
            if lg is not None:
                logits.append(torch.as_tensor(lg).double().numpy())
        return Features(np.concatenate(feats), np.concatenate(logits) if logits else None)


def get_extractor(features: str | Extractor | nn.Module | Callable[[Tensor], Any], mnist_dir: str | Path | None = None) -> Extractor:
    """Resolve "digits" / "mnist" (built-in nets), an Extractor, a torch module or any callable to an Extractor."""
    if isinstance(features, Extractor):
        return features
    if isinstance(features, str):
        net = load_feature_net(features, mnist_dir)  # type: ignore[arg-type]
        return Extractor(net, net.input_shape, features)
    if isinstance(features, nn.Module):
        features.eval()
        return Extractor(features, getattr(features, "input_shape", None), type(features).__name__)
    if callable(features):
        return Extractor(features, getattr(features, "input_shape", None), getattr(features, "__name__", "custom"))
    raise EvaluationError(f"features must be 'digits', 'mnist', a torch module or a callable, got {type(features).__name__}")
