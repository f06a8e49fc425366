"""Read chunks out of packs: data shards first, parity only when something is wrong.

The healthy path maps the pack's data shard files into memory and decodes
chunks straight from the mappings (systematic code: no decoding, no copy of
the pack), checking every chunk against its ID in Rust. When a chunk fails, or
a shard is missing or the wrong size, the whole pack is rebuilt: every shard is
read and checked against its CID, and any k good shards restore the data
shards (Reed–Solomon, in Rust).

Shard files are written once under their final names and never truncated, so
mapping them is safe.
"""

from __future__ import annotations

import mmap
import os
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from dstore import _native
from dstore.errors import IntegrityError, NotEnoughShards, NotFound
from dstore.format.cid import HASH_CODES, cid_to_text, hash_digest
from dstore.format.locator import ChunkEntry
from dstore.format.pack import PackRecord
from dstore.net.protocol import PeerClient
from dstore.store import Store

# Packs kept mapped (or rebuilt in memory) for sequential reads.
PACK_CACHE_SIZE = 2
# Data shard bytes fetched from peers ahead of use, at most: a write batch (BATCH_BYTES) and a bit more,
# so that the next batch's first packs are on their way while this one is written.
PEER_PREFETCH_BYTES = 80 << 20

Parts = list[mmap.mmap] | list[memoryview]
# MAP_POPULATE maps every page up front (on the helper thread, which also
# reads the shards in when the store is on disk) instead of faulting page
# groups in while the chunks are being decoded.
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)


class PackSource(Protocol):
    """Where a reader gets a pack's shards: the local store, or peers."""

    def map(self, pack_id: bytes, record: PackRecord) -> Parts | None:
        """The k data shards (healthy path, no rebuilding); None if one is not to be had."""

    def rebuild(self, pack_id: bytes, record: PackRecord) -> memoryview:
        """The data region from any k shards that match their CIDs; NotEnoughShards otherwise."""

    def read_range(self, record: PackRecord, shard: int, offset: int, buf: memoryview) -> None:
        """Fill ``buf`` from data shard ``shard`` at ``offset`` (unverified: callers check chunks)."""

    def prefetch(self, packs: Sequence[tuple[bytes, PackRecord]]) -> None:
        """These packs will be mapped soon: start loading them now, all at once (where that helps)."""


class LocalShards:
    """Shards from the local store's files."""

    def __init__(self, store: Store, hash_name: str) -> None:
        self.store = store
        self.hash_name = hash_name

    def map(self, pack_id: bytes, record: PackRecord) -> list[mmap.mmap] | None:
        maps: list[mmap.mmap] = []
        try:
            for cid in record.shards[: record.k]:
                fd = os.open(self.store.shards.path(cid.encode("base32")), os.O_RDONLY)
                try:
                    if os.fstat(fd).st_size != record.shard_size:
                        raise FileNotFoundError("wrong size")
                    maps.append(mmap.mmap(fd, record.shard_size, flags=_MAP_FLAGS, prot=mmap.PROT_READ))
                finally:
                    os.close(fd)
        except OSError:
            for m in maps:
                m.close()
            return None
        return maps

    def data_shard(self, record: PackRecord, i: int) -> mmap.mmap | None:
        """Data shard ``i`` of the pack mapped from its file, if held here at its size (unverified:
        callers check the chunks read from it)."""
        try:
            fd = os.open(self.store.shards.path(record.shards[i].encode("base32")), os.O_RDONLY)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_size != record.shard_size:
                return None
            return mmap.mmap(fd, record.shard_size, flags=_MAP_FLAGS, prot=mmap.PROT_READ)
        except OSError:
            return None
        finally:
            os.close(fd)

    def rebuild(self, pack_id: bytes, record: PackRecord) -> memoryview:
        shards: list[bytes | None] = []
        bad: list[str] = []
        for i, cid in enumerate(record.shards):
            try:
                data = self.store.shards.read(cid.encode("base32"))
            except NotFound:
                shards.append(None)
                bad.append(f"{i} (missing)")
                continue
            if len(data) != record.shard_size or hash_digest(data, self.hash_name) != cid.hash.digest:
                shards.append(None)
                bad.append(f"{i} (corrupt)")
            else:
                shards.append(data)
        good = sum(s is not None for s in shards)
        if good < record.k:
            raise NotEnoughShards(
                f"pack {cid_to_text(pack_id)} has only {good} good shards of the {record.k} needed "
                f"(bad: {', '.join(bad)})"
            )
        return data_region(shards, record)

    def read_range(self, record: PackRecord, shard: int, offset: int, buf: memoryview) -> None:
        self.store.shards.read_into(record.shards[shard].encode("base32"), buf, offset)

    def prefetch(self, packs: Sequence[tuple[bytes, PackRecord]]) -> None:
        pass  # mapping a local pack is cheap

    def has(self, record: PackRecord) -> bool:
        """Whether every data shard of the pack has a file here (what :meth:`map` needs first)."""
        return all(os.path.exists(self.store.shards.path(c.encode("base32"))) for c in record.shards[: record.k])


class PeerShards:
    """Shards from storage peers: data shards first, hedged with parity.

    What :meth:`map` gives is not hashed against the shard CIDs: every reader of a pack's parts checks
    each chunk it decodes from them against its chunk ID (one hash of each byte, not two), and on a
    failure asks :meth:`rebuild`, whose shards are each verified on arrival (a peer that sent bad bytes is
    found out, and scored down, there).
    """

    def __init__(
        self,
        peers: PeerClient,
        hints: dict[bytes, list[str | None]] | None = None,
        prefetch_bytes: int = PEER_PREFETCH_BYTES,
    ) -> None:
        self.peers = peers  # a dstore.net SyncPeerSet
        self.hints = hints or {}
        self.prefetch_bytes = prefetch_bytes
        self._pending: dict[bytes, Future[list[bytes | bytearray | None]]] = {}
        self._pending_bytes: dict[bytes, int] = {}

    def prefetch(self, packs: Sequence[tuple[bytes, PackRecord]]) -> None:
        """Fetch these packs concurrently (one pack's k requests alone leave the peers mostly idle).

        At most ``prefetch_bytes`` of data shards are on their way at once (one pack always may be).
        """
        for pack_id, record in packs:
            if pack_id in self._pending:
                continue
            size = record.k * record.shard_size
            if self._pending and sum(self._pending_bytes.values()) + size > self.prefetch_bytes:
                break
            self._pending[pack_id] = self.peers.submit_fetch_pack(
                record, pack_id, self.hints.get(pack_id), verify=False
            )
            self._pending_bytes[pack_id] = size

    def _take(self, pack_id: bytes) -> Future[list[bytes | bytearray | None]] | None:
        self._pending_bytes.pop(pack_id, None)
        return self._pending.pop(pack_id, None)

    def map(self, pack_id: bytes, record: PackRecord) -> Parts:
        return _data_parts(self.fetched(pack_id, record), record)

    def fetched(self, pack_id: bytes, record: PackRecord) -> list[bytes | bytearray | mmap.mmap | None]:
        """The pack's shards as fetched, unverified (k + m, at least k of them of the right size, None elsewhere)."""
        pending = self._take(pack_id)
        if pending is None:
            return list(self.peers.fetch_pack(record, pack_id, self.hints.get(pack_id), verify=False))
        try:
            return list(pending.result())
        except BaseException:
            pending.cancel()  # e.g. KeyboardInterrupt: do not leave the transfer running
            raise

    def rebuild(self, pack_id: bytes, record: PackRecord) -> memoryview:
        pending = self._take(pack_id)
        if pending is not None:
            pending.cancel()  # unverified: not what a rebuild may use
        parts = _data_parts(list(self.peers.fetch_pack(record, pack_id, self.hints.get(pack_id))), record)
        return memoryview(parts[0]) if len(parts) == 1 else memoryview(b"".join(parts))

    def read_range(self, record: PackRecord, shard: int, offset: int, buf: memoryview) -> None:
        raise NotFound("peers serve whole shards here")  # the reader falls back to the whole pack


class LocalThenPeers:
    """The local store's shards where it has them, else the peers'."""

    def __init__(self, local: LocalShards, peers: PeerShards) -> None:
        self.local, self.remote = local, peers

    def map(self, pack_id: bytes, record: PackRecord) -> Parts | None:
        local = self.local.map(pack_id, record)
        if local is not None:
            return local
        shards = self.remote.fetched(pack_id, record)
        for i in range(record.k):  # a data shard held here (fetched as parity instead) needs no rebuilding
            if shards[i] is None:
                shards[i] = self.local.data_shard(record, i)
        return _data_parts(shards, record)

    def rebuild(self, pack_id: bytes, record: PackRecord) -> memoryview:
        try:
            return self.local.rebuild(pack_id, record)
        except NotEnoughShards:
            return self.remote.rebuild(pack_id, record)

    def read_range(self, record: PackRecord, shard: int, offset: int, buf: memoryview) -> None:
        self.local.read_range(record, shard, offset, buf)

    def prefetch(self, packs: Sequence[tuple[bytes, PackRecord]]) -> None:
        self.remote.prefetch([(pack_id, record) for pack_id, record in packs if not self.local.has(record)])


def _data_parts(shards: Sequence[bytes | bytearray | mmap.mmap | None], record: PackRecord) -> Parts:
    """The k data shards as the pack's parts, end to end, rebuilt from parity when some are missing
    (no join into one buffer)."""
    if all(s is not None for s in shards[: record.k]):
        return [memoryview(s) for s in shards[: record.k] if s is not None]
    rebuilt = iter(_native.reconstruct_missing(shards, record.k, record.m))  # present shards are not copied
    return [memoryview(s if s is not None else next(rebuilt)) for s in shards[: record.k]]


def data_region(shards: Sequence[bytes | bytearray | None], record: PackRecord) -> memoryview:
    """The k data shards end to end, reconstructed from parity when some are missing."""
    if all(s is not None for s in shards[: record.k]):
        data_shards: Sequence[bytes | bytearray] = [s for s in shards[: record.k] if s is not None]
    else:
        data_shards = _native.reconstruct(shards, record.k, record.m)
    return memoryview(b"".join(data_shards))


class PackReader:
    """Reads verified chunk bytes out of packs from a :class:`PackSource`, repairing in memory when needed.

    Not thread-safe: one reader per thread (it keeps one helper thread of its own
    that loads the next pack while the caller decodes this one).
    """

    def __init__(self, source: PackSource, hash_name: str = "blake3") -> None:
        self.source = source
        self.hash_code = HASH_CODES[hash_name]  # chunks are verified with the dataset's hash
        # pack ID -> its data shards, or one rebuilt buffer
        self._cache: OrderedDict[bytes, Parts] = OrderedDict()
        self._pending: dict[bytes, Future[Parts | None]] = {}
        self._pool: ThreadPoolExecutor | None = None

    # -- whole packs ----------------------------------------------------------

    def _parts(self, pack_id: bytes, record: PackRecord) -> Parts | None:
        """The pack's data shards; None if one is missing or the wrong size."""
        parts = self._cache.get(pack_id)
        if parts is not None:
            self._cache.move_to_end(pack_id)
            return parts
        pending = self._pending.pop(pack_id, None)
        parts = pending.result() if pending is not None else self.source.map(pack_id, record)
        if parts is not None:
            self._remember(pack_id, parts)
        return parts

    def _remember(self, pack_id: bytes, parts: Parts) -> None:
        self._cache[pack_id] = parts
        self._cache.move_to_end(pack_id)
        while len(self._cache) > PACK_CACHE_SIZE:
            _, old = self._cache.popitem(last=False)
            _release(old)

    def prefetch(self, pack_id: bytes, record: PackRecord) -> None:
        """Load a pack's data shards on the helper thread."""
        if pack_id in self._cache or pack_id in self._pending:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="dstore-load")
        self._pending[pack_id] = self._pool.submit(self.source.map, pack_id, record)

    def rebuild(self, pack_id: bytes, record: PackRecord) -> memoryview:
        """The pack rebuilt from verified shards (cached)."""
        view = self.source.rebuild(pack_id, record)
        old = self._cache.pop(pack_id, None)
        if old is not None:
            _release(old)
        self._remember(pack_id, [view])
        return view

    def forget(self, pack_id: bytes) -> None:
        """Drop a pack from the cache now (a sequential reader is done with it: its memory goes at once)."""
        parts = self._cache.pop(pack_id, None)
        if parts is not None:
            _release(parts)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        for pending in self._pending.values():
            if pending.exception() is None:
                _release(pending.result() or [])
        self._pending.clear()
        while self._cache:
            _release(self._cache.popitem()[1])

    # -- chunks ---------------------------------------------------------------

    def read_run(self, pack_id: bytes, record: PackRecord, refs: Sequence[ChunkEntry], out: bytearray) -> memoryview:
        """Chunks that share one pack, verified, decoded back to back into ``out``; returns the filled view."""
        _check_bounds(record, refs)
        args = (
            [r.offset for r in refs],
            [r.stored_len for r in refs],
            [r.size for r in refs],
            [r.codec for r in refs],
            b"".join(r.digest for r in refs),
        )
        parts = self._parts(pack_id, record)
        if parts is not None:
            try:
                return memoryview(out)[: _native.decode_chunks_into(out, parts, *args, self.hash_code)]
            except _native.IntegrityError:
                pass  # a damaged shard: rebuild the pack from verified shards
        try:
            return memoryview(out)[
                : _native.decode_chunks_into(out, [self.rebuild(pack_id, record)], *args, self.hash_code)
            ]
        except _native.IntegrityError as e:
            raise IntegrityError(
                f"chunk {refs[e.args[0]].digest.hex()[:16]}… in pack {cid_to_text(pack_id)} does not match "
                "its ID even after rebuilding the pack from verified shards (the locator is wrong)"
            ) from e

    def read_one(self, pack_id: bytes, record: PackRecord, ref: ChunkEntry) -> bytes:
        """One chunk, reading only the data-shard bytes that cover it (random access)."""
        _check_bounds(record, [ref])
        if pack_id not in self._cache:
            ss = record.shard_size
            buf = bytearray(ref.stored_len)
            view = memoryview(buf)
            pos = ref.offset
            try:
                while pos < ref.offset + ref.stored_len:
                    shard, within = divmod(pos, ss)
                    n = min(ss - within, ref.offset + ref.stored_len - pos)
                    done = pos - ref.offset
                    self.source.read_range(record, shard, within, view[done : done + n])
                    pos += n
                return _native.decode_chunks(
                    buf, [0], [ref.stored_len], [ref.size], [ref.codec], ref.digest, self.hash_code
                )
            except (NotFound, _native.IntegrityError):
                pass  # fall back to the whole pack, rebuilt if need be
        return bytes(self.read_run(pack_id, record, [ref], bytearray(ref.size)))


def _release(parts: Parts) -> None:
    for part in parts:
        if isinstance(part, mmap.mmap):
            part.close()


def _check_bounds(record: PackRecord, refs: Sequence[ChunkEntry]) -> None:
    for r in refs:
        if r.offset + r.stored_len > record.size:
            raise IntegrityError("the locator points past the end of a pack (corrupt locator)")
