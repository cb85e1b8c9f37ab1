"""The autoencoder family: a KL-regularised autoencoder (Rombach et al. 2022, sec. 3) trained on the engine with
a squared-error reconstruction plus a small KL to N(0, I); after training, the latent scale factor 1/std of the
latents (Rombach et al. 2022, appendix G) is estimated and stored in the folder's config.json.

The loss per image is ||x - x_hat||^2 (summed over pixels, images in [-1, 1]) + kl_weight KL(q(z|x) || N(0, I)).
With kl_weight = 1e-3 this is, up to a constant, the negative ELBO of a Gaussian decoder of std sqrt(kl_weight / 2)
~ 0.022 (about 3 of 255 grey levels): the KL keeps the posterior's noise from collapsing and the latents
O(1), without blurring digits; per pixel it is 1e-3 / 784 ~ 1.3e-6, the order of LDM's 1e-6 on a per-pixel loss.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..errors import CheckpointError, UserError
from ..models.autoencoder import AutoencoderConfig, KLAutoencoder, autoencoder_for, gaussian_kl
from ..utils.config import require
from .checkpoint import CHECKPOINT, CONFIG, load_checkpoint, load_weights, read_folder_config, read_json, write_json
from .config import FitConfig
from .engine import Batch, Family, FitResult, OptimizerSpec, Phase, fit_into

AUTOENCODER_FORMAT = "difflab-autoencoder-1"
SCALE_EXAMPLES = 5000  # training examples whose latents set the scale factor (all of a smaller set)


@dataclasses.dataclass(frozen=True)
class AutoencoderTrainConfig(FitConfig):
    """Recipe of the autoencoder: latent shape (None: the preset), network overrides, KL weight and EMA."""

    latent: tuple[int, int, int] | None = None
    network: dict[str, Any] = dataclasses.field(default_factory=dict)  # AutoencoderConfig fields
    kl_weight: float = 1e-3
    ema_decay: float = 0.999
    steps: int = 5000
    warmup_steps: int = 100

    def check(self) -> None:
        super().check()
        n = "AutoencoderTrainConfig"
        if isinstance(self.latent, list):  # from JSON
            object.__setattr__(self, "latent", tuple(self.latent))
        require(self.latent is None or (len(self.latent) == 3 and all(isinstance(v, int) and v > 0 for v in self.latent)),
                f"{n}.latent must be (c, h, w) or null, got {self.latent!r}")
        known = {f.name for f in dataclasses.fields(AutoencoderConfig)} - {"shape", "latent"}
        unknown = sorted(set(self.network) - known)
        require(not unknown, f"{n}.network: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        require(self.kl_weight >= 0, f"{n}.kl_weight must be >= 0, got {self.kl_weight!r}")
        require(0 <= self.ema_decay < 1, f"{n}.ema_decay must lie in [0, 1), got {self.ema_decay!r}")

    def network_config(self, shape: tuple[int, ...]) -> AutoencoderConfig:
        """The AutoencoderConfig for images of ``shape``: the preset, this latent, then the overrides."""
        if len(shape) != 3:
            raise UserError(f"an autoencoder needs images; the data has examples of shape {tuple(shape)}")
        base = autoencoder_for(tuple(shape), self.latent)
        return AutoencoderConfig.from_dict({**base.to_dict(), **self.network})


def parse_latent(text: str) -> tuple[int, int, int]:
    """'4x7x7' -> (4, 7, 7); a UserError naming --latent otherwise."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"--latent must look like CxHxW (e.g. 4x7x7), got {text!r}")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


def autoencoder_loss(ae: KLAutoencoder, x: Tensor, eps: Tensor, kl_weight: float) -> dict[str, Tensor]:
    """Per-batch means: rec = ||x - x_hat||^2 per image with z = mean + sigma eps, kl in nats, and their sum."""
    x_hat, mean, logvar = ae(x, eps)
    rec = (x_hat - x).pow(2).flatten(1).sum(1).mean()
    kl = gaussian_kl(mean, logvar).mean()
    return {"loss": rec + kl_weight * kl, "rec_mse": (rec / x[0].numel()).detach(), "kl": kl.detach()}


class AutoencoderFamily(Family):
    """One KL autoencoder with an EMA; one phase minimising reconstruction + kl_weight KL."""

    name = "autoencoder"

    def __init__(self, cfg: AutoencoderTrainConfig, data: Dataset):
        if data.kind != "image":
            raise UserError(f"an autoencoder needs images; {data.spec} holds points")
        self.cfg, self.data = cfg, data
        self.ae = KLAutoencoder(cfg.network_config(data.shape))
        self.modules = {"model": self.ae}
        self.optimizers = {"model": OptimizerSpec(("model",))}
        self.ema = ("model",)
        self.phases = [Phase("model", self.loss)]

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        x = self.data.batch(batch.idx).to(batch.device)
        eps = batch.rng.randn((batch.n, *self.ae.config.latent)).to(batch.device)
        return autoencoder_loss(self.ae, x, eps, self.cfg.kl_weight)

    def preview(self, ema: dict[str, nn.Module], path: Path) -> None:
        save_reconstructions(ema["model"], self.data, path)

    def finish(self, run_dir: Path, ema: dict[str, nn.Module]) -> None:
        """The reconstructions picture, then the latent statistics and scale factor written into config.json."""
        ae = ema["model"]
        save_reconstructions(ae, self.data, run_dir / "reconstructions.png")
        rc = read_json(run_dir / CONFIG)
        rc.update(latent_statistics(ae, self.data))
        write_json(run_dir / CONFIG, rc)


def folder_config(cfg: AutoencoderTrainConfig, data: Dataset, ae: KLAutoencoder) -> dict[str, Any]:
    """The JSON of an autoencoder folder (the scale factor is added when training finishes)."""
    return {"format": AUTOENCODER_FORMAT, "family": "autoencoder", "data": data.spec, "shape": list(data.shape),
            "latent": list(ae.config.latent), "network": ae.config.to_dict(), "train": cfg.to_dict()}


@torch.no_grad()
def encode_means(ae: KLAutoencoder, data: Dataset, idx: Tensor | None = None, batch_size: int = 500) -> Tensor:
    """The posterior means of examples ``idx`` (default all) on the CPU, [N, c, h, w]."""
    idx = torch.arange(len(data)) if idx is None else idx
    dev = next(ae.parameters()).device
    was = ae.training
    ae.eval()
    out = [ae.encode(data.batch(idx[i:i + batch_size]).to(dev))[0].cpu() for i in range(0, len(idx), batch_size)]
    ae.train(was)
    return torch.cat(out) if out else torch.empty(0, *ae.config.latent)


def latent_statistics(ae: KLAutoencoder, data: Dataset, max_examples: int = SCALE_EXAMPLES) -> dict[str, Any]:
    """scale_factor = 1 / std of the posterior means over (up to max_examples seeded) training examples, with the
    latents' mean, the mean posterior std (how far from a deterministic code the encoder is) and decoder_std, the
    RMS reconstruction error of the first 1000 examples (the maximum-likelihood std of a Gaussian decoder)."""
    n = min(len(data), max_examples)
    idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:n] if n < len(data) else None
    z = encode_means(ae, data, idx).double()
    with torch.no_grad():
        dev = next(ae.parameters()).device
        sub = data.batch(torch.arange(min(len(data), 1000))).to(dev)
        mean, logvar = ae.encode(sub)
        post_std = float(torch.exp(0.5 * logvar).mean())
        rms = float((ae.decode(mean) - sub).pow(2).mean().sqrt())
    std = float(z.std())
    if not std > 0:
        raise UserError("the autoencoder's latents have zero variance; train it longer")
    return {"scale_factor": 1.0 / std, "latent_mean": float(z.mean()), "latent_std": std,
            "posterior_std": post_std, "scale_examples": n, "decoder_std": max(rms, 1.0 / 255)}


def save_reconstructions(ae: KLAutoencoder, data: Dataset, path: Path, n: int = 32) -> None:
    """Rows of originals above their reconstructions (from the posterior mean), clamped to [-1, 1]."""
    from ..utils.images import save_image_grid

    x = data.batch(torch.arange(min(n, len(data))))
    dev = next(ae.parameters()).device
    with torch.no_grad():
        x_hat = ae.decode(ae.encode(x.to(dev))[0]).clamp(-1, 1).cpu()
    rows = [t for i in range(0, len(x), 8) for t in (x[i:i + 8], x_hat[i:i + 8])]
    save_image_grid(torch.cat(rows), path, nrow=8)


def train_autoencoder(cfg: AutoencoderTrainConfig, data: Dataset, out: str | Path | None, *, resume: bool = False,
                      progress: bool = True) -> FitResult:
    """Train an autoencoder on images into ``out`` (config.json with the scale factor, checkpoint, pictures)."""
    torch.manual_seed(cfg.seed)
    family = AutoencoderFamily(cfg, data)
    config = folder_config(cfg, data, family.ae)
    if out is not None:
        out = Path(out)
        if resume:
            if not (out / CHECKPOINT).is_file():
                raise UserError(f"--resume: {out} holds no checkpoint to resume from")
            stored = read_json(out / CONFIG)
            if stored.get("data") != data.spec or stored.get("network") != config["network"]:
                raise UserError(f"--resume: {out} holds an autoencoder of another data set or shape")
        elif (out / CHECKPOINT).exists():
            raise UserError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        if resume:  # fit_into would write config.json; the engine resumes from the checkpoint
            from .engine import fit

            return fit(family, len(data), cfg, out, resume=True, progress=progress)
    return fit_into(family, len(data), cfg, out, config, progress=progress)


@dataclass
class LoadedAutoencoder:
    """A trained autoencoder folder: the model (EMA weights), its config, step and checkpoint fingerprint."""

    model: KLAutoencoder
    config: dict[str, Any]
    step: int
    sha256: str
    path: Path

    @property
    def scale_factor(self) -> float:
        return float(self.config["scale_factor"])

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images [B, C, H, W] in [-1, 1] -> scaled latents (posterior mean times scale_factor)."""
        dev = next(self.model.parameters()).device
        return self.model.encode(x.to(dev))[0] * self.scale_factor

    @torch.no_grad()
    def decode(self, z: Tensor, batch_size: int = 500) -> Tensor:
        """Scaled latents [B, c, h, w] -> images clamped to [-1, 1], on the CPU."""
        dev = next(self.model.parameters()).device
        out = [self.model.decode(z[i:i + batch_size].to(dev) / self.scale_factor).clamp(-1, 1).cpu()
               for i in range(0, len(z), batch_size)]
        return torch.cat(out)


def checkpoint_sha256(folder: Path) -> str:
    """The sha256 of folder/checkpoint.safetensors (the fingerprint a latent run records), first 16 hex digits."""
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def load_autoencoder(folder: str | Path, ema: bool = True, device: torch.device | str | None = None) -> LoadedAutoencoder:
    """Rebuild an autoencoder folder (EMA weights by default); CheckpointError naming the folder on any failure."""
    from .distributed import default_device

    folder = Path(folder)
    rc = read_folder_config(folder, AUTOENCODER_FORMAT, "autoencoder")
    if "scale_factor" not in rc:
        raise CheckpointError(f"{folder / CONFIG} has no latent scale factor: its training did not finish "
                              "(continue it with difflab train-autoencoder --resume)")
    try:
        model = KLAutoencoder(AutoencoderConfig.from_dict(rc["network"], where=str(folder / CONFIG)))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG}: cannot rebuild the autoencoder ({e})") from None
    sha = checkpoint_sha256(folder)
    ck = load_checkpoint(folder)
    load_weights(model, ck, "model", ema, folder)
    model.to(device or default_device()).eval().requires_grad_(False)
    return LoadedAutoencoder(model, rc, ck.step, sha, folder)


__all__ = ["AUTOENCODER_FORMAT", "AutoencoderTrainConfig", "AutoencoderFamily", "autoencoder_loss", "train_autoencoder",
           "load_autoencoder", "LoadedAutoencoder", "latent_statistics", "encode_means", "checkpoint_sha256",
           "parse_latent"]
