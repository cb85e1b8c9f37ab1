"""LSGM (Vahdat, Kreis & Kautz 2021) as an engine family: a VAE (encoder q(z_0 | x), discretised Gaussian decoder
p(x | z)) whose prior is a score model over the latent, trained on the LSGM bound (difflab.likelihood.lsgm):
reconstruction + negative encoder entropy + the cross entropy by denoising score matching under the VP SDE
beta 0.1 -> 20 with t in [0.01, 1], t importance-sampled for the likelihood weighting, and the mixed score.

``update="joint"``: one optimizer over all three networks on the bound.  ``update="separate"`` (the paper's
disjoint update, sec. 3.4): the encoder and decoder minimise the bound (the prior's parameters are not stepped);
the prior has its own optimizer and minimises either the same likelihood-weighted DSM (``prior_weighting="ll"``)
or the unweighted eps loss ||n - eps_theta||^2 with t uniform (``"eps"``, the paper's reweighted objective for
sample quality), on latents of the current encoder held fixed.

Sampling: z_1 ~ N(0, I), the prior's probability-flow ODE from t = 1 to t_eps (adaptive Dormand-Prince through
torchdiffeq, or fixed Euler / Heun steps), then the decoder's mean.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..errors import UserError
from ..likelihood.gaussian import LOG2
from ..likelihood.lsgm import TimeSampling, dsm_cross_entropy, latent_gaussian, lsgm_bound, sample_time
from ..models.denoiser import Denoiser
from ..models.lsgm import LSGMNetConfig, build_lsgm_nets
from ..schedules import VP, GeometricVP
from ..utils.config import require
from .config import FitConfig
from .engine import Batch, Family, OptimizerSpec, Phase
from .gan import save_samples

LatentSampler = Literal["dopri5", "heun", "euler"]
LATENT_SAMPLERS = ("dopri5", "heun", "euler")


@dataclasses.dataclass(frozen=True)
class LSGMConfig(FitConfig):
    """Recipe of an LSGM run: networks (LSGMNetConfig fields), the VP SDE, t sampling, update mode and sampler."""

    network: dict[str, Any] = dataclasses.field(default_factory=dict)
    sde: Literal["vp", "geometric_vp"] = "vp"  # the latent SDE: linear-beta VP or LSGM's geometric VP
    beta_min: float = 0.1  # sde = vp
    beta_max: float = 20.0
    sigma2_min: float = 3e-5  # sde = geometric_vp: sigma^2(t) = sigma2_min (sigma2_max / sigma2_min)^t
    sigma2_max: float = 0.999
    t_eps: float = 0.01
    t_sampling: TimeSampling = "ll_iw"
    update: Literal["separate", "joint"] = "separate"
    prior_weighting: Literal["eps", "ll"] = "eps"  # separate update: the prior's own objective
    lr_prior: float = 0.0  # separate update: the prior's learning rate (0 = lr)
    ema_decay: float = 0.999
    warmup_steps: int = 100
    steps: int = 5000
    sampler: str = "dopri5"  # dopri5 / heun / euler to t_eps (sample_latent), or any difflab sampler (to sigma = 0)
    sample_steps: int = 20  # fixed-step samplers' steps
    rtol: float = 1e-5  # dopri5 tolerances (LSGM's 1e-5)
    atol: float = 1e-5

    def check(self) -> None:
        super().check()
        n = "LSGMConfig"
        known = {f.name for f in dataclasses.fields(LSGMNetConfig)} - {"shape"}
        unknown = sorted(set(self.network) - known)
        require(not unknown, f"{n}.network: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        require(0 < self.beta_min <= self.beta_max, f"{n} needs 0 < beta_min <= beta_max, got {self.beta_min!r}, "
                                                    f"{self.beta_max!r}")
        require(0 < self.t_eps < 1, f"{n}.t_eps must lie in (0, 1), got {self.t_eps!r}")
        require(self.sde in ("vp", "geometric_vp"), f"{n}.sde must be 'vp' or 'geometric_vp', got {self.sde!r}")
        require(0 < self.sigma2_min < self.sigma2_max < 1,
                f"{n} needs 0 < sigma2_min < sigma2_max < 1, got {self.sigma2_min!r}, {self.sigma2_max!r}")
        require(self.t_sampling in ("ll_iw", "logsnr", "uniform"),
                f"{n}.t_sampling must be ll_iw, logsnr or uniform, got {self.t_sampling!r}")
        require(self.update in ("separate", "joint"), f"{n}.update must be separate or joint, got {self.update!r}")
        require(self.prior_weighting in ("eps", "ll"), f"{n}.prior_weighting must be eps or ll, got {self.prior_weighting!r}")
        require(self.lr_prior >= 0 and math.isfinite(self.lr_prior), f"{n}.lr_prior must be >= 0, got {self.lr_prior!r}")
        require(0 <= self.ema_decay < 1, f"{n}.ema_decay must lie in [0, 1), got {self.ema_decay!r}")
        from ..samplers import SAMPLERS

        require(self.sampler in SAMPLERS, f"{n}.sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        self.require_ints(("sample_steps",), 1)
        require(self.rtol > 0 and self.atol > 0, f"{n}.rtol and atol must be > 0, got {self.rtol!r}, {self.atol!r}")

    def schedule(self) -> VP | GeometricVP:
        """The latent SDE on [t_eps, 1]: VP (Song et al. 2021, eq. 11) or geometric VP (Vahdat et al. 2021, sec. 3.4)."""
        if self.sde == "geometric_vp":
            return GeometricVP(self.sigma2_min, self.sigma2_max, t_min=self.t_eps, t_max=1.0)
        return VP(self.beta_min, self.beta_max, t_min=self.t_eps, t_max=1.0)


def _latent_noise(rng: Any, n: int, latent: tuple[int, ...], device: torch.device) -> dict[str, Tensor]:
    """The draws of one bound estimate: u_rec, u0, n (latent-shaped) and t_u [n]."""
    return {"u_rec": rng.randn((n, *latent)).to(device), "u0": rng.randn((n, *latent)).to(device),
            "n": rng.randn((n, *latent)).to(device), "t_u": rng.rand(n, torch.float64)}


def latent_grid(schedule: Any, sampler: str, steps: int) -> Tensor:
    """The levels sigma~ from t_max down to t_eps (no final 0): Karras rho = 7 with ``steps`` steps (Karras et al. 2022,
    eq. 5), or just the two ends for the adaptive dopri5."""
    lo, hi = (torch.tensor(float(v), dtype=torch.float64) for v in (schedule.t_min, schedule.t_max))
    sig_hi, sig_lo = (math.exp(-0.5 * float(schedule.log_snr(v))) for v in (hi, lo))
    if sampler == "dopri5":
        return torch.tensor([sig_hi, sig_lo], dtype=torch.float64)
    r = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    grid = (sig_hi ** (1 / 7) + r * (sig_lo ** (1 / 7) - sig_hi ** (1 / 7))) ** 7
    grid[0], grid[-1] = sig_hi, sig_lo
    return grid


@torch.no_grad()
def sample_latent(prior: Denoiser, z1: Tensor, sampler: LatentSampler = "dopri5", steps: int = 20, rtol: float = 1e-5,
                  atol: float = 1e-5) -> tuple[Tensor, int]:
    """(z at t_eps, network calls) from z_1 along the probability-flow ODE: the registry's dopri5 (adaptive in log sigma~),
    heun or euler on :func:`latent_grid`, a grid that stops at sigma~(t_eps) (no final step to 0)."""
    from ..samplers import sample

    if sampler not in LATENT_SAMPLERS:
        raise ValueError(f"sampler must be dopri5, heun or euler, got {sampler!r}")
    options = {"rtol": rtol, "atol": atol} if sampler == "dopri5" else {}
    grid = latent_grid(prior.schedule, sampler, steps)
    z, nfe = sample(prior, z1, sampler, grid=grid, return_nfe=True, **options)
    return z, nfe


class LSGMFamily(Family):
    """Encoder, decoder and score prior with EMAs; one joint phase, or a VAE phase and a prior phase."""

    name = "lsgm"
    recipe = LSGMConfig
    sampling_modules = ("decoder", "prior")
    likelihood = ("elbo", "ode")
    marker = "v"

    @classmethod
    def samplers(cls, recipe: LSGMConfig) -> tuple[str, ...]:
        """The latent ODE solvers to t_eps, then every scalar sampler over the prior as over any denoiser."""
        from ..samplers import names

        return (*LATENT_SAMPLERS, *(n for n in names() if n not in LATENT_SAMPLERS))

    @classmethod
    def with_sampler(cls, recipe: LSGMConfig, sampler: str | None, steps: int | None) -> LSGMConfig:
        changes = {k: v for k, v in (("sampler", sampler), ("sample_steps", steps)) if v is not None}
        return dataclasses.replace(recipe, **changes)

    @classmethod
    def nll(cls, modules: dict[str, nn.Module], cfg: LSGMConfig, x: Tensor, seed: int = 0,
            method: str | None = None) -> dict[str, Any]:
        """The LSGM bound on -log p(x) (Vahdat et al. 2021, eq. 8; :func:`lsgm_nll`)."""
        return lsgm_nll(modules, cfg, x, method=method or "elbo", seed=seed)

    def __init__(self, cfg: LSGMConfig, data: Dataset):
        if data.kind != "image":
            raise UserError(f"the lsgm family needs image data; {data.spec} holds {data.kind}")
        self.cfg, self.data = cfg, data
        self.modules = self.build(cfg, data.shape, 0)
        self.encoder, self.decoder, self.prior = (self.modules[k] for k in ("encoder", "decoder", "prior"))
        self.latent = self.decoder.latent_shape
        self.ema = ("encoder", "decoder", "prior")
        if cfg.update == "joint":
            self.optimizers = {"model": OptimizerSpec(("encoder", "decoder", "prior"))}
            self.phases = [Phase("model", self.bound_loss)]
        else:
            self.optimizers = {"vae": OptimizerSpec(("encoder", "decoder")),
                               "prior": OptimizerSpec(("prior",), lr=cfg.lr_prior or None)}
            self.phases = [Phase("vae", self.bound_loss), Phase("prior", self.prior_loss, minimize="prior_loss")]

    @staticmethod
    def net_config(cfg: LSGMConfig, shape: tuple[int, ...]) -> LSGMNetConfig:
        if len(shape) != 3:
            raise UserError(f"the lsgm family needs image data of shape (C, H, W), got {tuple(shape)}")
        return LSGMNetConfig.from_dict({"shape": tuple(shape), **cfg.network}, where="LSGMConfig.network")

    @classmethod
    def build(cls, cfg: LSGMConfig, shape: tuple[int, ...], num_classes: int) -> dict[str, nn.Module]:
        return build_lsgm_nets(cls.net_config(cfg, shape), cfg.schedule())

    def _bpd(self, nats: Tensor) -> Tensor:
        return nats / (self.data.shape[0] * self.data.shape[1] * self.data.shape[2] * LOG2)

    def bound_loss(self, batch: Batch) -> dict[str, Tensor]:
        """The LSGM negative bound in bits/dim ("loss") with its terms and the mean mixing coefficient."""
        x = self.data.batch(batch.idx).to(batch.device)
        out = lsgm_bound(self.encoder, self.decoder, self.prior, x, _latent_noise(batch.rng, batch.n, self.latent,
                                                                                  batch.device), self.cfg.t_sampling)
        self._posterior = (batch.step, batch.idx, out["mean"].detach(), out["logvar"].detach())  # for the prior phase
        return {"loss": self._bpd(out["nll"]).mean(), "rec_bpd": self._bpd(out["rec"]).mean().detach(),
                "ent_bpd": self._bpd(out["neg_entropy"]).mean().detach(), "ce_bpd": self._bpd(out["ce"]).mean().detach(),
                "mixing": self.prior.net.mixing().mean().detach()}

    def prior_loss(self, batch: Batch) -> dict[str, Tensor]:
        """The prior's own update on encoder latents held fixed: unweighted eps loss (t uniform) or the weighted DSM."""
        noise = _latent_noise(batch.rng, batch.n, self.latent, batch.device)
        cached = getattr(self, "_posterior", None)
        if cached is not None and cached[0] == batch.step and torch.equal(cached[1], batch.idx):
            mean, logvar = cached[2], cached[3]  # q(z_0 | x) of this step's VAE phase (the encoder before its update)
        else:
            with torch.no_grad():
                mean, logvar = self.encoder(self.data.batch(batch.idx).to(batch.device))
        if self.cfg.prior_weighting == "ll":
            ce = dsm_cross_entropy(self.prior, mean, logvar, noise["u0"], noise["n"], noise["t_u"], self.cfg.t_sampling)
            return {"prior_loss": self._bpd(ce).mean()}
        sched = self.prior.schedule
        t, _ = sample_time(sched, noise["t_u"], "uniform")
        t = t.to(batch.device)
        z0 = mean + torch.exp(0.5 * logvar) * noise["u0"]
        a, s = (v.to(z0.dtype)[:, None, None, None] for v in sched.alpha_sigma(t))
        err = (noise["n"] - self.prior.eps(a * z0 + s * noise["n"], t.to(z0.dtype))) ** 2
        return {"prior_loss": err.flatten(1).mean(1).mean()}

    @classmethod
    def nfe(cls, cfg: LSGMConfig) -> int:
        """Network calls per sample of the latent Euler / Heun; 0 otherwise (known once sampled)."""
        return {"euler": cfg.sample_steps, "heun": 2 * cfg.sample_steps - 1}.get(cfg.sampler, 0)  # Euler first step

    @classmethod
    @torch.no_grad()
    def draw(cls, modules: dict[str, nn.Module], cfg: LSGMConfig, n: int, generator: torch.Generator,
             y: Tensor | None = None) -> tuple[Tensor, int]:
        """(n images in [-1, 1], network calls): z_1 ~ N(0, I), the PF-ODE to t_eps, the decoder's mean.  Another
        difflab sampler (dpmpp_2m, ...) runs over the prior as over any denoiser and its final x_0 is decoded."""
        prior, decoder = modules["prior"], modules["decoder"]
        dev = next(decoder.parameters()).device
        z1 = torch.randn((n, *decoder.latent_shape), generator=generator).to(dev)
        if cfg.sampler in LATENT_SAMPLERS:
            z, nfe = sample_latent(prior, z1, cfg.sampler, cfg.sample_steps, cfg.rtol, cfg.atol)
        else:
            from ..samplers import sample

            z, nfe = sample(prior, z1, sampler=cfg.sampler, steps=cfg.sample_steps, generator=generator, return_nfe=True)
        return decoder(z).clamp(-1, 1).cpu(), nfe

    def preview(self, ema: dict[str, nn.Module], path: Path) -> None:
        x, _ = self.draw(ema, self.cfg, 64, torch.Generator().manual_seed(self.cfg.seed))
        save_samples(x, path, None, f"{self.data.spec}, lsgm")

    def finish(self, run_dir: Path, ema: dict[str, nn.Module]) -> None:
        self.preview(ema, run_dir / "samples.png")


@torch.no_grad()
def lsgm_nll(modules: dict[str, nn.Module], cfg: LSGMConfig, x: Tensor, *, method: Literal["elbo", "ode"] = "elbo",
             num_t: int = 16, seed: int = 0, batch_size: int = 250) -> dict[str, Any]:
    """The LSGM bound on -log p(x) in bits/dim over images x with a 95% interval over examples (normal approximation).

    ``elbo``: rec + neg_entropy + the DSM cross entropy, each example averaged over ``num_t`` draws of (z, t, n).
    ``ode``: rec + neg_entropy - log p(z_eps) with log p from the prior's probability-flow ODE (Hutchinson trace,
    rtol = atol = 1e-5), one z per example.  Returns the dict of difflab.likelihood.evaluate_nll.
    """
    from ..likelihood.ode import ode_log_likelihood

    enc, dec, prior = modules["encoder"], modules["decoder"], modules["prior"]
    dev = next(dec.parameters()).device
    g = torch.Generator().manual_seed(seed)
    dims = x[0].numel()
    scale = 1.0 / (dims * LOG2)
    per, terms = [], {"rec": [], "neg_entropy": [], "ce": []}
    latent = dec.latent_shape
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        B = len(xb)
        acc = {k: torch.zeros(B, dtype=torch.float64) for k in terms}
        draws = num_t if method == "elbo" else 1
        for _ in range(draws):
            noise = {k: torch.randn((B, *latent), generator=g).to(dev) for k in ("u_rec", "u0", "n")}
            noise["t_u"] = torch.rand(B, generator=g, dtype=torch.float64)
            out = lsgm_bound(enc, dec, prior, xb, noise, cfg.t_sampling)
            if method == "ode":
                m, v = latent_gaussian(prior.schedule, out["mean"], out["logvar"])
                z = m + v.sqrt() * noise["u_rec"]
                out["ce"] = -ode_log_likelihood(prior, z, generator=g)
            for k in terms:
                acc[k] += out[k].double().cpu() / draws
        for k in terms:
            terms[k].append(acc[k])
        per.append(sum(acc.values()))
    nll = torch.cat(per) * scale
    n = len(nll)
    std = float(nll.std()) if n > 1 else float("nan")
    return {"method": f"lsgm-{'dsm' if method == 'elbo' else 'ode'}", "unit": "bits/dim", "nll": float(nll.mean()),
            "ci95": 1.96 * std / math.sqrt(n) if n > 1 else float("nan"), "std": std, "n": n, "dims": dims,
            "terms": {k: float(torch.cat(v).mean() * scale) for k, v in terms.items()}}


__all__ = ["LSGMConfig", "LSGMFamily", "sample_latent", "lsgm_nll"]
