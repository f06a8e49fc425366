"""Disk spools for an add's metadata, so that memory does not grow with the number of files.

:class:`BlockSpool` keeps metadata blocks (UnixFS nodes, locator pages) in an
unnamed temporary file in the order they are made, to be read back once into
the store index and the metadata packs. :class:`ChunkSpool` keeps the chunk
table's entries as fixed-size records and hands them back sorted by digest (an
external merge sort: sorted runs on disk, merged), which is what the locator's
chunk pages need.
"""

from __future__ import annotations

import heapq
import io
import struct
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, cast

# A block spool is read back in pieces of this size.
_READ_BYTES = 1 << 20
# Chunk entries sorted in memory before a run goes to disk (61 bytes each on disk, about 100 in memory).
RUN_ENTRIES = 50_000
_HEAD = struct.Struct(">HI")  # CID length, block length
# digest, pack number (this add's), offset, stored length, size, codec
_ENTRY = struct.Struct(">32sIQQQB")
RECORD_BYTES = _ENTRY.size
ChunkRecord = tuple[bytes, int, int, int, int, int]


class BlockSpool:
    """Append-only ``(CID bytes, block)`` pairs in a temporary file; iterate to read them back in order."""

    def __init__(self) -> None:
        self._file: IO[bytes] = tempfile.TemporaryFile(prefix="dstore-blocks-")
        self.count = 0
        self.nbytes = 0  # CID and block bytes

    def add(self, cid: bytes, block: bytes) -> None:
        self._file.write(_HEAD.pack(len(cid), len(block)) + cid)
        self._file.write(block)
        self.count += 1
        self.nbytes += len(cid) + len(block)

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        f = self._file
        f.flush()
        f.seek(0)
        reader = io.BufferedReader(cast(io.RawIOBase, _Unclosing(f)), _READ_BYTES)
        head = _HEAD.size
        for _ in range(self.count):
            cid_len, block_len = _HEAD.unpack(reader.read(head))
            cid = reader.read(cid_len)
            block = reader.read(block_len)
            if len(block) != block_len:
                raise OSError("the metadata spool ended early")
            yield cid, block
        f.seek(0, 2)  # further adds append

    def close(self) -> None:
        self._file.close()


class ChunkSpool:
    """Chunk-table entries ``(digest, pack number, offset, stored length, size, codec)``, sorted on the way out."""

    def __init__(self, run_entries: int = RUN_ENTRIES) -> None:
        self.run_entries = run_entries
        self._run: list[bytes] = []
        self._runs: list[IO[bytes]] = []

    def add(self, digest: bytes, pack: int, offset: int, stored_len: int, size: int, codec: int) -> None:
        self._run.append(_ENTRY.pack(digest, pack, offset, stored_len, size, codec))
        if len(self._run) >= self.run_entries:
            self._spill()

    def _spill(self) -> None:
        self._run.sort()
        f = tempfile.TemporaryFile(prefix="dstore-chunks-")
        f.write(b"".join(self._run))
        f.flush()
        self._runs.append(f)
        self._run = []

    def sorted_unique(self) -> Iterator[ChunkRecord]:
        """Every entry once per digest, in digest order (of two places for one digest, the first in order)."""
        for rec in self.sorted_unique_records():
            yield _ENTRY.unpack(rec)

    def sorted_unique_records(self) -> Iterator[bytes]:
        """:meth:`sorted_unique` as the records themselves (RECORD_BYTES each, big-endian ``_ENTRY``)."""
        self._run.sort()
        if not self._runs:  # one run, in memory: no merge
            yield from _unique(self._run)
            return
        yield from _unique(heapq.merge(*[_records(f) for f in self._runs], iter(self._run)))

    def close(self) -> None:
        for f in self._runs:
            f.close()
        self._runs, self._run = [], []


def _unique(records: Iterable[bytes]) -> Iterator[bytes]:
    """Sorted records, the first of each digest."""
    last = None
    for rec in records:
        digest = rec[:32]
        if digest != last:
            last = digest
            yield rec


def _records(f: IO[bytes]) -> Iterator[bytes]:
    f.seek(0)
    size = _ENTRY.size
    step = size * 16384
    while True:
        block = f.read(step)
        if not block:
            return
        for i in range(0, len(block) - size + 1, size):
            yield block[i : i + size]


class _Unclosing(io.RawIOBase):
    """A raw view of the spool's file for a BufferedReader, which must not close it."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        return self._f.readinto(b)  # type: ignore[attr-defined]
