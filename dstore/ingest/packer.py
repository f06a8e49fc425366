"""Packs new chunks, erasure-codes each pack and hands its shards to a sink.

The caller appends stored chunk bytes; when a pack is full it is sealed on a
background thread (Reed–Solomon encode + shard hashes in Rust, GIL released)
while the caller goes on chunking, and its shards go to a sink (the local
store's files, or storage peers: dstore.ingest.sinks). Index entries for a pack are committed only after all its
shards are durable (shards, then index: docs/format.md, "Order of writes").
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from dstore import _native
from dstore.format.cbor import block_cid
from dstore.format.cid import CID, HASH_CODES, RAW, cid_from_digest
from dstore.format.pack import PackRecord, shard_size
from dstore.ingest.sinks import ShardSink
from dstore.limits import PACK_UNIT_BYTES
from dstore.store import ChunkLoc, Store

# Sealed packs whose shards are still being written; bounds memory (each pack
# holds up to (k + m) MiB).
MAX_PACKS_IN_FLIGHT = 3
# Chunk entries committed to the index per transaction.
INDEX_TXN_CHUNKS = 2048


@dataclass
class SealedPack:
    """A pack whose record is known; shards may still be in flight."""

    pack_id: bytes
    record: PackRecord
    record_block: bytes
    chunks: list[tuple[bytes, ChunkLoc]]
    buf: bytearray
    stored: Future[list[str | None]] | None = None  # where each shard went


@dataclass
class EncodedPack:
    """A pack erasure-coded: its record, ID and all k + m shards (views of the caller's buffers)."""

    pack_id: bytes
    record: PackRecord
    record_block: bytes
    shards: list[tuple[CID, memoryview]]


def encode_pack(buf: bytearray, fill: int, k: int, m: int, hash_name: str) -> EncodedPack:
    """Pad ``buf[:fill]`` to k equal data shards in place and erasure-code it.

    ``buf`` must hold ``k × shard_size(fill, k)`` bytes; the data shards are views of it.
    """
    ss = shard_size(fill, k)
    total = k * ss
    if total > len(buf):
        raise ValueError(f"pack buffer holds {len(buf)} bytes, {total} needed")
    buf[fill:total] = bytes(total - fill)
    view = memoryview(buf)[:total]
    parity, digests = _native.encode_pack(view, k, m, HASH_CODES[hash_name])  # shard IDs use the dataset's hash
    cids = [cid_from_digest(RAW, digests[32 * i : 32 * i + 32], hash_name) for i in range(k + m)]
    record = PackRecord(k=k, m=m, size=fill, shard_size=ss, shards=tuple(cids))
    record_block = record.encode()
    pv = memoryview(parity)
    parts = [view[i * ss : (i + 1) * ss] for i in range(k)] + [pv[j * ss : (j + 1) * ss] for j in range(m)]
    return EncodedPack(
        block_cid(record_block, hash_name).to_bytes(), record, record_block, list(zip(cids, parts, strict=True))
    )


class Packer:
    """Accumulates new chunks into packs of ``k × PACK_UNIT_BYTES`` (1 MiB) and stores them."""

    def __init__(
        self,
        store: Store,
        sink: ShardSink,
        k: int,
        m: int,
        hash_name: str,
        on_durable: Callable[[bytes, list[tuple[bytes, ChunkLoc]]], None] | None = None,
    ) -> None:
        self.store = store
        self.sink = sink
        self.k, self.m, self.hash_name = k, m, hash_name
        self.capacity = k * PACK_UNIT_BYTES
        self.buf = bytearray(self.capacity)
        self.fill = 0
        self.sealed: deque[Future[SealedPack]] = deque()
        # Filled as packs become durable: their records (for the locator's pack table), and each
        # pack's chunks handed to ``on_durable`` once the index has them.
        self.packs: dict[bytes, PackRecord] = {}
        self.on_durable = on_durable
        # Chunk CIDs of the open pack and of the packs in flight: not in the index yet.
        self.pending: set[bytes] = set()
        self.placement: dict[bytes, list[str | None]] = {}  # pack ID -> where each shard went
        self.bytes_stored = 0
        self._sealer = ThreadPoolExecutor(1, thread_name_prefix="dstore-seal")
        # (chunk CID, offset, stored length, size, codec) of the open pack
        self._chunk_meta: list[tuple[bytes, int, int, int, int]] = []
        # Pack buffers whose shards are written, for reuse (fresh memory costs page faults).
        self._free: list[bytearray] = []

    def add_chunks(self, seg: _native.Segment | _native.FileBatch, picks: list[int], cids: list[bytes]) -> None:
        """Append chunks ``picks`` (indices into ``seg``, in order) to the open pack(s).

        Python only decides where each chunk goes; the bytes are copied by one
        native call per pack (no per-chunk slice assignment under the GIL).
        """
        stored_lengths, lengths, codecs = seg.stored_lengths, seg.lengths, seg.codecs
        meta = self._chunk_meta
        batch: list[int] = []
        fill = self.fill
        for i in picks:
            n = stored_lengths[i]
            if fill + n > self.capacity:
                self.fill = seg.copy_into(batch, self.buf, self.fill)
                batch = []
                self.seal()
                meta, fill = self._chunk_meta, 0
            meta.append((cids[i], fill, n, lengths[i], codecs[i]))
            self.pending.add(cids[i])
            batch.append(i)
            fill += n
        self.fill = seg.copy_into(batch, self.buf, self.fill)

    def seal(self) -> None:
        """Close the current pack (if not empty) and start encoding and writing it."""
        if not self._chunk_meta:
            return
        buf, fill, meta = self.buf, self.fill, self._chunk_meta
        self.buf = self._free.pop() if self._free else bytearray(self.capacity)
        self.fill = 0
        self._chunk_meta = []
        while len(self.sealed) >= MAX_PACKS_IN_FLIGHT:
            self._finish_oldest()
        self.sealed.append(self._sealer.submit(self._encode_and_write, buf, fill, meta))

    def _encode_and_write(self, buf: bytearray, fill: int, meta: list[tuple[bytes, int, int, int, int]]) -> SealedPack:
        encoded = encode_pack(buf, fill, self.k, self.m, self.hash_name)
        sealed = SealedPack(
            encoded.pack_id,
            encoded.record,
            encoded.record_block,
            [(cid, ChunkLoc(encoded.pack_id, off, sl, size, codec)) for cid, off, sl, size, codec in meta],
            buf,
        )
        sealed.stored = self.sink.submit(encoded.pack_id, encoded.shards)
        return sealed

    def _finish_oldest(self) -> None:
        sealed = self.sealed.popleft().result()
        assert sealed.stored is not None
        holders = sealed.stored.result()
        self.bytes_stored += len(sealed.record.shards) * sealed.record.shard_size
        self.sink.sync()
        on_peers = any(h is not None for h in holders)
        if on_peers:
            self.placement[sealed.pack_id] = holders
        shard_cids = [c.to_bytes() for c in sealed.record.shards]
        index = self.store.index
        chunks = sealed.chunks
        # The pack's record first, then its chunk entries in slices: every transaction dirties at most
        # INDEX_TXN_CHUNKS pages of the index (LMDB holds a copy of each until the commit).
        # A crash between two leaves some chunks unindexed: a later add stores them again, nothing breaks.
        index.commit_packs(
            [(sealed.pack_id, sealed.record_block, shard_cids, holders if on_peers else None)],
            chunks[:INDEX_TXN_CHUNKS],
        )
        for start in range(INDEX_TXN_CHUNKS, len(chunks), INDEX_TXN_CHUNKS):
            index.commit_packs([], chunks[start : start + INDEX_TXN_CHUNKS])
        self.packs[sealed.pack_id] = sealed.record
        self.pending.difference_update(cid for cid, _ in sealed.chunks)
        if self.on_durable is not None:
            self.on_durable(sealed.pack_id, sealed.chunks)
        self._free.append(sealed.buf)

    def finish(self) -> None:
        """Seal the last pack, wait for every write and commit the index."""
        self.seal()
        while self.sealed:
            self._finish_oldest()
        self.close()

    def close(self) -> None:
        self._sealer.shutdown(wait=True, cancel_futures=True)
        self.sink.close()
