"""Latent diffusion (Rombach et al. 2022): the diffusion family trained on scaled autoencoder latents.

The training images are encoded once each (lazily, when a batch first needs them) to their posterior means times the autoencoder's scale factor
(a deterministic code: with the small KL weight the posterior std is far below the latents' spread, so a sample
would only add noise).  The run's config.json records the autoencoder (its path, checkpoint sha256 and step, scale
factor); loading the run refuses a missing folder or a changed checkpoint.  Samplers work on latents unclamped;
``decode`` maps them to images and clamps those to [-1, 1].
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ..data import Dataset
from ..errors import CheckpointError, UserError
from .autoencoder import LoadedAutoencoder, checkpoint_sha256, load_autoencoder


#: The default noise schedule of a latent run: LDM's "scaled linear" table, betas from 0.00085 to 0.012 on a square-
#: root scale over T = 1000 (Rombach et al. 2022; Stable Diffusion), sigma_max = sigma / alpha = 14.6 at t = T.  The
#: pixel default (cosine, max_beta 0.999) reaches sigma_max ~ 2e4: an eps-model's x0 estimate (x - sigma eps) / alpha
#: then multiplies its eps error by 2e4, which clamping hides on pixels but nothing may clamp on latents.
LATENT_SCHEDULE = {"kind": "quadratic", "T": 1000, "beta_start": 0.00085, "beta_end": 0.012}
SIGMA_MAX_WARN = 100.0


def sigma_max(schedule: Any) -> float:
    """sigma / alpha at the schedule's t_max (the top of every sampler's grid)."""
    t = torch.tensor(float(schedule.t_max), dtype=torch.float64)
    a, s = schedule.alpha_sigma(t)
    return float(s / a) if float(a) > 0 else float("inf")


def autoencoder_record(ae: LoadedAutoencoder) -> dict[str, Any]:
    """What a latent run's config.json stores about its autoencoder."""
    return {"path": str(ae.path.resolve()), "sha256": ae.sha256, "step": ae.step, "scale_factor": ae.scale_factor,
            "latent": list(ae.config["latent"]), "shape": list(ae.config["shape"]), "data": ae.config["data"]}


class LatentDataset(Dataset):
    """The scaled latents of an image dataset, encoded lazily: each example once, when a batch first needs it
    (a short run never pays for encoding examples it does not reach), then cached; labels, captions and spec are the
    data's; text conditioning reads digit captions from ``images``, the pixels."""

    def __init__(self, ae: LoadedAutoencoder, data: Dataset):
        super().__init__(torch.zeros(len(data), *ae.config["latent"]), data.y, data.spec, data.class_names,
                         data.captions)
        self.ae, self.images = ae, data
        self.encoded = torch.zeros(len(data), dtype=torch.bool)

    def batch(self, idx: Tensor) -> Tensor:
        idx = torch.as_tensor(idx).cpu()
        todo = idx[~self.encoded[idx]].unique()
        if len(todo):
            self.stored[todo] = self.ae.encode(self.images.batch(todo)).cpu()
            self.encoded[todo] = True
        return self.stored[idx]

    @property
    def x(self) -> Tensor:
        return self.batch(torch.arange(len(self)))


def encode_dataset(ae: LoadedAutoencoder, data: Dataset) -> Dataset:
    """The data as scaled latents (posterior mean times the scale factor): those ``prepare-data --autoencoder``
    stored for a packed set (memory-mapped), else encoded lazily."""
    from ..data.packed import packed_latents

    if data.kind != "image" or tuple(data.shape) != tuple(ae.config["shape"]):
        raise UserError(f"--autoencoder {ae.path} encodes images of shape {tuple(ae.config['shape'])}, "
                        f"but {data.spec} holds examples of shape {tuple(data.shape)}")
    stored = packed_latents(data, ae.sha256)
    return stored if stored is not None else LatentDataset(ae, data)


def open_autoencoder(record: dict[str, Any], run_dir: str | Path | None = None,
                     device: torch.device | str | None = None) -> LoadedAutoencoder:
    """The autoencoder a latent run recorded; a CheckpointError if its folder is missing or its checkpoint changed."""
    where = f"latent run {run_dir}: " if run_dir is not None else ""
    path = Path(record.get("path", ""))
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{where}autoencoder folder {path} does not exist (or holds no config.json)")
    sha = checkpoint_sha256(path)
    if sha != record.get("sha256"):
        raise CheckpointError(f"{where}autoencoder {path} does not match the one it was trained with "
                              f"(checkpoint sha256 {sha}, recorded {record.get('sha256')}, step {record.get('step')})")
    return load_autoencoder(path, device=device)


def latent_decoder(record: dict[str, Any], run_dir: str | Path | None = None,
                   device: torch.device | str | None = None) -> Callable[[Tensor], Tensor]:
    """latents [B, c, h, w] -> images in [-1, 1] on the CPU, through the recorded autoencoder (checked first)."""
    return open_autoencoder(record, run_dir, device).decode


@torch.no_grad()
def latent_nll(model: Any, ae: LoadedAutoencoder, x: Tensor, *, seed: int = 0, num_t: int | None = 20,
               batch_size: int = 100) -> dict[str, Any]:
    """An upper bound on -log P(x) of 8-bit images x [N, C, H, W] in bits/dim through the encoder (Rombach et al.
    2022 train no likelihood; this is the VAE bound of Kingma & Welling 2014, eq. 3, with the diffusion prior):
    E_q[-log p(x|z) + log q(z|x) - log p(z)], one z ~ q(z|x) per image, where p(x|z) is the discretised Gaussian
    (Ho et al. 2020, eq. 13) around the decoder mean with the autoencoder's decoder_std (its RMS reconstruction
    error on training images), and -log p(z) <= the latent model's variational bound at s z, plus d log s.
    Returns the dict of :func:`difflab.likelihood.evaluate_nll` (nll, ci95, ..., terms in bits/dim)."""
    import math

    from ..likelihood import discretized_gaussian_log_likelihood, elbo_terms, sum_except_batch

    sigma = float(ae.config.get("decoder_std", 0.0))
    if not sigma > 0:
        raise UserError(f"{ae.path / 'config.json'} has no decoder_std (an autoencoder of an older format)")
    log_sigma = math.log(sigma)
    g = torch.Generator().manual_seed(seed)
    dev = next(ae.model.parameters()).device
    s, dims = ae.scale_factor, x[0].numel()
    terms: dict[str, list[Tensor]] = {"reconstruction": [], "log_q": [], "prior": []}
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        mean, logvar = ae.model.encode(xb)
        eps = torch.randn(mean.shape, generator=g).to(dev)
        z = mean + (0.5 * logvar).exp() * eps
        x_hat = ae.model.decode(z)
        terms["reconstruction"].append(-sum_except_batch(discretized_gaussian_log_likelihood(
            xb, x_hat, torch.full_like(xb, log_sigma), 256)).cpu())
        terms["log_q"].append(sum_except_batch(-0.5 * (math.log(2 * math.pi) + logvar + eps ** 2)).cpu())
        prior = elbo_terms(model, z * s, None, bins=None, num_t=num_t, generator=g).nll
        terms["prior"].append((prior - z[0].numel() * math.log(s)).cpu())
    per = {k: torch.cat(v).double() / (dims * math.log(2)) for k, v in terms.items()}
    nll = per["reconstruction"] + per["log_q"] + per["prior"]
    n = len(nll)
    std = float(nll.std()) if n > 1 else float("nan")
    return {"method": "latent_elbo", "unit": "bits/dim", "nll": float(nll.mean()),
            "ci95": 1.96 * std / math.sqrt(n) if n > 1 else float("nan"), "std": std, "n": n, "dims": dims,
            "terms": {k: float(v.mean()) for k, v in per.items()}, "decoder_std": math.exp(log_sigma)}


def check_resume(stored: dict[str, Any], ae: LoadedAutoencoder | None, run_dir: Path) -> None:
    """--resume: the run must continue with the autoencoder (or pixels) it started with."""
    before = stored.get("autoencoder")
    if (before is None) != (ae is None) or (before is not None and before.get("sha256") != ae.sha256):
        was = f"autoencoder {before['path']} (sha256 {before['sha256']})" if before else "pixels"
        now = f"autoencoder {ae.path} (sha256 {ae.sha256})" if ae is not None else "pixels"
        raise UserError(f"--resume: {run_dir} was trained on {was}, not {now}")


__all__ = ["LATENT_SCHEDULE", "sigma_max", "LatentDataset", "autoencoder_record", "encode_dataset", "open_autoencoder", "latent_decoder", "check_resume", "latent_nll"]
