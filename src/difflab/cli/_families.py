"""Report rows of runs that sample with their own sampler (every family but the denoiser family, whose runs are
swept over the --methods): what a row holds comes from the run's declared capabilities."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

#: Test examples the report's likelihood column is measured on (the bound, where the family has one).
REPORT_NLL_NUM = 500


def points_extras(x: torch.Tensor, spec: str) -> dict[str, float]:
    """For the 25-Gaussian grid: modes covered and the high-quality fraction (within 3 std of a centre)."""
    if spec != "toy:25gaussians":
        return {}
    from ..data.toy import GRID_STD, grid_centers
    from ..evaluation.modes import mode_coverage

    return mode_coverage(x, grid_centers(), GRID_STD)


def family_row(path: Path, run: Any, num: int, seed: int, score: Callable[[torch.Tensor], dict[str, float]],
               prefix: bool) -> dict[str, Any]:
    """The report row of a run with its own sampler: its samples scored, NFE, seconds per 1000, size, and the
    negative bound on test data where its family has one (a VAE's ELBO, the LSGM bound)."""
    from ..data import load

    x, secs = run.timed_sample(num, seed)
    row = {"method": path.name if prefix else run.label, "run": str(path), "family": run.family,
           "sampler": run.default_sampler or run.family, "steps": run.nfe, "nfe": run.nfe,
           "sec_per_1000": secs * 1000 / num, "params": run.num_params, "marker": run.marker, "own_sampler": True,
           **score(x)}
    if "elbo" in run.likelihood:  # the bound is cheap; an ODE likelihood belongs to `difflab evaluate --nll`
        test = load(run.config["data"], "test")
        row["nll"] = run.nll(test.batch(torch.arange(min(REPORT_NLL_NUM, len(test)))), seed, "elbo")["nll"]
    return row
