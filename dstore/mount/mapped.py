"""The data shards of the last local packs a sequential reader went through, mapped read-only.

A file object reading a local dataset to the end decodes its chunks straight
from these mappings into the caller's buffer (no ``pread`` copy into a
temporary). Pages are faulted in by the decoding threads as they read them
(no ``MAP_POPULATE``: a single chunk read near a pack's end touches only its
own pages). At most :data:`MAPPED_PACKS` packs stay mapped per file object
(their touched pages count in its RSS); the oldest is unmapped when a newer
one is mapped (as soon as no decode reads it), all of them when the file
closes.

A mapped file that shrinks kills the reading process with SIGBUS when the
lost pages are read. dstore never shrinks a shard file (written once under a
temporary name and renamed; ``gc`` and ``fsck`` unlink or replace, which
leaves the mapped file's pages alone), and every use of a mapping first
checks the size of the shard files it reads from (``fstat`` on the mapping's
own descriptor): a shard that lost bytes is unmapped and read through the
``pread`` path instead, which reports it truncated (the pack is then rebuilt
from parity). What stays is a shard shortened by another program in the
instant between that check and the decode.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict

from dstore.fetch.packs import LocalShards
from dstore.format.pack import PackRecord

__all__ = ["MAPPED_PACKS", "MappedPacks"]

#: Packs kept mapped per file object: the one being read and the one before (a mount's reads come slightly
#: out of order around a pack's end).
MAPPED_PACKS = 2


class MappedPacks:
    """The k data shards of a few local packs, mapped, newest last. One per file object (its reading thread
    and its helper thread use it)."""

    def __init__(self, keep: int = MAPPED_PACKS) -> None:
        self._keep = max(1, keep)
        self._packs: OrderedDict[bytes, list[mmap.mmap]] = OrderedDict()
        self._failed: set[bytes] = set()  # packs with a shard that failed a check: not mapped again
        self._lock = threading.Lock()

    def parts(
        self, local: LocalShards, pack_id: bytes, record: PackRecord, first: int, last: int
    ) -> list[mmap.mmap] | None:
        """The pack's data shards, mapped (now, if not already), once data shards ``first`` to ``last`` (the
        ones about to be read) are checked to still have their full size; None if a data shard is missing,
        of the wrong size, or cannot be mapped (the caller reads it another way)."""
        with self._lock:
            return self._parts(local, pack_id, record, first, last)

    def _parts(
        self, local: LocalShards, pack_id: bytes, record: PackRecord, first: int, last: int
    ) -> list[mmap.mmap] | None:
        maps = self._packs.get(pack_id)
        if maps is None:
            maps = None if pack_id in self._failed else _map(local, record)
            if maps is None:
                self._failed.add(pack_id)
                return None
            self._packs[pack_id] = maps
            while len(self._packs) > self._keep:
                # Dropped, not closed: a decode on the other thread may still read it. CPython unmaps it the
                # moment the last reference goes.
                self._packs.popitem(last=False)
        else:
            self._packs.move_to_end(pack_id)
        try:
            intact = all(maps[i].size() == record.shard_size for i in range(first, last + 1))
        except OSError:
            intact = False
        if not intact:
            self._drop(pack_id)
            return None
        return maps

    def drop(self, pack_id: bytes) -> None:
        """Unmap a pack for good (one of its shards failed a check: it is read another way from now on)."""
        with self._lock:
            self._drop(pack_id)

    def _drop(self, pack_id: bytes) -> None:
        self._failed.add(pack_id)
        self._packs.pop(pack_id, None)  # unmapped once no decode holds it

    def close(self) -> None:
        """Unmap them all now (the file is closing: no decode of its runs is under way)."""
        with self._lock:
            while self._packs:
                _close(self._packs.popitem()[1])


def _map(local: LocalShards, record: PackRecord) -> list[mmap.mmap] | None:
    maps: list[mmap.mmap] = []
    try:
        for cid in record.shards[: record.k]:
            fd = os.open(local.store.shards.path(cid.encode("base32")), os.O_RDONLY)
            try:
                if os.fstat(fd).st_size != record.shard_size:
                    raise OSError("a data shard of the wrong size")
                maps.append(mmap.mmap(fd, record.shard_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ))
            finally:
                os.close(fd)
    except (OSError, ValueError):
        _close(maps)
        return None
    return maps


def _close(maps: list[mmap.mmap]) -> None:
    for m in maps:
        try:
            m.close()
        except BufferError:
            pass  # a decode on another thread reads it: unmapped when that ends and drops the last reference
