"""The order of samples in an epoch: shuffled from (seed, epoch), split over ranks, then over workers.

Samples are numbered in path order (and in shard order within a tar), which
is the order ``dstore add`` packs them in: neighbours in that order lie next
to each other in the same data shard.

1. **The epoch's order**, by ``shuffle``, from a ``torch.Generator`` seeded
   ``seed + epoch``:

   - ``"block"`` (the default, ``shuffle=True``): the samples are cut into
     blocks of ``block`` consecutive samples; the blocks are put in a random
     order (``torch.randperm``), and the samples of every ``window``
     consecutive blocks of that order are shuffled among themselves. Each
     window is a few data shards' worth of neighbouring samples, read with a
     few large range requests (dstore/torch/bulk.py), and within it every
     sample is shuffled against every other: the shuffle of WebDataset's
     shard shuffle plus shuffle buffer, or of Mosaic Streaming's block shuffles.
   - ``"uniform"``: ``torch.utils.data.DistributedSampler``'s order, a
     permutation of all ``n`` samples by ``torch.randperm``: every sample is
     shuffled against every other, and every sample is a read of its own.
   - ``"none"`` (``shuffle=False``): ``0..n-1``.

2. **Ranks.** With ``drop_last=False`` the order is padded to a multiple of
   the world size by repeating its first samples; with ``drop_last=True`` the
   remainder is dropped. All ranks get the same count. With ``"block"``, rank
   ``r`` takes the ``r``-th contiguous part (its own windows, so ranks never
   read the same shard bytes); with ``"uniform"`` and ``"none"`` it takes
   every world-size-th sample from ``r``, as DistributedSampler does.
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

__all__ = ["SHUFFLES", "Order", "shuffle_mode", "worker_positions"]

#: The orders an epoch can have (see the module docstring).
SHUFFLES = ("block", "uniform", "none")


def shuffle_mode(shuffle: bool | str) -> str:
    """``True`` is ``"block"``, ``False`` is ``"none"``; a name of :data:`SHUFFLES` is itself."""
    if shuffle is True:
        return "block"
    if shuffle is False:
        return "none"
    if isinstance(shuffle, str) and shuffle in SHUFFLES:
        return shuffle
    raise ValueError(f"shuffle={shuffle!r}: True, False or one of {', '.join(map(repr, SHUFFLES))}")


@dataclass(frozen=True)
class Order:
    """One rank's share of one epoch."""

    samples: int
    seed: int
    epoch: int
    shuffle: str
    rank: int
    world_size: int
    drop_last: bool
    block: int = 1
    window: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not in a world of size {self.world_size}")
        if self.shuffle not in SHUFFLES:
            raise ValueError(f"shuffle {self.shuffle!r} is not one of {SHUFFLES}")
        if self.block < 1 or self.window < 1:
            raise ValueError(f"shuffle blocks of {self.block} samples, windows of {self.window} blocks: both >= 1")

    @property
    def length(self) -> int:
        """Samples this rank sees in the epoch (the same for every rank)."""
        if self.drop_last:
            return self.samples // self.world_size
        return -(-self.samples // self.world_size)

    def _epoch_order(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The whole epoch's order, and (block shuffle) the index of each position's window."""
        n = self.samples
        if self.shuffle == "none":
            return torch.arange(n), None
        if n == 0:
            return torch.arange(0), torch.arange(0) if self.shuffle == "block" else None
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        if self.shuffle == "uniform":
            return torch.randperm(n, generator=g), None
        blocks = -(-n // self.block)
        starts = torch.randperm(blocks, generator=g) * self.block
        lengths = torch.clamp(n - starts, max=self.block)  # the last block of the dataset may be short
        begins = torch.cumsum(lengths, 0) - lengths
        within = torch.arange(n) - torch.repeat_interleave(begins, lengths)
        by_block = torch.repeat_interleave(starts, lengths) + within
        windows = torch.repeat_interleave(torch.arange(blocks) // self.window, lengths)
        # Shuffle within each window: sort by (window, a random key). float64 keys in [0, 1) added to a
        # window index below 2**40 stay distinct and ordered.
        keys = windows.to(torch.float64) + torch.rand(n, generator=g, dtype=torch.float64)
        perm = torch.argsort(keys, stable=True)
        return by_block[perm], windows[perm]

    def _padded(self, t: torch.Tensor) -> torch.Tensor:
        n, total = self.samples, self.length * self.world_size
        if total > n and n:  # pad by repeating from the start, as many times as it takes
            return torch.cat([t] * (total // n) + [t[: total % n]])
        return t[:total]

    def _mine(self, t: torch.Tensor) -> torch.Tensor:
        if self.shuffle == "block":
            return t[self.rank * self.length : (self.rank + 1) * self.length]
        return t[self.rank : self.length * self.world_size : self.world_size]

    def sequence(self) -> torch.Tensor:
        """Indices (into the sorted samples) of this rank's sequence, in order."""
        return self.sequence_and_windows()[0]

    def sequence_and_windows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This rank's sequence, and (block shuffle) for each of its positions the shuffle window it is from.

        A reader reads the samples of one window together; a padded repeat counts as windows of its own.
        """
        order, windows = self._epoch_order()
        mine = self._mine(self._padded(order))
        if windows is None:
            return mine, None
        n, total = self.samples, self.length * self.world_size
        if total > n:
            last = int(windows.max()) + 1
            windows = torch.cat([windows + last * r for r in range(total // n + 1)])
        return mine, self._mine(windows[:total])


def worker_positions(start: int, length: int, batch_size: int, worker: int, workers: int) -> Iterator[int]:
    """Positions in a rank's sequence that ``worker`` of ``workers`` yields, resuming at ``start``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    first = start + worker * batch_size
    for batch_start in range(first, length, batch_size * workers):
        yield from range(batch_start, min(batch_start + batch_size, length))
