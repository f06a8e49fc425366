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

__all__ = ["PREFETCH_BYTES", "PREFETCH_SAMPLES", "PREFETCH_THREADS", "prefetched"]

#: Reads in flight per iterating process, at most.
PREFETCH_SAMPLES = 32
#: Bytes of those reads (as the index declares them), at most; one read is always allowed.
PREFETCH_BYTES = 64 << 20
#: Threads doing the reads.
PREFETCH_THREADS = 8

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
) -> Iterator[tuple[T, R]]:
    """``(item, read(item))`` for every item, in order, with reads running ahead of the consumer.

    An error of a read is raised when its item's turn comes. Closing the
    generator (or leaving it unfinished) cancels reads not yet started and
    waits for the running ones.
    """
    if max_samples <= 1 or threads <= 1:
        for item in items:
            yield item, read(item)
        return
    source = iter(items)
    pending: deque[tuple[T, int, Future[R]]] = deque()
    in_flight_bytes = 0
    exhausted = False
    held: tuple[T] | None = None  # an item taken from the source, waiting for room
    pool = ThreadPoolExecutor(threads, thread_name_prefix="dstore-prefetch")
    try:
        while True:
            while not exhausted and len(pending) < max_samples:
                if held is None:
                    try:
                        held = (next(source),)
                    except StopIteration:
                        exhausted = True
                        break
                n = max(0, size(held[0]))
                if pending and in_flight_bytes + n > max_bytes:
                    break
                pending.append((held[0], n, pool.submit(read, held[0])))
                in_flight_bytes += n
                held = None
            if not pending:
                return
            item, n, future = pending.popleft()
            in_flight_bytes -= n
            yield item, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
