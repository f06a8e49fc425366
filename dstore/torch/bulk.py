"""Reading many samples at once: the chunk lists of every file kept compact, and groups of samples read in bulk.

A sample read on its own costs a path lookup, a file object and one cache
lookup or range request per chunk, most of it Python. A data loader knows
its next samples, so it reads them together (:class:`SampleReader`): their
chunks come from the disk cache in one batch, the rest from the peers with
one range request per stretch of a data shard (``ChunkSource.read_chunks``),
and each sample's bytes are cut from the verified chunks. The chunk lists of
the files are read once, from metadata, when the stream is made
(:class:`FileChunks`), in flat arrays a forked worker shares with its parent.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from dstore.format.cid import CID
from dstore.format.unixfs import Node
from dstore.mount.dataset import Dataset

__all__ = ["DIGEST_BYTES", "RANGE_THREADS", "FileChunks", "SampleReader"]

#: Bytes of a chunk ID's digest (BLAKE3 and SHA2-256 alike).
DIGEST_BYTES = 32
#: Threads of an iterating process asking peers for ranges at once.
RANGE_THREADS = 8


class FileChunks:
    """``(digest, size)`` of every chunk of every matched file, in flat arrays (no object per chunk)."""

    def __init__(self, ds: Dataset, files: Sequence[tuple[CID, Node]]) -> None:
        digests = bytearray()
        self.sizes = array("q")  # per chunk
        self.starts = array("q")  # per chunk: its offset in its file
        self.first = array("q", [0])  # per file: its first chunk; file i is chunks first[i]:first[i + 1]
        ds.chunks.check_process()
        with ds.chunks.lock:
            for cid, node in files:
                pos = 0
                for digest, size in ds.reader.leaves(cid, node):
                    if len(digest) != DIGEST_BYTES:
                        raise ValueError(f"a chunk ID of {len(digest)} bytes")
                    digests += digest
                    self.sizes.append(size)
                    self.starts.append(pos)
                    pos += size
                self.first.append(len(self.sizes))
        self.digests = bytes(digests)

    def digest(self, chunk: int) -> bytes:
        return self.digests[chunk * DIGEST_BYTES : (chunk + 1) * DIGEST_BYTES]

    def pieces(self, file: int, start: int, end: int) -> list[tuple[int, int, int]]:
        """``(chunk, offset in it, length)`` covering bytes ``start:end`` of file ``file``."""
        lo, hi = self.first[file], self.first[file + 1]
        if start >= end or lo == hi:
            return []
        i = bisect.bisect_right(self.starts, start, lo, hi) - 1
        out = []
        while i < hi and self.starts[i] < end:
            a = max(start, self.starts[i]) - self.starts[i]
            b = min(end - self.starts[i], self.sizes[i])
            out.append((i, a, b - a))
            i += 1
        return out


class SampleReader:
    """Reads groups of sample spans ``(file, start, end)`` with their chunks fetched together.

    Made in the process that iterates (its range threads are never inherited across a fork);
    :meth:`close` when the pass ends.
    """

    def __init__(self, ds: Dataset, chunks: FileChunks, threads: int = RANGE_THREADS) -> None:
        self.ds = ds
        self.chunks = chunks
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dstore-ranges") if threads > 1 else None

    def read(self, spans: Sequence[tuple[int, int, int]]) -> list[bytes]:
        """The bytes of every span, in order, each verified chunk by chunk."""
        chunks = self.chunks
        plans = [chunks.pieces(file, start, end) for file, start, end in spans]
        wants = {}
        for plan in plans:
            for chunk, _, _ in plan:
                wants[chunks.digest(chunk)] = chunks.sizes[chunk]
        got = self.ds.chunks.read_chunks(list(wants.items()), self._pool)
        out: list[bytes] = []
        for plan in plans:
            if len(plan) == 1:
                chunk, a, n = plan[0]
                data = got[chunks.digest(chunk)]
                whole = a == 0 and n == len(data)
                out.append(
                    data if whole and isinstance(data, bytes) else bytes(data[a : a + n])
                )  # no copy of a cached one
            else:
                out.append(b"".join(got[chunks.digest(chunk)][a : a + n] for chunk, a, n in plan))
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
