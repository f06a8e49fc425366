"""The order of samples in an epoch: shuffled from (seed, epoch), split over ranks, then over workers.

1. **The epoch's order** is that of ``torch.utils.data.DistributedSampler``:
   a permutation of the ``n`` samples by ``torch.randperm`` with a generator
   seeded ``seed + epoch`` (or ``0..n-1`` without shuffle).
2. **Ranks.** With ``drop_last=False`` the order is padded to a multiple of
   the world size by repeating its first samples; with ``drop_last=True`` the
   remainder is dropped. Rank ``r`` takes every world-size-th sample from
   ``r``: all ranks get the same count.
3. **Workers.** A rank's sequence, from the position it resumes at, is cut
   into batches of ``batch_size``; worker ``w`` of ``W`` takes batches
   ``w, w + W, w + 2W, …``. DataLoader hands batches to the training loop
   round-robin over its workers (``in_order=True``, the default), so the loop
   receives the rank's sequence in order, whatever the number of workers, and
   ``k`` samples consumed means exactly the first ``k`` from the resume position.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["Order", "worker_positions"]


@dataclass(frozen=True)
class Order:
    """One rank's share of one epoch."""

    samples: int
    seed: int
    epoch: int
    shuffle: bool
    rank: int
    world_size: int
    drop_last: bool

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of size {self.world_size}")

    @property
    def length(self) -> int:
        """Samples this rank sees in the epoch (the same for every rank)."""
        if self.drop_last:
            return self.samples // self.world_size
        return -(-self.samples // self.world_size)

    def sequence(self) -> torch.Tensor:
        """Indices (into the sorted samples) of this rank's sequence, in order."""
        n = self.samples
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        total = self.length * self.world_size
        if total > n:  # pad by repeating from the start, as many times as it takes
            order = torch.cat([order] * (total // n) + [order[: total % n]]) if n else order
        return order[self.rank : total : self.world_size]


def worker_positions(start: int, length: int, batch_size: int, worker: int, workers: int) -> Iterator[int]:
    """Positions in a rank's sequence that ``worker`` of ``workers`` yields, resuming at ``start``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    first = start + worker * batch_size
    for batch_start in range(first, length, batch_size * workers):
        yield from range(batch_start, min(batch_start + batch_size, length))
