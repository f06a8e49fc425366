"""Read files as segments for the chunker, into two reused buffers.

The chunker leaves a tail (less than one maximum chunk) at the end of every
segment but the last; the tail is moved in front of the next segment, which a
reader thread has meanwhile read into the other buffer. Buffers are reused
from file to file: fresh memory for every segment costs page faults that are
a large part of the work on this path.
"""

from __future__ import annotations

import io
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor

from dstore.store.shards import read_full


class SegmentReader:
    """Double-buffered segment reader; one per add, reused for every file."""

    def __init__(self, segment_bytes: int, tail_bytes: int) -> None:
        self.segment_bytes = segment_bytes
        self.tail_bytes = tail_bytes  # room reserved in front for the previous tail
        self._views = [memoryview(bytearray(tail_bytes + segment_bytes)) for _ in range(2)]
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="dstore-read")

    def segments(self, f: io.RawIOBase | io.BufferedIOBase) -> Generator[tuple[memoryview, bool], int, None]:
        """Yield ``(segment, final)``; send back how many bytes the chunker consumed."""
        keep, size = self.tail_bytes, self.segment_bytes
        cur, nxt = self._views
        n = read_full(f, cur[keep:])
        start = keep
        pending: Future[int] | None = None
        try:
            while True:
                final = n < size
                if not final:
                    pending = self._pool.submit(read_full, f, nxt[keep:])
                consumed = yield cur[start : keep + n], final
                if final:
                    return
                tail = keep + n - (start + consumed)
                if not 0 <= tail <= keep:
                    raise ValueError(f"chunker left a tail of {tail} bytes, more than {keep}")
                assert pending is not None
                n, pending = pending.result(), None
                nxt[keep - tail : keep] = cur[start + consumed : start + consumed + tail]
                start = keep - tail
                cur, nxt = nxt, cur
        finally:
            if pending is not None:  # never reuse a buffer a read is still filling
                pending.cancel() or pending.exception()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
