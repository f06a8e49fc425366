"""A read-only, seekable binary file object over one file of a dataset.

Reads only the chunks that cover the bytes asked for. ``readinto`` reads the
whole chunks the caller's buffer holds as runs (one pread or range request
per data shard, one native decode for the run) straight into that buffer;
chunks it holds only part of go through a few decoded chunks kept per file.
A reader that goes on where its last read ended is sequential, and stays
so while its reads start near where the last ended (the kernel's read-ahead
for a mount sends reads slightly out of order): the
chunks of the next ``READAHEAD_BYTES`` are read on the dataset's read-ahead
threads, in runs of ``AHEAD_RUN_BYTES``, each started only once. A run asks
for all its range requests at once (``ChunkSource.read_chunks``); its chunks
stay views of the range answers until the reader copies them out.

A sequential reader of the local store instead decodes straight from the
data shards, mapped (:mod:`dstore.mount.mapped`); its small reads (a
mount's) copy out of runs decoded into two reused buffers, the next run
decoded meanwhile on a helper thread of the file (docs/training.md, "A
sequential reader of the local store").
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
from dstore.mount.mapped import MappedPacks

__all__ = ["AHEAD_RUN_BYTES", "MEMORY_CHUNKS", "NEAR_BYTES", "READAHEAD_BYTES", "RUN_BYTES", "DatasetFile"]

#: Decoded chunks kept per open file, so small reads within a chunk decode it once (and a sequential
#: reader without read-ahead threads keeps the run it read last).
MEMORY_CHUNKS = 64
#: How far ahead of a sequential reader chunks are read, from peers (about five packs of 10 MiB).
READAHEAD_BYTES = 48 << 20
#: Read-ahead asks for runs of consecutive chunks up to this size at once: one range request per data shard
#: they lie in (a pack and a half's), all sent together; three runs are in flight at a time.
AHEAD_RUN_BYTES = 16 << 20
#: A random read, and a sequential local reader's small reads, decode runs of up to this size at once.
RUN_BYTES = 2 << 20
#: A read starting this close to where the last one ended is still sequential.
NEAR_BYTES = 2 << 20
#: A sequential local reader reading less than this at a time reads the chunks ahead in runs of RUN_BYTES
#: into memory (then copies them out); one reading more takes whole chunks straight into its buffer.
WINDOW_READ_BYTES = 512 << 10
#: A sequential local reader maps the data shards it reads once its reads in a row span this much: mapping the
#: k shards of a pack costs more than reading a small file's chunks (or a few reads') with ``pread``.
MAP_FROM_BYTES = 2 << 20


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
        self._last_end = 0  # where the sequential reads got to: a read starting near it is sequential too
        self._memory: OrderedDict[int, memoryview] = OrderedDict()
        # chunk index -> (the read of the run of chunks holding it: each chunk's bytes, its place in the run)
        self._ahead: dict[int, tuple[Future[list[memoryview]], int]] = {}
        self._ahead_end = 0  # chunks before this index have had their read-ahead started (or were passed)
        self._streaming = False  # the last read was sequential
        self._pool = pool
        self._readahead_bytes = readahead_bytes
        self._maps: MappedPacks | None = None  # a sequential local reader's mapped packs
        self._blocks: list[bytearray] = []  # two buffers, taken in turn, that partly read chunks are decoded into
        self._read_bytes = 0  # the size of the last read
        self._window: memoryview | None = None  # the chunks decoded last into memory, back to back
        self._window_start = 0  # where in the file they start
        self._window_stop_index = -1  # the chunk after them
        self._stream_start = 0  # where the reads in a row that led here began
        self._read_end = 0  # where the read under way ends
        self._helper: ThreadPoolExecutor | None = None  # decodes a small reader's next run meanwhile
        self._next: tuple[int, int, memoryview, Future[None]] | None = None  # that run: first, stop, buffer
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
            self._ahead_end = 0
            self._next = self._helper = None  # nor its helper thread's decode (nor its lock)
            self._maps = None  # the parent's mappings stay the parent's to close
            self._pid = os.getpid()
        view = memoryview(buffer).cast("B")
        pos = self._pos
        end = min(self._size, pos + len(view))
        if end <= pos:
            return 0
        window = self._from_window(end - pos)
        if window is not None:
            view[: end - pos] = window
            return end - pos
        self._read_bytes = len(view)
        self._read_end = end
        sequential = self._goes_on(pos)
        if not sequential:
            self._forget_ahead(lambda i: True)  # jumped away: what was read ahead is not wanted now
            self._ahead_end = 0
        index = bisect.bisect_right(self._starts, pos) - 1
        if not sequential:
            last = bisect.bisect_right(self._starts, end - 1) - 1
            small = self._starts[last] + self._sizes[last] - self._starts[index] <= RUN_BYTES  # a big read: straight in
            if last > index and small and all(i not in self._memory for i in range(index, last + 1)):
                return self._random_run(view, pos, end, index, last)
        done = 0
        while pos < end:
            if sequential:  # the window after this chunk loads concurrently, also within one large read
                self._read_ahead(index + 1)
            size = self._sizes[index]
            within = pos - self._starts[index]
            take = min(size - within, end - pos)
            if take == size and index not in self._memory and index not in self._ahead and not self._in_next(index):
                last = self._whole_run(index, end)
                n = self._starts[last] + self._sizes[last] - pos
                leaves = [(self._digests[i], self._sizes[i]) for i in range(index, last + 1)]
                self._source.read_run_into(leaves, view[done : done + n], self._local_maps() if sequential else None)
                pos += n
                done += n
                index = last + 1
                continue
            view[done : done + take] = self._chunk(index)[within : within + take]
            pos += take
            done += take
            if pos == self._starts[index] + size:
                index += 1
        self._pos = pos
        self._last_end = max(self._last_end, pos) if sequential else pos
        self._forget_ahead(lambda i: i < index)  # passed
        if sequential and pos < self._size:
            self._read_ahead(index)
        return done

    def readinto_at(self, offset: int, view: memoryview) -> int:
        """``seek(offset)`` then ``readinto(view)`` (``view`` a memoryview of bytes), in one copy for a mount's
        small reads in a row: a read starting exactly where the last ended, inside the window, skips the checks
        and the walk (the window is only ever set for a local reader, and cleared on close)."""
        window = self._window
        at = offset - self._window_start
        n = len(view)
        if window is not None and offset == self._last_end and at >= 0 and 0 < n <= len(window) - at:
            view[:] = window[at : at + n]
            self._pos = self._last_end = offset + n
            self._read_bytes = n
            self._streaming = True
            return n
        self.seek(offset)
        return self.readinto(view)

    def _from_window(self, n: int) -> memoryview | None:
        """The next ``n`` bytes if they all lie in the chunks decoded last into memory (a mount's small reads
        in a row: no walk over the chunks they cover); the position moves past them."""
        pos, window = self._pos, self._window
        at = pos - self._window_start
        if window is None or n <= 0 or at < 0 or at + n > len(window) or self._pool is not None:
            return None
        sequential = self._goes_on(pos)
        self._pos = pos + n
        self._last_end = max(self._last_end, pos + n) if sequential else pos + n
        self._read_bytes = n
        return window[at : at + n]

    def _goes_on(self, pos: int) -> bool:
        """Whether a read at ``pos`` is sequential: exactly where the last read ended, or near it once reading
        is sequential (a mount's reads come slightly out of order). A first read somewhere else is a random
        read: it starts no read-ahead, and a new run of reads in a row."""
        sequential = pos == self._last_end or (self._streaming and abs(pos - self._last_end) <= NEAR_BYTES)
        self._streaming = sequential
        if not sequential:
            self._stream_start = pos
        return sequential

    def _random_run(self, view: memoryview, pos: int, end: int, first: int, last: int) -> int:
        """A random read over several chunks: all of them in one run (one request per data shard, not one per
        chunk); the chunks at its two ends are kept, for the reads that often follow inside them."""
        block = memoryview(self._read_run(first, last + 1))
        base = self._starts[first]
        view[: end - pos] = block[pos - base : end - base]
        for i in (first, last):
            at = self._starts[i] - base
            self._remember(i, block[at : at + self._sizes[i]])
        self._pos = self._last_end = end
        return end - pos

    def _in_next(self, index: int) -> bool:
        return self._next is not None and self._next[0] <= index < self._next[1]

    def _whole_run(self, index: int, end: int) -> int:
        """The last chunk of the run from ``index`` on that ends by ``end`` and was not read already."""
        last = index
        while (
            last + 1 < len(self._sizes)
            and self._starts[last + 1] + self._sizes[last + 1] <= end
            and last + 1 not in self._memory
            and last + 1 not in self._ahead
            and not self._in_next(last + 1)
        ):
            last += 1
        return last

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        left = max(0, self._size - self._pos)
        n = left if size is None or size < 0 else min(size, left)
        window = self._from_window(n)
        if window is not None:
            return bytes(window)  # one copy (a mount's reads), not a zeroed buffer copied again
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
        if self._pid == os.getpid():
            self._settle()
            if self._helper is not None:
                self._helper.shutdown()
            if self._maps is not None:
                self._maps.close()
        self._next = self._helper = self._maps = None  # a forked child leaves the parent's alone
        self._memory.clear()
        self._blocks.clear()
        self._window = None
        super().close()

    # -- chunks -----------------------------------------------------------------

    def _chunk(self, index: int) -> memoryview:
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
        if data is None and self._streaming and self._pool is None:
            # Sequential, local. Small reads (a mount's): the chunks up to RUN_BYTES on in one decode, not one
            # by one (each read holds a part of a chunk at each end); once it reads on past such a run, the next
            # is decoded meanwhile on a helper thread. Large reads take their whole chunks straight into the
            # caller's buffer: only the chunk at their end is decoded into memory.
            small = self._read_bytes < WINDOW_READ_BYTES
            got = self._take_next(index)
            follows = got is not None or index == self._window_stop_index
            if got is None:
                stop = self._window_stop(index) if small else index + 1
                got = self._decode_to_memory(index, stop), index, stop
            block, first, stop = got
            for i in range(first, stop):
                at = self._starts[i] - self._starts[first]
                self._remember(i, block[at : at + self._sizes[i]])
            data = self._memory.pop(index)
            self._window_stop_index = stop
            if small and follows and stop < len(self._sizes):
                self._decode_next(stop)
        if data is None:
            data = memoryview(self._source.read(self._digests[index], self._sizes[index]))
        self._remember(index, data)
        return data

    def _remember(self, index: int, data: memoryview) -> None:
        self._memory[index] = data
        while len(self._memory) > MEMORY_CHUNKS:
            self._memory.popitem(last=False)

    def _read_ahead(self, index: int) -> None:
        """Start reading the chunks of the ``READAHEAD_BYTES`` from ``index`` on, in runs of ``AHEAD_RUN_BYTES``
        (only those not started already: each chunk's read-ahead starts once)."""
        if self._pool is None or self._readahead_bytes <= 0 or index >= len(self._sizes):
            return
        limit = self._starts[index] + self._readahead_bytes
        i = max(index, self._ahead_end)
        if i > index and i < len(self._sizes) and self._starts[i] + AHEAD_RUN_BYTES > limit and limit < self._size:
            return  # less than a run's worth of new room in the window: wait for more (runs, not single chunks)
        pool = None
        run: list[int] = []
        run_bytes = 0
        while True:
            more = i < len(self._sizes) and self._starts[i] < limit
            wanted = more and i not in self._memory and i not in self._ahead
            if run and (not wanted or run_bytes + self._sizes[i] > AHEAD_RUN_BYTES):
                pool = pool or self._pool()
                fut = pool.submit(self._fetch_run, run[0], run[-1] + 1)
                for k in run:
                    self._ahead[k] = (fut, k - run[0])
                run, run_bytes = [], 0
            if not more:
                break
            if wanted:
                run.append(i)
                run_bytes += self._sizes[i]
            i += 1
        self._ahead_end = max(self._ahead_end, i)

    def _local_maps(self) -> MappedPacks | None:
        """The mapped packs of a sequential reader of a local dataset (made on first use); None for peers and
        gateways, and while the reads in a row span less than ``MAP_FROM_BYTES``."""
        if self._pool is not None or self._read_end - self._stream_start < MAP_FROM_BYTES:
            return None  # peers, gateways; or a small file read whole (a sample): no pack mapped for it
        if self._maps is None:
            self._maps = MappedPacks()
        return self._maps

    def _window_stop(self, first: int) -> int:
        """Where the run of chunks from ``first`` a small reader decodes into memory at once ends."""
        stop = first + 1
        while (
            stop < len(self._sizes)
            and stop not in self._memory
            and self._starts[stop] + self._sizes[stop] - self._starts[first] <= RUN_BYTES
        ):
            stop += 1
        return stop

    def _next_block(self, n: int) -> memoryview:
        """The older of the file's two reused buffers (``n`` bytes of it), once no decode writes it and
        nothing remembered points into it: no fresh, zeroed buffer per run."""
        self._settle()
        self._blocks = self._blocks[1:] + self._blocks[:1]
        if len(self._blocks) < 2 or len(self._blocks[-1]) < n:
            if len(self._blocks) == 2:
                self._blocks.pop()
            self._blocks.append(bytearray(max(n, RUN_BYTES)))
        buf = self._blocks[-1]
        for i in [i for i, data in self._memory.items() if data.obj is buf]:
            del self._memory[i]
        if self._window is not None and self._window.obj is buf:
            self._window = None
        return memoryview(buf)[:n]

    def _run_leaves(self, first: int, stop: int) -> list[tuple[bytes, int]]:
        return [(self._digests[i], self._sizes[i]) for i in range(first, stop)]

    def _decode_to_memory(self, first: int, stop: int) -> memoryview:
        """Chunks ``first`` to ``stop - 1`` decoded into a reused buffer (from the mapped packs), the window."""
        end = self._starts[stop - 1] + self._sizes[stop - 1]
        block = self._next_block(end - self._starts[first])
        self._source.read_run_into(self._run_leaves(first, stop), block, self._local_maps())
        self._window, self._window_start = block, self._starts[first]
        return block

    def _decode_next(self, first: int) -> None:
        """Start decoding the run after the window on the file's helper thread, into the other buffer."""
        stop = self._window_stop(first)
        end = self._starts[stop - 1] + self._sizes[stop - 1]
        block = self._next_block(end - self._starts[first])
        if self._helper is None:
            self._helper = ThreadPoolExecutor(1, thread_name_prefix="dstore-next")
        fut = self._helper.submit(self._source.read_run_into, self._run_leaves(first, stop), block, self._local_maps())
        self._next = (first, stop, block, fut)

    def _take_next(self, index: int) -> tuple[memoryview, int, int] | None:
        """The run decoded ahead (buffer, first, stop), if it holds chunk ``index`` and was decoded whole (else
        it is read again here, errors and all); it is the window from now on."""
        nxt, self._next = self._next, None
        if nxt is None:
            return None
        first, stop, block, fut = nxt
        try:
            fut.result()
        except Exception:
            return None
        if not first <= index < stop:
            return None
        self._window, self._window_start = block, self._starts[first]
        return block, first, stop

    def _settle(self) -> None:
        """Wait for the decode on the helper thread, if one runs, and drop what it read."""
        nxt, self._next = self._next, None
        if nxt is not None:
            try:
                nxt[3].result()
            except Exception:
                pass  # read again when wanted, errors and all

    def _read_run(self, first: int, stop: int) -> bytearray:
        buf = bytearray(self._starts[stop - 1] + self._sizes[stop - 1] - self._starts[first])
        leaves = [(self._digests[i], self._sizes[i]) for i in range(first, stop)]
        self._source.read_run_into(leaves, memoryview(buf))
        return buf

    def _fetch_run(self, first: int, stop: int) -> list[memoryview]:
        """Chunks ``first`` to ``stop - 1``, verified, each its own view (of the range answers that held it:
        no copy until the reader takes it), cached by the cache writer thread meanwhile."""
        leaves = self._run_leaves(first, stop)
        got = self._source.read_chunks(leaves, cache_now=False)
        return [memoryview(got[digest]) for digest, _ in leaves]

    def _forget_ahead(self, which: Callable[[int], bool]) -> None:
        for i in [i for i in self._ahead if which(i)]:
            self._ahead.pop(i)[0].cancel()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")
