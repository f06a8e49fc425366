"""Read the next samples' bytes in the background, in order, within a bound on count and bytes.

A worker that asked the network for one file at a time would spend most of
its time waiting; this keeps up to ``max_samples`` reads (and ``max_bytes``
of them, by the sizes the index declares) in flight on a few threads, and
hands results back in the order asked. One read is always allowed, however
large. The pool is made in the process that iterates (a DataLoader worker),
never inherited across a fork.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["GROUP_THREADS", "PREFETCH_BYTES", "PREFETCH_SAMPLES", "PREFETCH_THREADS", "grouped", "prefetched"]

#: Samples read ahead per iterating process, at most.
PREFETCH_SAMPLES = 1024
#: Bytes of those samples (as the metadata declares them), at most; one read is always allowed.
PREFETCH_BYTES = 24 << 20
#: Threads doing reads of one sample each (datasets read from gateways).
PREFETCH_THREADS = 8
#: Threads reading groups of samples (each group's range requests run on threads of their own).
GROUP_THREADS = 4

T = TypeVar("T")
R = TypeVar("R")


def prefetched(
    items: Iterable[T],
    read: Callable[[T], R],
    size: Callable[[T], int],
    *,
    max_samples: int = PREFETCH_SAMPLES,
    max_bytes: int = PREFETCH_BYTES,
    threads: int = PREFETCH_THREADS,
    count: Callable[[T], int] | None = None,
) -> Iterator[tuple[T, R]]:
    """``(item, read(item))`` for every item, in order, with reads running ahead of the consumer.

    At most ``max_samples`` (counted by ``count``, default one per item) and ``max_bytes`` (by
    ``size``) are in flight; one item always is. An error of a read is raised when its item's turn
    comes. Closing the generator (or leaving it unfinished) cancels reads not yet started and
    waits for the running ones.
    """
    if max_samples <= 1 or threads <= 1:
        for item in items:
            yield item, read(item)
        return
    source = iter(items)
    pending: deque[tuple[T, int, int, Future[R]]] = deque()
    in_flight_bytes = 0
    in_flight_samples = 0
    exhausted = False
    held: tuple[T] | None = None  # an item taken from the source, waiting for room
    pool = ThreadPoolExecutor(threads, thread_name_prefix="dstore-prefetch")
    try:
        while True:
            while not exhausted and in_flight_samples < max_samples:
                if held is None:
                    try:
                        held = (next(source),)
                    except StopIteration:
                        exhausted = True
                        break
                n = max(0, size(held[0]))
                c = 1 if count is None else max(1, count(held[0]))
                if pending and (in_flight_bytes + n > max_bytes or in_flight_samples + c > max_samples):
                    break
                pending.append((held[0], n, c, pool.submit(read, held[0])))
                in_flight_bytes += n
                in_flight_samples += c
                held = None
            if not pending:
                return
            item, n, c, future = pending.popleft()
            in_flight_bytes -= n
            in_flight_samples -= c
            yield item, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def grouped(
    items: Iterable[T],
    key: Callable[[T], object],
    size: Callable[[T], int],
    *,
    max_items: int,
    max_bytes: int,
) -> Iterator[list[T]]:
    """Runs of consecutive items with the same ``key``, each cut at ``max_items`` items and ``max_bytes``
    (by ``size``; a group holds at least one item)."""
    group: list[T] = []
    group_key: object = None
    group_bytes = 0
    for item in items:
        k, n = key(item), max(0, size(item))
        if group and (k != group_key or len(group) >= max_items or group_bytes + n > max_bytes):
            yield group
            group, group_bytes = [], 0
        group.append(item)
        group_key = k
        group_bytes += n
    if group:
        yield group
