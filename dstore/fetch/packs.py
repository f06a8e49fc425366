"""Read chunks out of packs: data shards first, parity only when something is wrong.

The healthy path reads only the data shards that cover the bytes asked for
(systematic code: no decoding) and checks every chunk against its ID in Rust.
When a chunk fails, or a shard is missing, the whole pack is rebuilt: every
shard is read and checked against its CID, and any k good shards restore the
data shards (Reed–Solomon, in Rust).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from dstore import _native
from dstore.errors import IntegrityError, NotEnoughShards, NotFound
from dstore.format.cid import hash_digest
from dstore.format.locator import ChunkEntry
from dstore.format.pack import PackRecord
from dstore.store import Store

# Packs kept decoded in memory for sequential reads (each up to k MiB).
PACK_CACHE_SIZE = 2


class PackReader:
    """Reads chunk bytes from a local store's shards, repairing in memory when needed."""

    def __init__(self, store: Store, hash_name: str = "blake3") -> None:
        self.store = store
        self.hash_name = hash_name
        self._cache: OrderedDict[bytes, memoryview] = OrderedDict()
        # Buffers of packs dropped from the cache, for reuse (fresh memory costs page faults).
        self._free: list[bytearray] = []
        # One reader thread loads the next pack while the caller decodes this one.
        self._lock = threading.Lock()
        self._pending: dict[bytes, Future[memoryview]] = {}
        self._pool: ThreadPoolExecutor | None = None

    # -- whole packs ----------------------------------------------------------

    def prefetch(self, pack_id: bytes, record: PackRecord) -> None:
        """Start loading a pack in the background (a later pack_bytes picks it up)."""
        with self._lock:
            if pack_id in self._cache or pack_id in self._pending:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="dstore-prefetch")
            self._pending[pack_id] = self._pool.submit(self._load, pack_id, record)

    def pack_bytes(self, pack_id: bytes, record: PackRecord) -> memoryview:
        """The pack's data region (k × shard_size bytes) from its data shards, cached."""
        with self._lock:
            cached = self._cache.get(pack_id)
            if cached is not None:
                self._cache.move_to_end(pack_id)
                return cached
            pending = self._pending.pop(pack_id, None)
        view = pending.result() if pending is not None else self._load(pack_id, record)
        return self._remember(pack_id, view)

    def _load(self, pack_id: bytes, record: PackRecord) -> memoryview:
        ss = record.shard_size
        view = self._buffer(record.k * ss)
        try:
            for i in range(record.k):
                self.store.shards.read_into(record.shards[i].encode("base32"), view[i * ss : (i + 1) * ss])
        except NotFound:
            return self._rebuilt(pack_id, record)
        return view

    def _buffer(self, size: int) -> memoryview:
        with self._lock:
            for i, buf in enumerate(self._free):
                if len(buf) >= size:
                    return memoryview(self._free.pop(i))[:size]
        return memoryview(bytearray(size))

    def _remember(self, pack_id: bytes, view: memoryview) -> memoryview:
        with self._lock:
            self._cache[pack_id] = view
            self._cache.move_to_end(pack_id)
            while len(self._cache) > PACK_CACHE_SIZE:
                _, old = self._cache.popitem(last=False)
                if isinstance(old.obj, bytearray) and len(self._free) < PACK_CACHE_SIZE:
                    self._free.append(old.obj)
        return view

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def rebuild(self, pack_id: bytes, record: PackRecord) -> memoryview:
        """Read every shard, keep those that match their CID, and restore the data shards (cached)."""
        return self._remember(pack_id, self._rebuilt(pack_id, record))

    def _rebuilt(self, pack_id: bytes, record: PackRecord) -> memoryview:
        shards: list[bytes | None] = []
        bad: list[str] = []
        for i, cid in enumerate(record.shards):
            text = cid.encode("base32")
            try:
                data = self.store.shards.read(text)
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
                f"pack {_short(pack_id)} has only {good} good shards of the {record.k} needed "
                f"(bad: {', '.join(bad)})"
            )
        if all(s is not None for s in shards[: record.k]):
            data_shards: Sequence[bytes] = [s for s in shards[: record.k] if s is not None]
        else:
            data_shards = _native.reconstruct(shards, record.k, record.m)
        return memoryview(b"".join(data_shards))

    # -- chunks ---------------------------------------------------------------

    def read_run(
        self, pack_id: bytes, record: PackRecord, refs: Sequence[ChunkEntry], out: bytearray | None = None
    ) -> bytes | memoryview:
        """Bytes of chunks that share one pack, verified, concatenated in order.

        With ``out`` (a reused buffer large enough for the run) the bytes are
        decoded into it and a view of it is returned, valid until its next use.
        """
        args = (
            [r.offset for r in refs],
            [r.stored_len for r in refs],
            [r.size for r in refs],
            [r.codec for r in refs],
            b"".join(r.digest for r in refs),
        )
        _check_bounds(record, refs)

        def decode(pack: memoryview) -> bytes | memoryview:
            if out is None:
                return _native.decode_chunks(pack, *args)
            return memoryview(out)[: _native.decode_chunks_into(out, pack, *args)]

        try:
            return decode(self.pack_bytes(pack_id, record))
        except _native.IntegrityError:
            pass
        try:
            return decode(self.rebuild(pack_id, record))
        except _native.IntegrityError as e:
            raise IntegrityError(
                f"chunk {refs[e.args[0]].digest.hex()[:16]}… in pack {_short(pack_id)} does not match its ID "
                "even after rebuilding the pack from verified shards (the locator is wrong)"
            ) from e

    def read_one(self, pack_id: bytes, record: PackRecord, ref: ChunkEntry) -> bytes:
        """One chunk, reading only the data-shard bytes that cover it (random access)."""
        if pack_id in self._cache:
            return self.read_run(pack_id, record, [ref])
        _check_bounds(record, [ref])
        ss = record.shard_size
        buf = bytearray(ref.stored_len)
        view = memoryview(buf)
        pos = ref.offset
        try:
            while pos < ref.offset + ref.stored_len:
                shard, within = divmod(pos, ss)
                n = min(ss - within, ref.offset + ref.stored_len - pos)
                done = pos - ref.offset
                self.store.shards.read_into(record.shards[shard].encode("base32"), view[done : done + n], within)
                pos += n
            return _native.decode_chunks(buf, [0], [ref.stored_len], [ref.size], [ref.codec], ref.digest)
        except (NotFound, _native.IntegrityError):
            return self.read_run(pack_id, record, [ref])


def _check_bounds(record: PackRecord, refs: Sequence[ChunkEntry]) -> None:
    for r in refs:
        if r.offset + r.stored_len > record.size:
            raise IntegrityError("the locator points past the end of a pack (corrupt locator)")


def _short(pack_id: bytes) -> str:
    from dstore.format.cid import cid_to_text

    return cid_to_text(pack_id)
