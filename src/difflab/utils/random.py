"""Random draws of a batch that may be split across processes or micro-batches.

Every draw is made for the whole global batch from one generator and then sliced to this part's rows, so a
batch split over N processes (or K gradient-accumulation micro-batches) sees exactly the numbers that one
process drawing the whole batch sees: N processes reproduce 1 process.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


class BatchRandom:
    """Draws for rows [lo, hi) of a global batch of ``total`` examples from ``generator`` (None: torch's global RNG)."""

    def __init__(self, generator: torch.Generator | None, lo: int = 0, hi: int | None = None,
                 total: int | None = None):
        total = total if total is not None else hi
        if total is None or hi is None or not 0 <= lo < hi <= total:
            raise ValueError(f"need 0 <= lo < hi <= total, got lo={lo}, hi={hi}, total={total}")
        self.generator, self.lo, self.hi, self.total = generator, lo, hi, total

    @property
    def n(self) -> int:
        """Rows of this part."""
        return self.hi - self.lo

    def _check(self, n: int) -> None:
        if n != self.n:
            raise ValueError(f"a draw for {n} rows from a batch part of {self.n} rows")

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> Tensor:
        """Standard normal [n, *shape[1:]]."""
        self._check(shape[0])
        return torch.randn((self.total, *shape[1:]), generator=self.generator, dtype=dtype)[self.lo:self.hi]

    def rand(self, shape: Sequence[int] | int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Uniform on [0, 1), [n, *shape[1:]]."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self._check(shape[0])
        return torch.rand((self.total, *shape[1:]), generator=self.generator, dtype=dtype)[self.lo:self.hi]

    def randint(self, high: int, n: int) -> Tensor:
        """Integers uniform on 0..high-1, [n]."""
        self._check(n)
        return torch.randint(0, high, (self.total,), generator=self.generator)[self.lo:self.hi]

    def multinomial(self, p: Tensor, n: int) -> Tensor:
        """Indices drawn with replacement with probabilities p, [n]."""
        self._check(n)
        return torch.multinomial(p, self.total, replacement=True, generator=self.generator)[self.lo:self.hi]

    def antithetic(self, n: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """One uniform draw shifted over an even grid of the global batch, (u + k / total) mod 1 (Kingma et al. 2021)."""
        self._check(n)
        u = torch.rand(1, generator=self.generator, dtype=dtype)
        return ((u + torch.arange(self.total, dtype=dtype) / self.total) % 1.0)[self.lo:self.hi]


def batch_random(generator: torch.Generator | BatchRandom | None, n: int) -> BatchRandom:
    """The draws of an n-row batch: ``generator`` itself if it is a BatchRandom (of n rows), else the whole batch."""
    if isinstance(generator, BatchRandom):
        generator._check(n)
        return generator
    return BatchRandom(generator, 0, n, n)


__all__ = ["BatchRandom", "batch_random"]
