"""One entry point for likelihoods (``log_likelihood``) and a test-set summary with a confidence interval (``evaluate_nll``)."""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from ..models.denoiser import Denoiser
from ..schedules import DiscreteSchedule
from .bound import BoundTerms, ddpm_bound, vdm_bound
from .gaussian import LOG2
from .ode import ode_log_likelihood
from .variance import Variance

Method = Literal["ode", "elbo"]


def elbo_terms(model: Denoiser, x: Tensor, cond: Any = None, *, bins: int | None = None,
               variance: Variance = "beta_tilde", num_t: int | None = None, T: int | None = None,
               generator: torch.Generator | None = None) -> BoundTerms:
    """Terms of the negative bound: the DDPM bound for discrete schedules (``variance``, ``num_t`` steps or all),
    the VDM bound for continuous ones (``T``: the T-step L_T instead of L_inf; ``num_t`` draws of t, default 1)."""
    if isinstance(model.schedule, DiscreteSchedule):
        return ddpm_bound(model, x, cond, variance=variance, bins=bins, num_t=num_t, generator=generator)
    return vdm_bound(model, x, cond, bins=bins, T=T, num_t=num_t or 1, generator=generator)


def log_likelihood(model: Denoiser, x: Tensor, cond: Any = None, *, method: Method = "ode",
                   bins: int | None = None, generator: torch.Generator | None = None, **options: Any) -> Tensor:
    """log p(x) in nats per example [B]: exact via the probability-flow ODE (``method="ode"``: options ``trace``,
    ``probes``, ``rtol``, ``atol``) or the variational lower bound (``method="elbo"``: options ``variance``,
    ``num_t``, ``T``).  ``bins=256`` treats x as 8-bit data in [-1, 1] (log-probability of its bins)."""
    if method == "ode":
        return ode_log_likelihood(model, x, cond, bins=bins, generator=generator, **options)
    if method == "elbo":
        return -elbo_terms(model, x, cond, bins=bins, generator=generator, **options).nll
    raise ValueError(f"method must be 'ode' or 'elbo', got {method!r}")


def evaluate_nll(model: Denoiser, data_x: Tensor, method: Method = "elbo", *, batch_size: int = 256,
                 bins: int | None | Literal["auto"] = "auto", cond: Any = None, seed: int = 0,
                 **options: Any) -> dict[str, Any]:
    """Mean negative log-likelihood over a test set with a 95% confidence interval (normal approximation).

    Images (``data_x`` [N, C, H, W], bins 256 by default) are reported in bits/dim, other data in nats per
    example.  For ``method="elbo"`` the per-term means (prior, diffusion, reconstruction) are included.
    Returns a JSON-ready dict: method, unit, nll, ci95, std, n, dims and terms.
    """
    if bins == "auto":
        bins = 256 if data_x.ndim == 4 else None
    g = torch.Generator().manual_seed(seed)
    dims = data_x[0].numel()
    scale = 1.0 / (dims * LOG2) if bins else 1.0
    device = next(iter(model.parameters()), data_x).device if isinstance(model, torch.nn.Module) else data_x.device
    per, terms = [], {}
    for i in range(0, len(data_x), batch_size):
        xb = data_x[i: i + batch_size].to(device)
        if method == "elbo":
            bt = elbo_terms(model, xb, cond, bins=bins, generator=g, **options)
            for k, v in bt.as_dict().items():
                terms.setdefault(k, []).append(v.detach().double().cpu())
            per.append(bt.nll.detach().double().cpu())
        else:
            per.append(-log_likelihood(model, xb, cond, method=method, bins=bins, generator=g, **options).double().cpu())
    nll = torch.cat(per) * scale
    n = len(nll)
    std = float(nll.std()) if n > 1 else float("nan")
    out: dict[str, Any] = {"method": method, "unit": "bits/dim" if bins else "nats", "nll": float(nll.mean()),
                           "ci95": 1.96 * std / math.sqrt(n) if n > 1 else float("nan"), "std": std, "n": n,
                           "dims": dims}
    out["terms"] = {k: float(torch.cat(v).mean() * scale) for k, v in terms.items() if k != "nll"}
    return out


def format_nll(result: dict[str, Any]) -> str:
    """A one-line table row: method, NLL +- CI and the terms."""
    terms = "  ".join(f"{k} {v:.4f}" for k, v in result.get("terms", {}).items())
    return f"{result['method']:<5} {result['nll']:.4f} +- {result['ci95']:.4f} {result['unit']}  (n={result['n']})  {terms}"


__all__ = ["Method", "elbo_terms", "log_likelihood", "evaluate_nll", "format_nll"]
