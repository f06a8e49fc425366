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
import os
import time
from array import array
from collections.abc import Sequence

from dstore.format.cid import CID
from dstore.format.unixfs import Node
from dstore.mount.dataset import Dataset

__all__ = ["DIGEST_BYTES", "SHARE_STALL_S", "FileChunks", "SampleReader", "window_bounds"]

#: Bytes of a chunk ID's digest (BLAKE3 and SHA2-256 alike).
DIGEST_BYTES = 32
#: A worker waiting for another to cache a window's chunks polls the cache this often at first.
SHARE_POLL_S = 0.002
#: ... and reads the chunks itself once this long passes with none arriving.
SHARE_STALL_S = 2.0


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
    """Reads groups of sample spans ``(file, start, end)`` with their chunks fetched together (the range
    requests of a group all at once, on the dataset's network thread)."""

    def __init__(self, ds: Dataset, chunks: FileChunks) -> None:
        self.ds = ds
        self.chunks = chunks

    def read(self, spans: Sequence[tuple[int, int, int]], extra: Sequence[tuple[int, int, int]] = ()) -> list[bytes]:
        """The bytes of every span, in order, each verified chunk by chunk.

        ``extra`` spans are read along (one range request covers their neighbours too) and cached for
        the other workers of this loader, but not returned.
        """
        plans = [self.chunks.pieces(*span) for span in spans]
        if not extra:
            return self._assemble(plans, self.ds.chunks.read_chunks(list(self._wants(plans).items())))
        mine = self._wants(plans)
        wants = self._wants([self.chunks.pieces(*span) for span in extra]) | mine
        return self._assemble(plans, self.ds.chunks.read_chunks(list(wants.items()), keep=mine))

    def read_when_cached(self, spans: Sequence[tuple[int, int, int]], stall_s: float = SHARE_STALL_S) -> list[bytes]:
        """:meth:`read` once another worker that is reading these spans has put them in the disk cache.

        Polls the cache while entries keep arriving; after ``stall_s`` without one, reads the rest itself.
        """
        cache = self.ds.chunks.cache
        plans = [self.chunks.pieces(*span) for span in spans]
        wants = self._wants(plans)
        found: dict[bytes, bytes | memoryview] = {}
        if cache is not None:
            hash_name = self.ds.chunks.hash_name
            progress = t_wait = time.monotonic()
            delay = SHARE_POLL_S
            missing = list(wants.items())
            while missing and not cache.write_failed:
                # One stat of a chunk still missing per poll; all of them read once it is there.
                if os.path.exists(cache.path(hash_name, missing[0][0])):
                    got = cache.get_many(hash_name, missing)
                    found.update(got)
                    missing = [(d, n) for d, n in missing if d not in got]
                    if got:
                        progress, delay = time.monotonic(), SHARE_POLL_S
                        continue
                if time.monotonic() - progress > stall_s:
                    break
                time.sleep(delay)
                delay = min(delay * 2, 16 * SHARE_POLL_S)
            self.ds.chunks.stats["cache"] += len(found)
            st = self.ds.chunks.stats
            st["share_wait_ms"] = st.get("share_wait_ms", 0) + int((time.monotonic() - t_wait) * 1000)
            st["share_fallback"] = st.get("share_fallback", 0) + (len(wants) - len(found))
        rest = [(d, n) for d, n in wants.items() if d not in found]
        if rest:
            found.update(self.ds.chunks.read_chunks(rest))
        return self._assemble(plans, found)

    def _wants(self, plans: list[list[tuple[int, int, int]]]) -> dict[bytes, int]:
        chunks = self.chunks
        wants: dict[bytes, int] = {}
        for plan in plans:
            for chunk, _, _ in plan:
                wants[chunks.digest(chunk)] = chunks.sizes[chunk]
        return wants

    def _assemble(self, plans: list[list[tuple[int, int, int]]], got: dict[bytes, bytes | memoryview]) -> list[bytes]:
        chunks = self.chunks
        out: list[bytes] = []
        for plan in plans:
            if len(plan) == 1:
                chunk, a, n = plan[0]
                data = got[chunks.digest(chunk)]
                whole = a == 0 and n == len(data) and isinstance(data, bytes)  # a cached chunk: no copy
                out.append(data if whole and isinstance(data, bytes) else bytes(data[a : a + n]))
            else:
                out.append(b"".join(got[chunks.digest(chunk)][a : a + n] for chunk, a, n in plan))
        return out


def window_bounds(window: Sequence[int]) -> dict[int, tuple[int, int]]:
    """Window ID -> the positions ``[a, b)`` it covers in a rank's sequence (a window's positions are contiguous)."""
    bounds: dict[int, tuple[int, int]] = {}
    start = 0
    for pos in range(1, len(window) + 1):
        if pos == len(window) or window[pos] != window[start]:
            bounds[window[start]] = (start, pos)
            start = pos
    return bounds
