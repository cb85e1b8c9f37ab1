"""A seed per sample: sample i's random numbers come from its own generator seeded by (seed, i) (as EDM's
generate.py, Karras et al. 2022), so a sample does not depend on the batch, the process or the device that draws it."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor


def sample_seed(seed: int, i: int) -> int:
    """The seed of sample i's generator: a function of (seed, i) only."""
    return int(np.random.SeedSequence([seed, i]).generate_state(1, dtype=np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF)


class PerSample:
    """A generator per sample of a batch (EDM's stacked generators): every draw is the stack of each sample's own
    draw, made on the CPU and moved to the device, so the numbers do not depend on the batch or the device.
    Samplers accept it wherever they take a ``generator`` (``samplers._common.randn_like``)."""

    def __init__(self, seed: int, indices: Sequence[int]):
        self.indices = [int(i) for i in indices]
        self.generators = [torch.Generator().manual_seed(sample_seed(seed, i)) for i in self.indices]

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> Tensor:
        """Standard normal [n, *shape[1:]], row j from sample j's generator."""
        if shape[0] != len(self.generators):
            raise ValueError(f"a draw for {shape[0]} rows from the generators of {len(self.generators)} samples")
        rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in self.generators]
        return torch.stack(rows).to(device) if device is not None else torch.stack(rows)

    def prior(self, schedule: Any, shape: Sequence[int], device: torch.device | str | None = None) -> Tensor:
        """x_T [n, *shape] from the schedule's prior, sample j's from its own generator."""
        return torch.cat([schedule.sample_prior((1, *shape), generator=g) for g in self.generators]).to(device)


__all__ = ["sample_seed", "PerSample"]
