"""A read-only, seekable binary file object over one file of a dataset.

Reads only the chunks that cover the bytes asked for. ``readinto`` decodes
a chunk the caller's buffer holds whole straight into that buffer (no copy
in between); the others go through a few decoded chunks kept per file. A
reader that goes on where its last read ended is sequential: the chunks of
the next ``READAHEAD_BYTES`` are read on the dataset's read-ahead threads.
"""

from __future__ import annotations

import bisect
import io
import os
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from dstore.mount.chunks import ChunkSource

__all__ = ["MEMORY_CHUNKS", "READAHEAD_BYTES", "RUN_BYTES", "DatasetFile"]

#: Decoded chunks kept per open file, so small reads within a chunk decode it once.
MEMORY_CHUNKS = 4
#: How far ahead of a sequential reader chunks are read (about 32 average chunks).
READAHEAD_BYTES = 8 << 20
#: Read-ahead asks for runs of consecutive chunks up to this size at once (one range request per data shard).
RUN_BYTES = 1 << 20


class DatasetFile(io.BufferedIOBase):
    """Read-only, seekable view of one file of a dataset."""

    def __init__(
        self,
        source: ChunkSource,
        leaves: list[tuple[bytes, int]],
        name: str,
        pool: Callable[[], ThreadPoolExecutor] | None = None,
        *,
        readahead_bytes: int = READAHEAD_BYTES,
    ) -> None:
        super().__init__()
        self._source = source
        self._digests = [d for d, _ in leaves]
        self._sizes = [s for _, s in leaves]
        self._starts: list[int] = []
        pos = 0
        for size in self._sizes:
            self._starts.append(pos)
            pos += size
        self._size = pos
        self._pos = 0
        self._last_end = 0  # where the previous read stopped: a read starting there is sequential
        self._memory: OrderedDict[int, bytes] = OrderedDict()
        # chunk index -> (the read of the run of chunks holding it, its place in the run)
        self._ahead: dict[int, tuple[Future[list[bytes]], int]] = {}
        self._pool = pool
        self._readahead_bytes = readahead_bytes
        self.name = name
        self._pid = os.getpid()

    @property
    def size(self) -> int:
        return self._size

    @property
    def mode(self) -> str:
        return "rb"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_open()
        if whence == os.SEEK_SET:
            pos = offset
        elif whence == os.SEEK_CUR:
            pos = self._pos + offset
        elif whence == os.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    # -- reading ----------------------------------------------------------------

    def readinto(self, buffer: Any) -> int:
        self._check_open()
        if self._pid != os.getpid():  # forked: the parent's read-aheads will never finish here
            self._ahead.clear()
            self._pid = os.getpid()
        view = memoryview(buffer).cast("B")
        pos = self._pos
        end = min(self._size, pos + len(view))
        if end <= pos:
            return 0
        sequential = pos == self._last_end
        if not sequential:
            self._forget_ahead(lambda i: True)  # jumped away: what was read ahead is not wanted now
        index = bisect.bisect_right(self._starts, pos) - 1
        done = 0
        while pos < end:
            if sequential:  # the window after this chunk loads concurrently, also within one large read
                self._read_ahead(index + 1)
            size = self._sizes[index]
            within = pos - self._starts[index]
            take = min(size - within, end - pos)
            if take == size and index not in self._memory and index not in self._ahead:
                self._source.read_into(self._digests[index], view[done : done + take])  # straight in
            else:
                view[done : done + take] = memoryview(self._chunk(index))[within : within + take]
            pos += take
            done += take
            if pos == self._starts[index] + size:
                index += 1
        self._pos = self._last_end = pos
        self._forget_ahead(lambda i: i < index)  # passed
        if sequential and pos < self._size:
            self._read_ahead(index)
        return done

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        left = max(0, self._size - self._pos)
        n = left if size is None or size < 0 else min(size, left)
        buf = bytearray(n)
        got = self.readinto(buf)
        return bytes(buf) if got == n else bytes(buf[:got])

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def readinto1(self, buffer: Any) -> int:
        return self.readinto(buffer)

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        for fut, _ in self._ahead.values():
            fut.cancel()
        self._ahead.clear()
        self._memory.clear()
        super().close()

    # -- chunks -----------------------------------------------------------------

    def _chunk(self, index: int) -> bytes:
        data = self._memory.get(index)
        if data is not None:
            self._memory.move_to_end(index)
            return data
        ahead = self._ahead.pop(index, None)
        data = None
        if ahead is not None:
            try:
                data = ahead[0].result()[ahead[1]]
            except Exception:
                data = None  # a read-ahead failed (or was cancelled): read it again here, errors and all
        if data is None:
            data = self._source.read(self._digests[index], self._sizes[index])
        self._memory[index] = data
        while len(self._memory) > MEMORY_CHUNKS:
            self._memory.popitem(last=False)
        return data

    def _read_ahead(self, index: int) -> None:
        """Start reading the chunks of the next ``READAHEAD_BYTES`` from ``index`` on, in runs of ``RUN_BYTES``."""
        if self._pool is None or self._readahead_bytes <= 0:
            return
        pool = None
        ahead = 0
        run: list[int] = []
        run_bytes = 0
        while True:
            more = index < len(self._sizes) and ahead < self._readahead_bytes
            wanted = more and index not in self._memory and index not in self._ahead
            if run and (not wanted or run_bytes + self._sizes[index] > RUN_BYTES):
                pool = pool or self._pool()
                leaves = [(self._digests[i], self._sizes[i]) for i in run]
                fut = pool.submit(self._source.read_run, leaves)
                for k, i in enumerate(run):
                    self._ahead[i] = (fut, k)
                run, run_bytes = [], 0
            if not more:
                return
            if wanted:
                run.append(index)
                run_bytes += self._sizes[index]
            ahead += self._sizes[index]
            index += 1

    def _forget_ahead(self, which: Callable[[int], bool]) -> None:
        for i in [i for i in self._ahead if which(i)]:
            self._ahead.pop(i)[0].cancel()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")
